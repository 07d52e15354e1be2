//! Losing the control plane under load fails no request; after a restart the
//! sidecars resubscribe, the rules applied before it are still in force, and
//! a later shift still takes effect.

mod support;

use meshctl::traffic::{Steady, burst};
use std::time::Duration;
use support::{DEADLINE, Mesh, within_binomial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_loss_and_restart() {
    let (mut mesh, instances, client) = Mesh::two_versions("cp-loss", "100", "0").await;
    // Retries off: a request the loss broke would fail, not be retried away.
    mesh.no_retries("echo", "p2c-ewma", &client).await;
    let outbound = client.outbound;
    // Rules applied through the admin API (not the seed file) must survive.
    mesh.shift_echo_v2("70").await;
    mesh.sync(&client).await;

    let steady = Steady::start(outbound, "echo", 2, 100_000);
    mesh.kill_control().await;

    // Well past a heartbeat lease and several reconnect attempts.
    let during = burst(outbound, "echo", 1000, 4).await;
    assert_eq!(during.failures, 0, "{:?}", during.sample_errors);
    assert!(
        within_binomial(during.count("v2"), 1000, 0.7),
        "last good 30/70 config keeps serving: {during:?}"
    );

    mesh.restart_control().await;
    // Every sidecar resubscribes and ACKs the restarted control plane's config.
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let out = mesh.meshctl(&["proxy-status", "-o", "json"]).await;
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let version = st["controlVersion"].as_str().unwrap_or("?").to_string();
        let proxies = st["proxies"].as_array().cloned().unwrap_or_default();
        let synced = proxies
            .iter()
            .filter(|p| p["ackedVersion"] == version.as_str())
            .count();
        if proxies.len() == 3 && synced == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "sidecars did not resubscribe: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = mesh.meshctl(&["get", "splits", "-o", "json"]).await;
    let splits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backends = &splits["items"][0]["spec"]["backends"];
    assert_eq!(backends[0]["weight"], 30, "{splits}");
    assert_eq!(backends[1]["weight"], 70, "{splits}");
    let after = burst(outbound, "echo", 1000, 4).await;
    assert_eq!(after.failures, 0, "{:?}", after.sample_errors);
    assert!(within_binomial(after.count("v2"), 1000, 0.7), "{after:?}");

    mesh.shift_echo_v2("100").await;
    mesh.sync(&client).await;
    let last = burst(outbound, "echo", 300, 4).await;
    assert_eq!(
        last.count("v2"),
        300,
        "shift after restart takes effect: {last:?}"
    );

    let outcomes = steady.finish().await;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} background requests failed",
        outcomes.len()
    );
    for i in &instances {
        assert_eq!(support::retries_seen(i.app_addr()).await, 0, "{}", i.id);
    }
    assert_eq!(
        support::metric(client.admin, "mesh_retries_total", &[]).await,
        0.0
    );
}
