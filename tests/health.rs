//! Registry health: an instance whose app fails its health check stops
//! receiving traffic within two probe intervals and returns when it passes;
//! a rolling restart of one of two instances fails no request.

mod support;

use meshctl::traffic::{Steady, burst, get};
use std::time::{Duration, Instant};
use support::{Client, Health, Instance, Mesh};

const INTERVAL_MS: u64 = 300;

/// Two v1 instances of echo, both ready, and a client sidecar that knows them.
async fn two_instances(tag: &str, health: Option<Health>) -> (Mesh, Instance, Instance, Client) {
    let mesh = Mesh::start(tag).await;
    let a = mesh.instance("echo", "v1", "echo-v1-a", &[], health).await;
    let b = mesh.instance("echo", "v1", "echo-v1-b", &[], health).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;
    (mesh, a, b, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_removes_instance_within_two_intervals() {
    let health = Some(Health {
        interval_ms: INTERVAL_MS,
        failure_threshold: 1,
    });
    let (mesh, a, _b, client) = two_instances("health", health).await;
    let outbound = client.outbound;

    let steady = Steady::start(outbound, "echo", 2, 100_000);
    let warm = burst(outbound, "echo", 200, 2).await;
    assert_eq!(warm.failures, 0);
    // The app's health endpoint starts failing; the app itself keeps serving.
    let (status, _) = get(a.app_addr(), "/admin/health?ok=false").await.unwrap();
    assert_eq!(status, 200);
    let failed_at = Instant::now();
    let cutoff = failed_at + Duration::from_millis(2 * INTERVAL_MS);
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    // Keep traffic flowing well past the cutoff before letting a recover.
    while Instant::now() < cutoff + Duration::from_millis(500) {
        let t = burst(outbound, "echo", 50, 2).await;
        assert_eq!(t.failures, 0, "{:?}", t.sample_errors);
    }
    let recovering_at = Instant::now();

    // It passes again and rejoins.
    get(a.app_addr(), "/admin/health?ok=true").await.unwrap();
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    mesh.sync(&client).await;
    let back = burst(outbound, "echo", 200, 2).await;
    let outcomes = steady.finish().await;
    assert!(
        outcomes.iter().all(|o| o.error.is_none()),
        "no request fails"
    );
    assert_eq!(back.failures, 0);

    let window: Vec<_> = outcomes
        .iter()
        .filter(|o| o.started > cutoff && o.started < recovering_at)
        .collect();
    assert!(
        window.len() >= 50,
        "too little traffic between cutoff and recovery: {}",
        window.len()
    );
    let late_hits = window
        .iter()
        .filter(|o| o.instance.as_deref() == Some("echo-v1-a"))
        .count();
    assert_eq!(
        late_hits, 0,
        "unhealthy instance still got traffic two probe intervals after failing"
    );
    let after_recovery = outcomes
        .iter()
        .filter(|o| o.started > recovering_at && o.instance.as_deref() == Some("echo-v1-a"))
        .count();
    assert!(
        after_recovery > 0,
        "instance a rejoined the rotation once healthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_one_instance_fails_no_request() {
    let (mesh, mut a, b, client) = two_instances("restart", None).await;
    // Retries off, so a drain that closed a connection early would fail a
    // request instead of hiding behind a retry; round robin, so both
    // instances answer and the restarted one is seen to be back.
    mesh.no_retries("echo", "round-robin", &client).await;
    let outbound = client.outbound;

    let steady = Steady::start(outbound, "echo", 4, 100_000);
    let warm = burst(outbound, "echo", 200, 2).await;
    assert!(warm.failures == 0 && warm.total() == 200);
    assert!(warm.count_instance("echo-v1-a") > 0 && warm.count_instance("echo-v1-b") > 0);
    let a_retries = support::retries_seen(a.app_addr()).await;

    // SIGTERM: deregister, stop accepting, drain, exit 0.
    let status = a.stop().await.expect("sidecar exited");
    assert!(status.success(), "sidecar drained cleanly: {status:?}");
    let log = std::fs::read_to_string(mesh.logs().join("echo-v1-a-proxy.log")).unwrap();
    assert!(
        log.contains("propagated=true"),
        "every other sidecar ACKed the deregistration before the drain:\n{log}"
    );
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let during = burst(outbound, "echo", 300, 2).await;
    assert_eq!(during.failures, 0, "{:?}", during.sample_errors);
    assert_eq!(during.count_instance("echo-v1-b"), 300);

    // The replacement comes up under the same instance id, as a restarted pod would.
    let a2 = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    mesh.sync(&client).await;
    let after = burst(outbound, "echo", 300, 2).await;
    let outcomes = steady.finish().await;

    support::assert_none_failed(&outcomes, "during the restart");
    assert_eq!(after.failures, 0);
    // Round robin over both (shared with the steady traffic): the
    // restarted instance takes its half.
    assert!(
        support::within_binomial(after.count_instance("echo-v1-a"), 300, 0.5),
        "the restarted instance is back in rotation: {after:?}"
    );
    assert_eq!(after.total(), 300);
    let on_new = burst(outbound, "echo", 100, 1).await;
    assert_eq!(on_new.failures, 0);
    let retried = a_retries
        + support::retries_seen(b.app_addr()).await
        + support::retries_seen(a2.app_addr()).await;
    assert_eq!(retried, 0, "no request was retried");
    assert_eq!(
        support::metric(client.admin, "mesh_retries_total", &[]).await,
        0.0
    );
}

/// A sidecar killed outright (no deregistration) leaves the endpoint set
/// when its lease runs out: three missed heartbeats (300 ms each here),
/// not sooner and not much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_leaves_when_its_lease_expires() {
    let (mesh, mut a, _b, client) = two_instances("lease", None).await;
    a.sidecar.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    a.sidecar
        .wait(Duration::from_secs(5))
        .await
        .expect("killed");
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let gone = killed.elapsed();
    // The last beat came at most one interval before the kill; expiry is
    // checked every lease/6 (150 ms).
    assert!(
        gone >= Duration::from_millis(2 * 300),
        "left after {gone:?}: before its lease could have run out"
    );
    assert!(
        gone <= Duration::from_millis(3 * 300 + 150 + 600),
        "left after {gone:?}: long after three missed beats"
    );
    mesh.sync(&client).await;
    let t = burst(client.outbound, "echo", 100, 2).await;
    assert_eq!(t.count_instance("echo-v1-b"), 100, "{t:?}");
}
