//! `meshctl release shift` under steady load: no request fails, and once the
//! client sidecar runs the new config no request reaches v1.

mod support;

use meshctl::traffic::{Steady, burst};
use std::time::Instant;
use support::Mesh;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_to_100_percent_under_load_fails_nothing() {
    let (mesh, _instances, client) = Mesh::two_versions("shift", "100", "0").await;
    let outbound = client.outbound;

    let steady = Steady::start(outbound, "echo", 4, 50_000);
    // Real traffic before the shift, so the shift lands mid-stream.
    let before = burst(outbound, "echo", 300, 2).await;
    assert_eq!(
        before.count("v1"),
        300,
        "before the shift everything goes to v1: {before:?}"
    );

    let stdout = mesh.shift_echo_v2("100").await;
    assert!(
        stdout.contains("echo-v2 100%") && stdout.contains("echo-v1 0%"),
        "{stdout}"
    );
    mesh.sync(&client).await;
    let applied = Instant::now();

    let after = burst(outbound, "echo", 300, 2).await;
    let outcomes = steady.finish().await;
    assert_eq!(after.failures, 0, "{:?}", after.sample_errors);
    assert_eq!(
        after.count("v2"),
        300,
        "after the shift everything goes to v2: {after:?}"
    );
    support::assert_none_failed(&outcomes, "during the shift");
    let late: Vec<_> = outcomes.iter().filter(|o| o.started > applied).collect();
    assert!(
        late.len() >= 10,
        "too little traffic after the shift to judge: {}",
        late.len()
    );
    let stray = late
        .iter()
        .filter(|o| o.version.as_deref() != Some("v2"))
        .count();
    assert_eq!(
        stray,
        0,
        "{stray} of {} requests after the shift reached v1",
        late.len()
    );
    assert!(
        outcomes.iter().any(|o| o.version.as_deref() == Some("v1")),
        "steady traffic saw v1 before the shift"
    );
}
