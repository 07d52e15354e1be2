//! mesh-control with `--registry kubernetes` against the Kubernetes API
//! test server (tests/support/kube_api), the objects written by the
//! machine's kubectl: Services, Pods and EndpointSlices whose addresses
//! are real sidecars on loopback, and rules as objects of the CRDs in
//! install/crds. A TrafficSplit object shifts by version, one the schema
//! refuses is never stored, one only mesh's validation refuses leaves the
//! last valid version serving; an endpoint
//! marked not ready leaves rotation at once with no request lost; and
//! dropped watches, 410 Gone and an API server restart cost no request and
//! never push an empty endpoint set. (Identity from projected tokens:
//! tests/kube_identity.rs.)
//!
//! With `MESH_TEST_KUBECONFIG` set, these would need a real cluster whose
//! pods can reach this machine's loopback, which no cluster has: the
//! variable is reported and ignored. What a real cluster can show without
//! reaching back (a server-side dry run of install/, `meshctl check
//! --pre`) runs against it in tests/install.rs.

#[path = "support/kube_api/mod.rs"]
mod kube_api;
mod support;

use anyhow::Result;
use kube_api::{KubeApi, kubectl, kubectl_ok};
use mesh_proto::v1 as pb;
use meshctl::traffic::Steady;
use pb::discovery_client::DiscoveryClient;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Instance, Mesh, TempDir, split, within_binomial};
use tokio_stream::StreamExt;

/// The Pod and EndpointSlice of one echo instance (see kube_api).
fn objects(inst: &Instance, version: &str) -> String {
    kube_api::echo_objects(
        &inst.id,
        inst.sidecar.addr("inbound").unwrap().port(),
        version,
    )
}

/// Every endpoint count of `echo.default` in every snapshot the control
/// plane sends one subscriber, as they arrive.
struct Snapshots {
    counts: Arc<Mutex<Vec<usize>>>,
}

