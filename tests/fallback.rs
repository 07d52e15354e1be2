//! Circuit breaking with a fallback. Without one, a route whose backends
//! have no usable endpoint (every one ejected by outlier detection, or none
//! ready) answers a fast 503. A TrafficPolicy `fallback` names another
//! service or a static response; it answers only while the primary has no
//! usable endpoint, is counted in `mesh_fallback_requests_total`, shows in
//! `meshctl get routes`, and the primary takes traffic back as soon as one
//! of its endpoints is usable again.
//!
//! The pattern as its sources give it: Nygard's circuit breaker ("Release
//! It!", "Circuit Breaker": once open, calls "fail fast" or go to a
//! fallback) and Envoy/Istio outlier detection ("ejected hosts are not used
//! for load balancing"; with `maxEjectionPercent: 100` every host may be).

mod support;

use http_body_util::{BodyExt, Full};
use std::time::Duration;
use support::load::{Shape, from_instance, many, with_status};
use support::{DEADLINE, Health, Mesh, traffic_policy};

/// Sets the share of requests an echo app fails from now on.
async fn fail_share(app: std::net::SocketAddr, rate: f64) {
    let (status, body) = meshctl::traffic::get(app, &format!("/admin/errors?rate={rate}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Every v1 endpoint failing → the fallback service answers, with zero
/// failed requests (each request's retries meet the ejected endpoints and
/// then the fallback); once v1 recovers it takes all traffic back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_service_answers_while_every_endpoint_is_ejected() {
    let mesh = Mesh::start("fallback-service").await;
    let a = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    let b = mesh.instance("echo", "v1", "echo-v1-b", &[], None).await;
    let _ro = mesh
        .instance("echo-readonly", "v1", "echo-ro", &[], None)
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    mesh.wait_ready_endpoints("echo-readonly", &[("echo-readonly", 1)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;
    // One failure ejects; all may be ejected; two retries reach both
    // endpoints and then, both ejected, the fallback.
    mesh.apply_ok(
        "policy.yaml",
        &traffic_policy(
            "echo",
            "outlierDetection:\n  consecutiveFailures: 1\n  baseEjectionTime: 500ms\n  maxEjectionPercent: 100\n\
             retry:\n  attempts: 2\n  retryOn: [5xx]\n  backoff: 1ms\n  budget:\n    ratio: 1.0\n    minPerSecond: 1000\n\
             fallback:\n  service: echo-readonly",
        ),
    )
    .await;
    mesh.sync(&client).await;

    let shape = Shape::get("echo");
    let before = many(client.outbound, &shape, 100, 4).await;
    assert_eq!(with_status(&before, 200), 100);
    assert_eq!(from_instance(&before, "echo-ro"), 0, "v1 is healthy");

    fail_share(a.app_addr(), 1.0).await;
    fail_share(b.app_addr(), 1.0).await;
    let during = many(client.outbound, &shape, 300, 4).await;
    let failed: Vec<_> = during.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let fell_back = from_instance(&during, "echo-ro");
    assert!(fell_back >= 290, "{fell_back} of 300 from the fallback");
    let counted = support::metric(
        client.admin,
        "mesh_fallback_requests_total",
        &["fallback=\"echo-readonly.default\""],
    )
    .await;
    assert_eq!(counted, fell_back as f64, "every fallback answer counted");

    // Recovery: the primary takes traffic back once an endpoint is usable
    // (ejections end; the next attempt there succeeds).
    fail_share(a.app_addr(), 0.0).await;
    fail_share(b.app_addr(), 0.0).await;
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let r = many(client.outbound, &shape, 10, 1).await;
        if from_instance(&r, "echo-ro") == 0 && with_status(&r, 200) == 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "v1 never took traffic back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = many(client.outbound, &shape, 200, 4).await;
    assert_eq!(with_status(&after, 200), 200);
    assert_eq!(from_instance(&after, "echo-ro"), 0, "{after:?}");

    // `get routes` says what answers when v1 cannot.
    let out = mesh.meshctl(&["get", "routes", "echo", "-o", "json"]).await;
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        routes["routes"][0]["fallback"],
        serde_json::json!({"service": "echo-readonly"}),
        "{routes:#}"
    );
    let out = mesh.meshctl(&["get", "routes", "echo"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("service echo-readonly"), "{table}");
}

/// A static fallback answers with its own status, headers and body while
/// the only instance is not ready, and the instance takes traffic back
/// once it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_fallback_answers_while_no_endpoint_is_ready() {
    let mesh = Mesh::start("fallback-static").await;
    let health = Some(Health {
        interval_ms: 100,
        failure_threshold: 1,
    });
    let inst = mesh.instance("echo", "v1", "echo-v1-a", &[], health).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;
    mesh.apply_ok(
        "policy.yaml",
        &traffic_policy(
            "echo",
            "fallback:\n  response:\n    status: 200\n    headers:\n      content-type: application/json\n      X-Degraded: \"true\"\n    body: '{\"degraded\":true}'",
        ),
    )
    .await;
    mesh.sync(&client).await;
    let out = mesh.meshctl(&["get", "routes", "echo"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("response 200 (17 bytes)"), "{table}");

    let http = meshctl::traffic::client();
    let get = || async {
        let req = http::Request::get(format!("http://{}/", client.outbound))
            .header(http::header::HOST, "echo")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        let (head, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (head, String::from_utf8_lossy(&body).into_owned())
    };
    let (head, _) = get().await;
    assert_eq!(head.headers["x-echo-instance"], "echo-v1-a");

    // The app's health check fails: the sidecar reports it not ready and
    // the control plane takes it out of the endpoint set.
    meshctl::traffic::get(inst.app_addr(), "/admin/health?ok=false")
        .await
        .unwrap();
    mesh.wait_ready_endpoints("echo", &[("echo", 0)])
        .await
        .unwrap();
    mesh.sync(&client).await;
    for _ in 0..50 {
        let (head, body) = get().await;
        assert_eq!(head.status, 200);
        assert_eq!(body, "{\"degraded\":true}");
        assert_eq!(head.headers["x-degraded"], "true");
        assert_eq!(head.headers["content-type"], "application/json");
        assert!(!head.headers.contains_key("mesh-proxy-error"));
    }
    let counted = support::metric(
        client.admin,
        "mesh_fallback_requests_total",
        &["fallback=\"static\""],
    )
    .await;
    assert_eq!(counted, 50.0);

    meshctl::traffic::get(inst.app_addr(), "/admin/health?ok=true")
        .await
        .unwrap();
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    mesh.sync(&client).await;
    let (head, _) = get().await;
    assert_eq!(head.headers["x-echo-instance"], "echo-v1-a", "back to v1");
}
