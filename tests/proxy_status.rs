//! `meshctl proxy-status`: after an apply, every sidecar shows the new
//! version, how long the push took from publication to its ACK, and when it
//! was last seen.

mod support;

use std::time::Duration;
use support::{Mesh, split};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_shows_every_sidecar_on_the_new_version_with_push_time() {
    let (mesh, _instances, client) = Mesh::two_versions("proxy-status", "100", "0").await;
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
    eprintln!("measured: {json:#}");
    for p in json["proxies"].as_array().unwrap() {
        let push = p["lastPushMs"].as_f64().expect("push time known");
        assert!((0.0..2000.0).contains(&push), "{p}");
        assert!(p["lastSeenMsAgo"].as_u64().unwrap() < 2000, "{p}");
        assert_eq!(p["nackReason"], "");
    }
    // The table says the same.
    let out = mesh.meshctl(&["proxy-status"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("SYNCED").count(), 3, "{text}");
    assert!(text.contains("ms ") && text.contains("s ago"), "{text}");
    drop(client);
}