impl Snapshots {
    async fn watch(mesh: &Mesh) -> Snapshots {
        let channel = mesh.workload_channel("client").await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let node = pb::Node {
            service: "client".into(),
            namespace: "default".into(),
            instance_id: "snapshot-watcher".into(),
            version: String::new(),
        };
        tx.send(pb::DiscoveryRequest {
            node: Some(node),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut stream = DiscoveryClient::new(channel)
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("subscribe")
            .into_inner();
        let counts = Arc::new(Mutex::new(Vec::new()));
        let seen = counts.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                let n = resp
                    .clusters
                    .iter()
                    .find(|c| c.name == "echo.default")
                    .map_or(0, |c| c.endpoints.len());
                seen.lock().unwrap().push(n);
                let ack = pb::DiscoveryRequest {
                    version_info: resp.version_info.clone(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        });
        Snapshots { counts }
    }

    fn seen(&self) -> Vec<usize> {
        self.counts.lock().unwrap().clone()
    }
}

/// Marks the endpoint of `id` ready or not, as the EndpointSlice
/// controller does when a readiness probe changes.
async fn set_ready(api: &KubeApi, id: &str, ready: bool) {
    let patch =
        format!(r#"[{{"op":"replace","path":"/endpoints/0/conditions/ready","value":{ready}}}]"#);
    kubectl_ok(
        api,
        &["patch", "endpointslice", id, "--type=json", "-p", &patch],
    )
    .await;
}

/// Sends requests one after another until `until`; the instances that
/// answered each and when, failing the test on any failure.
async fn answered(client: std::net::SocketAddr, until: Instant) -> Result<Vec<(Instant, String)>> {
    let http = meshctl::traffic::client();
    let mut out = Vec::new();
    while Instant::now() < until {
        let o = meshctl::traffic::one(&http, client, "echo").await;
        if let Some(e) = o.error {
            anyhow::bail!("a request failed: {e}");
        }
        out.push((Instant::now(), o.instance.unwrap_or_default()));
    }
    Ok(out)
}

/// Waits until mesh-control's log says `line`.
async fn wait_for_log(mesh: &Mesh, line: &str) {
    let end = Instant::now() + support::DEADLINE;
    let log = mesh.logs().join("mesh-control.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(line)
    {
        assert!(Instant::now() < end, "mesh-control never logged {line:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_is_the_registry_and_survives_its_watches_breaking() {
    kube_api::real_cluster_ignored();
    let dir = TempDir::new("kube-api");
    let mut api = KubeApi::start(&dir.0).await;
    let kubeconfig = api.kubeconfig.display().to_string();
    // The rule kinds' CRDs from install/ come first: without them the
    // control plane waits (not ready), rather than serve a mesh without
    // its rules.
    kube_api::install_crds(&api).await;
    let mut mesh = Mesh::start_with_args(
        "kube",
        &["--registry", "kubernetes", "--kubeconfig", &kubeconfig],
    )
    .await;
    // Every sidecar proves itself with its projected ServiceAccount token.
    let tokens = kube_api::accounts(&api, &dir.0, &["echo", "client"]).await;
    let (echo_token, client_token) = (&tokens[0], &tokens[1]);
    let with_token = [("MESH_PROXY_IDENTITY_TOKEN_FILE", echo_token.as_str())];
    let insts = [
        mesh.instance_with("echo", "v1", "echo-v1-a", &[], None, &with_token)
            .await,
        mesh.instance_with("echo", "v1", "echo-v1-b", &[], None, &with_token)
            .await,
        mesh.instance_with("echo", "v2", "echo-v2-a", &[], None, &with_token)
            .await,
    ];
    kube_api::create(&api, &dir.0, "service.yaml", kube_api::ECHO_SERVICE).await;
    for (inst, v) in insts.iter().zip(["v1", "v1", "v2"]) {
        kube_api::create(
            &api,
            &dir.0,
            &format!("{}.yaml", inst.id),
            &objects(inst, v),
        )
        .await;
    }
    mesh.wait_ready_endpoints("echo", &[("echo", 3)])
        .await
        .unwrap();
    let snapshots = Snapshots::watch(&mesh).await;
    let client = mesh
        .client_with(
            "client-0",
            &[("MESH_PROXY_IDENTITY_TOKEN_FILE", client_token.as_str())],
        )
        .await;

    // Rules as objects of the CRDs (installed first, as install/ does).
    let policy = support::traffic_policy(
        "echo",
        "loadBalancer: round-robin\nretry:\n  retryOn: []\n  grpcCodes: []",
    );
    let before = mesh.version().await;
    kube_api::create(&api, &dir.0, "policy.yaml", &policy).await;
    support::wait_for_version(&mesh, &client, before).await;

    // kubectl reads back what mesh-control reads.
    let listed = kubectl_ok(
        &api,
        &[
            "get",
            "endpointslices",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .await;
    assert_eq!(listed.split_whitespace().count(), 3, "{listed}");

    // The admin API no longer writes rules: the cluster holds them.
    let refused = mesh
        .apply(
            "split.yaml",
            &split("echo", &[("echo-v1", "80"), ("echo-v2", "20")]),
        )
        .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("reads its rules from the Kubernetes cluster"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A TrafficSplit object, 80/20 by version, over the cluster's instances.
    let before = mesh.version().await;
    kube_api::create(
        &api,
        &dir.0,
        "split.yaml",
        &split("echo", &[("echo-v1", "80"), ("echo-v2", "20")]),
    )
    .await;
    support::wait_for_version(&mesh, &client, before).await;
    let v2_share = |replies: &[support::load::Reply]| {
        replies
            .iter()
            .filter(|r| r.version.as_deref() == Some("v2"))
            .count() as u64
    };
    let n = 4000;
    let replies =
        support::load::many(client.outbound, &support::load::Shape::get("echo"), n, 8).await;
    assert_eq!(
        support::load::with_status(&replies, 200),
        n,
        "every request answered"
    );
    let v2 = v2_share(&replies);
    eprintln!("measured: {v2} of {n} answered by v2 at a 20% TrafficSplit object");
    assert!(
        within_binomial(v2, n as u64, 0.2),
        "{v2} of {n} at v2, not about 20%"
    );
    let accepted = kube_api::condition(&api, "echo-split", "Accepted", "True", 1).await;
    assert_eq!(accepted["reason"], "Accepted", "{accepted}");

    // What the CRD's schema refuses never gets stored.
    let negative =
        split("echo", &[("echo-v1", "-1"), ("echo-v2", "20")]).replace("echo-split", "negative");
    std::fs::write(dir.0.join("negative.yaml"), &negative).unwrap();
    let out = kubectl(
        &api,
        &[
            "create",
            "-f",
            dir.0.join("negative.yaml").to_str().unwrap(),
            "--validate=false",
        ],
    )
    .await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said
                .contains("spec.backends[0].weight in body should be greater than or equal to 0"),
        "{said}"
    );
    assert!(
        api.object("split.smi-spec.io/trafficsplits", "default", "negative")
            .is_none()
    );

    // What only mesh's validation refuses (all weights 0) is stored, but
    // the last valid version keeps serving, and the log says why.
    let before = mesh.version().await;
    kubectl_ok(&api, &["patch", "trafficsplit", "echo-split", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/backends/0/weight","value":0},{"op":"replace","path":"/spec/backends/1/weight","value":0}]"#]).await;
    wait_for_log(
        &mesh,
        "Kubernetes rule refused; its last valid version keeps serving",
    )
    .await;
    assert_eq!(mesh.version().await, before, "nothing was published");
    let refused = kube_api::condition(&api, "echo-split", "Accepted", "False", 2).await;
    assert_eq!(refused["reason"], "Invalid", "{refused}");
    let why = refused["message"].as_str().unwrap_or("");
    assert!(
        why.starts_with("TrafficSplit default/echo-split:") && why.contains("spec.backends"),
        "{why}"
    );
    let replies =
        support::load::many(client.outbound, &support::load::Shape::get("echo"), 1000, 8).await;
    assert_eq!(support::load::with_status(&replies, 200), 1000);
    assert!(
        within_binomial(v2_share(&replies), 1000, 0.2),
        "the 80/20 version still serves"
    );

    // Deleting the TrafficSplit returns echo to its default: every ready
    // instance, v2 among three.
    let before = mesh.version().await;
    kubectl_ok(&api, &["delete", "trafficsplit", "echo-split"]).await;
    support::wait_for_version(&mesh, &client, before).await;
    let replies =
        support::load::many(client.outbound, &support::load::Shape::get("echo"), 1500, 8).await;
    let v2 = v2_share(&replies);
    assert!(
        within_binomial(v2, 1500, 1.0 / 3.0),
        "{v2} of 1500 at v2 after the split's deletion"
    );

    // Not ready in its EndpointSlice: out of rotation within 1 s, and no
    // request fails meanwhile.
    let marked = Instant::now();
    let (seen, ()) = tokio::join!(
        answered(client.outbound, marked + Duration::from_secs(3)),
        set_ready(&api, "echo-v1-a", false)
    );
    let seen = seen.unwrap();
    let last = seen
        .iter()
        .filter(|(_, i)| i == "echo-v1-a")
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(marked);
    let out_after = last.saturating_duration_since(marked);
    eprintln!(
        "measured: a not-ready endpoint's last answer {out_after:?} after the patch; {} requests, none failed",
        seen.len()
    );
    assert!(
        out_after < Duration::from_secs(1),
        "still answering {out_after:?} after not-ready"
    );
    assert!(
        seen.iter()
            .filter(|(t, _)| *t > marked + Duration::from_secs(1))
            .count()
            > 50
    );
    set_ready(&api, "echo-v1-a", true).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 3)])
        .await
        .unwrap();
    mesh.sync(&client).await;

    // Watch faults under load: every watch dropped, then history
    // compacted so the resumed watches get 410 Gone, then the API server
    // restarted. No request fails and no snapshot lacks an endpoint.
    let before = snapshots.seen().len();
    let steady = Steady::start(client.outbound, "echo", 2, 100_000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.drop_watches();
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.compact();
    api.drop_watches();
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.restart(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A change after the restart takes effect: the relisted watches are live.
    set_ready(&api, "echo-v2-a", false).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    let outcomes = steady.finish().await;
    support::assert_none_failed(
        &outcomes,
        "dropped watches, 410 Gone and an API server restart",
    );
    let counts = snapshots.seen()[before..].to_vec();
    eprintln!(
        "measured: {} requests through the watch faults, none failed; snapshots' echo endpoints {counts:?}",
        outcomes.len()
    );
    assert!(
        counts.iter().all(|&c| c >= 2),
        "a snapshot lost endpoints: {counts:?}"
    );
    assert_eq!(
        counts.last(),
        Some(&2),
        "the change after the restart arrived"
    );
    let relists = api
        .seen()
        .iter()
        .filter(|s| s.as_str() == "GET /apis/discovery.k8s.io/v1/endpointslices")
        .count();
    assert!(
        relists >= 3,
        "the watchers relisted after 410 and the restart ({relists} lists)"
    );

    // A restarted control plane sends nothing until it has listed the
    // cluster's registry and rules: a sidecar that subscribes the moment
    // the port opens gets the whole config first, never one without the
    // cluster's endpoints; and no request fails meanwhile.
    let steady = Steady::start(client.outbound, "echo", 2, 100_000);
    mesh.kill_control().await;
    let (url, creds) = (mesh.control_url(), mesh.dir.0.join("workload-client"));
    let early = tokio::spawn(async move {
        let end = Instant::now() + support::DEADLINE;
        loop {
            assert!(
                Instant::now() < end,
                "the restarted control plane never answered"
            );
            if let Ok(channel) = meshctl::client::channel(&url, &creds).await {
                let first = pb::DiscoveryRequest {
                    node: Some(pb::Node {
                        service: "client".into(),
                        namespace: "default".into(),
                        instance_id: "early-subscriber".into(),
                        version: String::new(),
                    }),
                    ..Default::default()
                };
                let stream = tokio_stream::iter([first]).chain(tokio_stream::pending());
                if let Ok(resp) = DiscoveryClient::new(channel).subscribe(stream).await
                    && let Ok(Some(snap)) = resp.into_inner().message().await
                {
                    return snap
                        .clusters
                        .iter()
                        .find(|c| c.name == "echo.default")
                        .map_or(0, |c| c.endpoints.len());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    mesh.restart_control().await;
    let first = early.await.unwrap();
    let outcomes = steady.finish().await;
    support::assert_none_failed(&outcomes, "a control-plane restart in cluster mode");
    eprintln!(
        "measured: {} requests across a SIGKILL and restart of mesh-control, none failed; the first snapshot after it had {first} echo endpoints",
        outcomes.len()
    );
    assert_eq!(first, 2, "the first snapshot after a restart is whole");

    // Bad input from the cluster: a slice of an unknown Service is named
    // and changes nothing.
    let ghost = objects(&insts[0], "v1")
        .split("---\n")
        .nth(1)
        .unwrap()
        .replace(
            "name: echo-v1-a\n  labels: {kubernetes.io/service-name: echo}",
            "name: ghost\n  labels: {kubernetes.io/service-name: ghost}",
        );
    kube_api::create(&api, &dir.0, "ghost.yaml", &ghost).await;
    let end = Instant::now() + support::DEADLINE;
    let log = mesh.logs().join("mesh-control.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Service default/ghost is unknown")
    {
        assert!(
            Instant::now() < end,
            "no log line names the unknown Service"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = kubectl(&api, &["get", "services", "ghost"]).await;
    assert!(!out.status.success(), "ghost exists only as a slice");
}
