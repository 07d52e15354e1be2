//! On-demand discovery through a real sidecar: one started with an empty
//! `MESH_PROXY_SERVICES` holds no service but its own, learns a service at
//! its app's first request to it (which waits for the control plane and
//! then succeeds), answers a name the mesh does not know with 404 at once,
//! drops a service no request used for a while, and, with no control plane
//! to ask, answers 503 once its bounded wait is over.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{DEADLINE, Mesh};

/// The services a sidecar holds config for (its /config_dump).
async fn held(admin: std::net::SocketAddr) -> Vec<String> {
    let (_, dump) = meshctl::traffic::get(admin, "/config_dump").await.unwrap();
    let dump: Value = serde_json::from_str(&dump).unwrap();
    dump["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// Status and body of one GET for `host` through `outbound`.
async fn get(outbound: std::net::SocketAddr, host: &str) -> (u16, String) {
    let o = meshctl::traffic::one(&meshctl::traffic::client(), outbound, host).await;
    match o.error {
        None => (200, String::new()),
        Some(e) => {
            let status = e
                .strip_prefix("HTTP ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (status, e)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_learns_a_service_at_its_first_request_and_drops_it_unused() {
    let (mesh, _instances) = Mesh::with_instances("on-demand", &["echo", "other"]).await;
    let client = mesh
        .client_with(
            "client-a",
            &[
                ("MESH_PROXY_SERVICES", ""),
                ("MESH_PROXY_UNSUBSCRIBE_AFTER_MS", "300"),
            ],
        )
        .await;
    let before = held(client.admin).await;
    assert!(
        !before.iter().any(|s| s == "echo" || s == "other"),
        "nothing is held before it is asked for: {before:?}"
    );

    let (status, body) = get(client.outbound, "echo").await;
    assert_eq!(status, 200, "the first request waits and succeeds: {body}");
    let now = held(client.admin).await;
    assert!(now.iter().any(|s| s == "echo"), "{now:?}");
    assert!(
        !now.iter().any(|s| s == "other"),
        "only what it asked: {now:?}"
    );

    let started = Instant::now();
    let (status, body) = get(client.outbound, "nosuch").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nosuch"), "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the control plane's answer, not the wait: {:?}",
        started.elapsed()
    );

    // Unused, echo is dropped again (a sweep or two after the last request).
    let end = Instant::now() + DEADLINE;
    while held(client.admin).await.iter().any(|s| s == "echo") {
        assert!(Instant::now() < end, "echo was never dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(client.outbound, "echo.default.svc.cluster.local").await;
    assert_eq!(status, 200, "asked again: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_answer_a_request_waits_its_bound_then_gets_503() {
    let mut mesh = Mesh::start("on-demand-wait").await;
    let _echo = mesh.instance("echo", "v1", "echo-a", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh
        .client_with(
            "client-a",
            &[
                ("MESH_PROXY_SERVICES", "other"),
                ("MESH_PROXY_DISCOVERY_WAIT_MS", "400"),
            ],
        )
        .await;
    mesh.kill_control().await;
    let started = Instant::now();
    let (status, body) = get(client.outbound, "echo").await;
    let took = started.elapsed();
    eprintln!(
        "measured: a request to a name not held, with no control plane, answered after {took:?}"
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("within"), "the reason says it waited: {body}");
    assert!(
        took >= Duration::from_millis(400),
        "answered before its wait: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}
