//! `meshctl proxy-status`: after an apply, every sidecar shows the new
//! version, how long the push took from publication to its ACK, and when it
//! was last seen.

mod support;

use std::time::Duration;
use support::{Mesh, split};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_shows_every_sidecar_on_the_new_version_with_push_time() {
    let (mesh, _instances, client) = Mesh::two_versions("proxy-status", "100", "0").await;
    let applied = std::time::Instant::now();
    mesh.apply_ok(
        "shift.yaml",
        &split("echo", &[("echo-v1", "50"), ("echo-v2", "50")]),
    )
    .await;
    let want = mesh.version().await.to_string();
    let end = tokio::time::Instant::now() + support::DEADLINE;
    let json = loop {
        let out = mesh.meshctl(&["proxy-status", "-o", "json"]).await;
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let proxies = json["proxies"].as_array().unwrap();
        if proxies.len() == 3 && proxies.iter().all(|p| p["ackedVersion"] == want.as_str()) {
            break json;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "never all on {want}: {json:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let since_apply = applied.elapsed().as_secs_f64() * 1000.0;
    eprintln!("measured: {json:#}");
    for p in json["proxies"].as_array().unwrap() {
        // Measured, and no longer than the whole apply-to-ACK this test saw.
        let push = p["lastPushMs"].as_f64().expect("push time known");
        assert!(
            push > 0.0 && push <= since_apply,
            "{p} (apply {since_apply:.0} ms ago)"
        );
        assert!(push < 2000.0, "{p}");
        // Each ACKed after the apply, so each was seen since.
        let seen = p["lastSeenMsAgo"].as_u64().unwrap();
        assert!(
            seen as f64 <= since_apply,
            "{p} (apply {since_apply:.0} ms ago)"
        );
        assert!(seen < 2000, "{p}");
        assert_eq!(p["nackReason"], "");
    }
    // The table says the same.
    let out = mesh.meshctl(&["proxy-status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("SYNCED").count(), 3, "{text}");
    assert!(text.contains("ms ") && text.contains("s ago"), "{text}");
    drop(client);
}

/// A route regex this sidecar will not compile (over its own
/// MESH_PROXY_MAX_REGEX_BYTES, like Envoy's RE2 program-size guard): the
/// control plane accepted it, the sidecar NACKs it naming route and limit,
/// proxy-status and check show the reason, and the sidecar keeps serving
/// with the config it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_rejects_config_shows_the_nack_reason() {
    let (mesh, _inst, _client) = Mesh::one_instance("proxy-status-nack", &[]).await;
    let strict = mesh
        .client_with(
            "client-small",
            &[
                ("MESH_PROXY_MAX_REGEX_BYTES", "2000"),
                ("MESH_PROXY_TELEMETRY_INTERVAL_MS", "200"),
            ],
        )
        .await;
    let before = mesh.version().await;
    mesh.apply_ok(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-routes
spec:
  parentRefs:
  - group: \"\"
    kind: Service
    name: echo
    port: 80
  rules:
  - name: users
    matches:
    - path:
        type: RegularExpression
        value: \"/users/\\\\w+\"
    backendRefs:
    - name: echo-v1
      port: 80
  - name: rest
    backendRefs:
    - name: echo-v1
      port: 80
",
    )
    .await;
    let want = mesh.version().await.to_string();
    assert_ne!(want, before.to_string());
    let end = tokio::time::Instant::now() + support::DEADLINE;
    let json = loop {
        let out = mesh.meshctl(&["proxy-status", "-o", "json"]).await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let proxies = json["proxies"].as_array().unwrap();
        let by = |id: &str| proxies.iter().find(|p| p["instance"] == id).cloned();
        let others_acked = ["client-0", "echo-v1-a"]
            .iter()
            .all(|id| by(id).is_some_and(|p| p["ackedVersion"] == want.as_str()));
        if others_acked && by("client-small").is_some_and(|p| p["nackedVersion"] == want.as_str()) {
            break by("client-small").unwrap();
        }
        assert!(tokio::time::Instant::now() < end, "{json:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = json["nackReason"].as_str().unwrap();
    assert!(
        reason.contains("route users")
            && reason.contains("limit of 2000 bytes")
            && reason.contains("MESH_PROXY_MAX_REGEX_BYTES"),
        "{reason}"
    );
    assert_eq!(
        json["ackedVersion"],
        before.to_string(),
        "still on the old config"
    );
    let out = mesh.meshctl(&["proxy-status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("client-small"))
        .unwrap();
    assert!(
        row.contains(&format!("REJECTED {want}: ")) && row.contains("route users"),
        "{text}"
    );
    let out = mesh.meshctl(&["check"]).await;
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains("client-small") && report.contains("MESH_PROXY_MAX_REGEX_BYTES"),
        "{report}"
    );
    // Sidecars without an app never register, and are listed all the same.
    for client in ["client-small", "client-0"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(client) && l.contains("(no app: outbound only)")),
            "{client} is not in the table: {report}"
        );
    }
    // The previous config keeps serving.
    let (status, _) = support::load::send(
        &meshctl::traffic::client(),
        strict.outbound,
        &support::load::Shape {
            path: "/users/bob".into(),
            ..support::load::Shape::get("echo")
        },
    )
    .await
    .map(|r| (r.status, r))
    .unwrap();
    assert_eq!(status, 200);
    // A sidecar with no app sends no heartbeats; its telemetry reports (every
    // 200 ms) keep it seen. Sampled over 1.5 s with no config change, its
    // last-seen age rises between reports and drops at each one: never
    // older than a report interval or two, and not frozen at zero either.
    let mut ages = Vec::new();
    let end = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < end {
        let out = mesh.meshctl(&["proxy-status", "-o", "json"]).await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let p = json["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["instance"] == "client-small")
            .unwrap()
            .clone();
        ages.push(p["lastSeenMsAgo"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (min, max) = (*ages.iter().min().unwrap(), *ages.iter().max().unwrap());
    assert!(max < 1000, "seen by its reports: {ages:?}");
    assert!(
        max >= 50 && min < max,
        "the age moves with the reports, not with being asked: {ages:?}"
    );
}
