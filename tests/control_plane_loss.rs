//! Losing the control plane under load fails no request; after a restart the
//! sidecars resubscribe, the rules applied before it are still in force, and
//! a later shift still takes effect. A graceful stop (SIGTERM, what every
//! orchestrator sends: Kubernetes' "Termination of Pods") is as safe as a
//! kill, and exits 0 within its drain.

mod support;

use meshctl::traffic::{Steady, burst};
use std::time::{Duration, Instant};
use support::load::{Shape, open_loop, with_status};
use support::{DEADLINE, Mesh, within_binomial};

/// Waits (bounded) until every one of `n` sidecars has ACKed the control
/// plane's version.
async fn wait_resubscribed(mesh: &Mesh, n: usize) {
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
        if proxies.len() == n && synced == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "sidecars did not resubscribe: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM under 200 rps: mesh-control stops publishing and expiring
/// leases at once (so the sidecars never get a registry nobody can renew),
/// is no longer ready, holds the sidecars' streams for its drain, then ends
/// them and exits 0. Requests keep succeeding on the last good config
/// through the stop, well past a lease (900 ms), and across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_control_plane_gracefully_under_load() {
    let drain = Duration::from_millis(2000);
    let mut mesh = Mesh::start_with_args("cp-sigterm", &["--drain-timeout-ms", "2000"]).await;
    let _v1 = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    let _v2 = mesh.instance("echo", "v2", "echo-v2-a", &[], None).await;
    mesh.apply_ok(
        "split.yaml",
        &support::split("echo", &[("echo-v1", "50"), ("echo-v2", "50")]),
    )
    .await;
    mesh.wait_ready_endpoints("echo", &[("echo-v1", 1), ("echo-v2", 1)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;
    mesh.no_retries("echo", "p2c-ewma", &client).await;
    mesh.sync(&client).await;
    let http = mesh.control.addr("http").unwrap();

    // 200 rps for 9 s: about 1 s before the signal, the drain, 4 s after
    // the exit (leases would have lapsed four times over), then the restart.
    let outbound = client.outbound;
    let load = tokio::spawn(open_loop(
        outbound,
        |_| Shape::get("echo"),
        200,
        Duration::from_secs(9),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signalled = Instant::now();
    mesh.control.signal(nix::sys::signal::Signal::SIGTERM);
    // Not ready as soon as it has the signal (bounded wait: the signal is
    // asynchronous), long before it exits.
    let mut ready = 200;
    while ready != 503 && signalled.elapsed() < drain / 2 {
        ready = meshctl::traffic::get(http, "/ready")
            .await
            .map_or(0, |(s, _)| s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 503, "a stopping control plane is not ready");
    let exit = mesh
        .control
        .wait(drain + Duration::from_secs(5))
        .await
        .expect("mesh-control exits after its drain");
    let took = signalled.elapsed();
    eprintln!("measured: mesh-control exited {exit:?} {took:?} after SIGTERM (drain {drain:?})");
    assert!(exit.success(), "exit 0 after a graceful stop: {exit:?}");
    assert!(
        took >= drain && took < drain + Duration::from_secs(3),
        "held the streams for the drain, then went: {took:?}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    mesh.restart_control().await;
    wait_resubscribed(&mesh, 3).await;

    let replies = load.await.unwrap();
    let replies: Vec<_> = replies.into_iter().map(|(_, r)| r).collect();
    eprintln!(
        "measured: {} of {} requests at 200 rps succeeded across SIGTERM, drain and restart",
        with_status(&replies, 200),
        replies.len()
    );
    assert_eq!(
        with_status(&replies, 200),
        replies.len(),
        "every request before, during and after the stop succeeded: {:?}",
        replies.iter().find(|r| r.status != 200)
    );
    let after = burst(outbound, "echo", 300, 4).await;
    assert_eq!(after.failures, 0, "{:?}", after.sample_errors);
    assert!(within_binomial(after.count("v2"), 300, 0.5), "{after:?}");
}

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
    wait_resubscribed(&mesh, 3).await;
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
