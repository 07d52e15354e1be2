//! mesh-control replicas on the Kubernetes API test server, shared by the
//! tests that run them: a replica with a short Lease, who holds the Lease,
//! meshctl against the cluster, the echo Service with its pods, the
//! control plane's own Service with its replicas, and a TrafficSplit's
//! weights as stored.

#![allow(dead_code, unreachable_pub)]

use crate::kube_api::{KubeApi, kubectl};
use crate::support::{Mesh, TempDir};
use std::path::Path;
use std::time::{Duration, Instant};

/// Seconds a Lease lasts unrenewed in these tests.
pub const LEASE_SECS: u64 = 3;

/// A Kubernetes API test server with mesh's CRDs, in a fresh directory
/// named after `tag` (skipped when a real cluster is configured).
pub async fn cluster(tag: &str) -> (TempDir, KubeApi) {
    crate::kube_api::real_cluster_ignored();
    let dir = TempDir::new(tag);
    let api = KubeApi::start(&dir.0).await;
    crate::kube_api::install_crds(&api).await;
    (dir, api)
}

/// The same, with two replicas on it: replica-a and replica-b.
pub async fn two_replicas(tag: &str) -> (TempDir, KubeApi, Mesh, Mesh) {
    let (dir, api) = cluster(tag).await;
    let a = replica(&api, "replica-a").await;
    let b = replica(&api, "replica-b").await;
    (dir, api, a, b)
}

pub async fn replica(api: &KubeApi, name: &str) -> Mesh {
    let kubeconfig = api.kubeconfig.display().to_string();
    let lease = LEASE_SECS.to_string();
    Mesh::start_with_args(
        name,
        &[
            "--registry",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--ca-secret",
            "mesh-ca",
            "--identity",
            name,
            "--lease-duration-secs",
            &lease,
        ],
    )
    .await
}

/// The Lease's holder now, if any.
pub async fn holder(api: &KubeApi) -> Option<String> {
    let out = kubectl(
        api,
        &[
            "get",
            "lease",
            "-n",
            "mesh-system",
            "mesh-control",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )
    .await;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !id.is_empty()).then_some(id)
}

/// Waits until one of `candidates` holds the Lease; returns it and when.
pub async fn wait_for_holder(
    api: &KubeApi,
    candidates: &[&str],
    within: Duration,
) -> (String, Instant) {
    let end = Instant::now() + within;
    loop {
        if let Some(h) = holder(api).await
            && candidates.contains(&h.as_str())
        {
            return (h, Instant::now());
        }
        assert!(
            Instant::now() < end,
            "none of {candidates:?} took the Lease within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// meshctl with `args` against `api`'s cluster: success, stdout, stderr.
pub async fn meshctl(api: &KubeApi, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(meshctl::procs::binary("meshctl"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(args)
        .output()
        .await
        .expect("meshctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The echo Service, and each `(pod, port, version)` as a Pod and its
/// EndpointSlice.
pub async fn echo_in_cluster(api: &KubeApi, dir: &Path, pods: &[(&str, u16, &str)]) {
    crate::kube_api::create(api, dir, "service.yaml", crate::kube_api::ECHO_SERVICE).await;
    for (id, port, version) in pods {
        let yaml = crate::kube_api::echo_objects(id, *port, version);
        crate::kube_api::create(api, dir, &format!("{id}.yaml"), &yaml).await;
    }
}

/// echo v1 as `v1.1` on replica `v1.0` and v2 as `v2.1` on `v2.0`, each
/// sidecar with `env`, their Pods and EndpointSlices in the cluster;
/// returns once both replicas see both endpoints ready.
pub async fn echo_pair(
    api: &KubeApi,
    dir: &Path,
    v1: (&Mesh, &str),
    v2: (&Mesh, &str),
    env: &[(&str, &str)],
) -> (crate::support::Instance, crate::support::Instance) {
    let one = v1.0.instance_with("echo", "v1", v1.1, &[], None, env).await;
    let two = v2.0.instance_with("echo", "v2", v2.1, &[], None, env).await;
    let inbound = |i: &crate::support::Instance| i.sidecar.addr("inbound").unwrap().port();
    let pods = [
        (one.id.as_str(), inbound(&one), "v1"),
        (two.id.as_str(), inbound(&two), "v2"),
    ];
    echo_in_cluster(api, dir, &pods).await;
    for m in [v1.0, v2.0] {
        m.wait_ready_endpoints("echo", &[("echo", 2)])
            .await
            .unwrap();
    }
    (one, two)
}

/// The control plane's own Service in mesh-system (as install/ has it),
/// and each `(name, replica)` as its Pod and an EndpointSlice with the
/// replica's gRPC port: how the replicas find each other to pull
/// telemetry (`--peers-service`).
pub async fn control_in_cluster(api: &KubeApi, dir: &Path, replicas: &[(&str, &Mesh)]) {
    let service = "apiVersion: v1
kind: Service
metadata:
  name: mesh-control
  namespace: mesh-system
spec:
  selector: {app.kubernetes.io/name: mesh-control}
  ports:
  - name: grpc
    port: 15010
    targetPort: grpc
";
    crate::kube_api::create(api, dir, "mesh-control-service.yaml", service).await;
    for (name, mesh) in replicas {
        let port = mesh.grpc.port();
        let yaml = format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: mesh-system
  labels: {{app.kubernetes.io/name: mesh-control}}
spec:
  serviceAccountName: mesh-control
  containers:
  - name: mesh-control
    image: mesh-control
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: mesh-system
  labels: {{kubernetes.io/service-name: mesh-control}}
addressType: IPv4
ports:
- name: grpc
  port: {port}
  protocol: TCP
endpoints:
- addresses: [127.0.0.1]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: {name}, namespace: mesh-system}}
"
        );
        crate::kube_api::create(api, dir, &format!("{name}.yaml"), &yaml).await;
    }
}

/// TrafficSplit `default/name`'s `(backend, weight)`s as stored.
pub fn split_weights(api: &KubeApi, name: &str) -> Vec<(String, i64)> {
    let obj = api
        .object("split.smi-spec.io/trafficsplits", "default", name)
        .unwrap_or_else(|| panic!("TrafficSplit {name} is stored"));
    obj["spec"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["service"].as_str().unwrap().to_string(),
                b["weight"].as_i64().unwrap(),
            )
        })
        .collect()
}
