//! The control plane at cluster scale, against the Kubernetes API test
//! server (tests/support/kube_api): `--registry kubernetes` with S
//! Services and one EndpointSlice of E endpoints each in its reflectors,
//! and N simulated sidecars subscribed (control.rs's, which do what
//! mesh-proxy does on the wire). Timed: from an EndpointSlice change in the
//! API server (one endpoint's `ready` flipped, which the server sends to
//! its watchers as it commits) until the last subscriber has the new
//! version and sends its ACK. Measured too: the control plane's RSS with
//! all of it in memory.

use crate::control::{all_have, subscribe};
use crate::kube_api::{self, KubeApi};
use crate::report::{percentile, rss_mib};
use anyhow::{Context, Result};
use mesh_proto::v1 as pb;
use meshctl::procs::ControlPlane;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// Results of one run.
pub(crate) struct ClusterRun {
    pub(crate) services: usize,
    pub(crate) endpoints: usize,
    pub(crate) subscribers: usize,
    pub(crate) changes: usize,
    pub(crate) first_p50_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) rss_mib: f64,
    pub(crate) peak_mib: f64,
}

fn slice(service: usize, per: usize, ready_first: bool) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = (0..per)
        .map(|j| {
            json!({"addresses": [format!("10.{}.{}.{}", service / 250, service % 250, j + 1)],
                   "conditions": {"ready": j != 0 || ready_first}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{service}-1"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": format!("svc-{service}")}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// Runs `changes` EndpointSlice changes with `services` × `per` endpoints
/// and `subscribers` sidecars.
pub(crate) async fn run(
    dir: &Path,
    services: usize,
    per: usize,
    subscribers: usize,
    changes: usize,
) -> Result<ClusterRun> {
    std::fs::create_dir_all(dir)?;
    let api = KubeApi::start(dir).await;
    kube_api::install_crds(&api).await;
    for i in 0..services {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
                         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
        api.insert("/services", "default", svc);
        api.insert(
            "discovery.k8s.io/endpointslices",
            "default",
            slice(i, per, true),
        );
    }
    let kubeconfig = api.kubeconfig.display().to_string();
    let extra: Vec<String> = ["--registry", "kubernetes", "--kubeconfig", &kubeconfig]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let state = dir.join("state");
    let mut control = ControlPlane {
        grpc_addr: "127.0.0.1:0",
        admin_addr: "127.0.0.1:0",
        state_dir: &state,
        config: None,
        heartbeat_ms: None,
        log: "warn",
        extra_args: &extra,
    }
    .start(&dir.join("logs"))
    .await?;
    let url = format!("https://{}", control.addr("grpc")?);
    let mut rx = subscribe(dir, &url, subscribers).await?;
    let mut admin = meshctl::client::admin(&control.control()?).await?;
    let version = || async {
        let st = meshctl::client::admin(&control.control()?)
            .await?
            .proxy_status(pb::ProxyStatusRequest {})
            .await?
            .into_inner();
        anyhow::Ok(st.control_version.parse::<u64>()?)
    };
    let mut current = version().await?;
    all_have(&mut rx, subscribers, current)
        .await
        .context("initial snapshot")?;
    let (mut samples, mut firsts) = (Vec::new(), Vec::new());
    for k in 0..changes {
        // Flip the first endpoint of one service, as the EndpointSlice
        // controller does when a readiness probe changes.
        let service = k % services;
        let name = format!("svc-{service}-1");
        let start = Instant::now();
        let changed = api.modify("discovery.k8s.io/endpointslices", "default", &name, |s| {
            let ready = s["endpoints"][0]["conditions"]["ready"] == true;
            s["endpoints"][0]["conditions"]["ready"] = json!(!ready);
        });
        anyhow::ensure!(changed, "EndpointSlice {name} is stored");
        let (first, last) = all_have(&mut rx, subscribers, current + 1).await?;
        samples.push(last.duration_since(start).as_secs_f64() * 1000.0);
        firsts.push(first.duration_since(start).as_secs_f64() * 1000.0);
        current = version().await?;
        // The next change starts from a quiet control plane.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = admin.proxy_status(pb::ProxyStatusRequest {}).await?;
    let (rss, peak) = rss_mib(control.pid().context("control plane running")?);
    control.stop(Duration::from_secs(5)).await;
    samples.sort_by(f64::total_cmp);
    firsts.sort_by(f64::total_cmp);
    Ok(ClusterRun {
        services,
        endpoints: services * per,
        subscribers,
        changes,
        first_p50_ms: percentile(&firsts, 50.0),
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        max_ms: *samples.last().unwrap_or(&f64::NAN),
        rss_mib: rss,
        peak_mib: peak,
    })
}
