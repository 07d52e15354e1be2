//! A slow apply never drops a live instance. Issue 12 saw every lease expire
//! while a large apply held the control plane's writer: heartbeats waited
//! for it, and sidecars ran snapshots with no endpoints in between. Later
//! the sidecars' own conversion of the 10,000-split snapshot held their one
//! worker, so their beats stopped for most of a second, leases lapsed and
//! each re-registration republished (one CI run in three). Here a
//! 10,000-split file is applied (much longer than one 900 ms lease in this
//! build) while two heartbeating instances serve traffic with retries off:
//! the client sidecar keeps both endpoints in every snapshot it runs, the
//! control plane publishes exactly one new version (an expiry and a
//! re-registration would each be another), every sidecar ACKs it, and no
//! request fails.

mod support;

use meshctl::traffic::Steady;
use std::time::{Duration, Instant};
use support::{DEADLINE, Mesh, assert_none_failed};

/// The lease the harness's control plane runs with (three 300 ms beats).
const LEASE: Duration = Duration::from_millis(900);

fn many_splits(n: usize) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: s{i}\nspec:\n  service: svc{i}\n  backends:\n  - service: svc{i}-v1\n    weight: 1\n"
        ));
    }
    yaml
}

/// The ids of the endpoints the sidecar at `admin` runs for `cluster`.
async fn endpoints(admin: std::net::SocketAddr, cluster: &str) -> Vec<String> {
    let (_, dump) = meshctl::traffic::get(admin, "/config_dump").await.unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let mut ids: Vec<String> = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == cluster)
        .flat_map(|c| c["endpoints"].as_array().unwrap())
        .map(|e| e["instance_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_apply_keeps_every_instance_in_the_endpoint_set() {
    let mesh = Mesh::start("large-apply").await;
    let _a = mesh.instance("echo", "v1", "echo-a", &[], None).await;
    let _b = mesh.instance("echo", "v1", "echo-b", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;
    mesh.no_retries("echo", "round-robin", &client).await;
    let cluster = "echo.default";
    let both = vec!["echo-a".to_string(), "echo-b".to_string()];
    assert_eq!(endpoints(client.admin, cluster).await, both);
    let before = mesh.version().await;

    let steady = Steady::start(client.outbound, "echo", 2, 100_000);
    let file = many_splits(10_000);
    let started = Instant::now();
    let apply = {
        let path = mesh.dir.0.join("many.yaml");
        std::fs::write(&path, file).unwrap();
        let admin = mesh.admin();
        let cmd = tokio::process::Command::new(meshctl::procs::binary("meshctl"))
            .arg("--control")
            .arg(&admin.url)
            .arg("--credentials")
            .arg(&admin.credentials)
            .arg("apply")
            .arg("-f")
            .arg(path)
            .output();
        tokio::spawn(cmd)
    };
    // What the client sidecar runs, sampled all through the apply.
    let mut samples = 0;
    while !apply.is_finished() {
        let seen = endpoints(client.admin, cluster).await;
        assert_eq!(seen, both, "an instance left during the apply");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = apply.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("measured: 10,000-split apply through meshctl {took:?}, {samples} samples");
    assert!(
        took > LEASE,
        "the apply ({took:?}) was quicker than one lease: this test shows nothing; grow the file"
    );

    // One new version: the apply. Every sidecar ACKs it.
    let after = mesh.version().await;
    assert_eq!(
        after,
        before + 1,
        "something besides the apply was published"
    );
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let out = mesh.meshctl(&["proxy-status", "-o", "json"]).await;
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let proxies = st["proxies"].as_array().cloned().unwrap_or_default();
        let want = after.to_string();
        if proxies.len() == 3 && proxies.iter().all(|p| p["ackedVersion"] == want.as_str()) {
            assert_eq!(mesh.version().await, after, "{st:#}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "not every sidecar ACKed {after}: {st:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(endpoints(client.admin, cluster).await, both);
    let outcomes = steady.finish().await;
    assert!(outcomes.len() > 10, "{} requests", outcomes.len());
    assert_none_failed(&outcomes, "during a long apply");
}
