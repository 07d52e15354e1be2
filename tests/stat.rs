//! The Mixer-style view: sidecars stream aggregates to the control plane and
//! `meshctl stat` reports what the load generator saw. With echo failing
//! 10% of requests at random: success 90% ± 2 points (and exactly the
//! failures the generator counted), RPS within 10% of the offered rate, and
//! p50/p95/p99 in the load generator's latency bucket or the next one. The
//! latencies are spread (60% at 30 ms, 37% at 150 ms, 3% at 1.2 s: far
//! above the mesh's own few milliseconds) so the three quantiles fall in
//! buckets far apart, and a wrong one cannot pass.

mod support;

use std::time::{Duration, Instant};
use support::Mesh;
use support::load::{Reply, Shape, open_loop};

/// The sidecar's latency bucket bounds, in ms.
const BOUNDS_MS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

fn bucket(ms: f64) -> usize {
    BOUNDS_MS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(BOUNDS_MS.len())
}

/// Request `i`'s latency at the app: 60% 30 ms, 37% 150 ms, 3% 1.2 s,
/// interleaved so every stretch of the run has the same mix.
fn delay_ms(i: usize) -> u64 {
    match i % 100 {
        0..60 => 30,
        60..97 => 150,
        _ => 1200,
    }
}

fn percentile_ms(replies: &[Reply], p: f64) -> f64 {
    support::load::percentile(replies, p).as_secs_f64() * 1000.0
}

async fn stat(mesh: &Mesh, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["stat", "echo", "-o", "json"];
    all.extend_from_slice(args);
    let out = mesh.meshctl(&all).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn row<'a>(v: &'a serde_json::Value, version: &str) -> &'a serde_json::Value {
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "echo.default" && r["version"] == version)
        .unwrap_or_else(|| panic!("no echo.default/{version:?} row in {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_reports_what_the_load_generator_saw() {
    const RATE: u32 = 250;
    const SECS: u64 = 12;
    let mesh = Mesh::start("stat").await;
    let fast = [("MESH_PROXY_TELEMETRY_INTERVAL_MS", "500")];
    let _echo = mesh
        .instance_with(
            "echo",
            "v1",
            "echo-v1-a",
            &["--error-rate", "0.1"],
            None,
            &fast,
        )
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh.client_with("client-0", &fast).await;

    let started = Instant::now();
    let outbound = client.outbound;
    let load = tokio::spawn(async move {
        open_loop(
            outbound,
            |i| Shape::get("echo").path(&format!("/?delay_ms={}", delay_ms(i))),
            RATE,
            Duration::from_secs(SECS),
        )
        .await
    });
    // Mid-load, the last 5 s: the rate the sidecars saw.
    tokio::time::sleep_until((started + Duration::from_secs(8)).into()).await;
    let asked = Instant::now();
    let live_in = stat(&mesh, &["--window", "5s"]).await;
    let live_out = stat(&mesh, &["--window", "5s", "--direction", "outbound"]).await;
    let sent = load.await.unwrap();
    assert_eq!(sent.len(), RATE as usize * SECS as usize);

    let offered = sent
        .iter()
        .filter(|(t, _)| *t > asked - Duration::from_secs(5) && *t <= asked)
        .count() as f64
        / 5.0;
    for live in [&live_in, &live_out] {
        let rps = row(live, "v1")["rps"].as_f64().unwrap();
        assert!(
            (rps - offered).abs() <= 0.1 * offered,
            "stat says {rps:.1} rps, the generator offered {offered:.1}: {live:#}"
        );
    }

    // After the load: every request and every failure is in the window.
    let replies: Vec<Reply> = sent.into_iter().map(|(_, r)| r).collect();
    let failed = replies.iter().filter(|r| r.status == 500).count() as u64;
    assert_eq!(
        failed + replies.iter().filter(|r| r.status == 200).count() as u64,
        replies.len() as u64
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = loop {
        let v = stat(&mesh, &["--window", "2m"]).await;
        let out = stat(&mesh, &["--window", "2m", "--direction", "outbound"]).await;
        let counted = |v: &serde_json::Value| {
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["version"] == "v1")
                .and_then(|r| r["requests"].as_u64())
        };
        if counted(&v) == Some(replies.len() as u64) && counted(&out) == Some(replies.len() as u64)
        {
            break [v, out];
        }
        assert!(
            Instant::now() < deadline,
            "the window never reached {} requests: {v:#} {out:#}",
            replies.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gen_ms = [50.0, 95.0, 99.0].map(|p| percentile_ms(&replies, p));
    // The three quantiles really are apart: a stat that reported one of
    // them for all three would fail below.
    let gen_buckets = gen_ms.map(bucket);
    assert!(
        gen_buckets[1] >= gen_buckets[0] + 2 && gen_buckets[2] >= gen_buckets[1] + 2,
        "generator p50/p95/p99 {gen_ms:.1?} ms, buckets {gen_buckets:?}"
    );
    for v in &total {
        for version in ["", "v1"] {
            let r = row(v, version);
            assert_eq!(r["failures"].as_u64(), Some(failed), "{v:#}");
            let success = r["successRate"].as_f64().unwrap() * 100.0;
            assert!(
                (success - 90.0).abs() <= 2.0,
                "success {success:.2}% with a 10% error knob"
            );
            for (p, want) in ["p50", "p95", "p99"].iter().zip(gen_ms) {
                let got = r["latencyMs"][p].as_f64().unwrap();
                assert!(
                    bucket(got).abs_diff(bucket(want)) <= 1,
                    "{} {p}: stat {got:.1} ms, generator {want:.1} ms (buckets {} and {})",
                    v["direction"],
                    bucket(got),
                    bucket(want)
                );
            }
        }
    }
    eprintln!(
        "offered {offered:.1} rps; stat in/out {:.1}/{:.1}; failures {failed} of {}; generator p50/p95/p99 {gen_ms:.1?} ms; stat inbound {} outbound {}",
        row(&live_in, "v1")["rps"].as_f64().unwrap(),
        row(&live_out, "v1")["rps"].as_f64().unwrap(),
        replies.len(),
        row(&total[0], "v1")["latencyMs"],
        row(&total[1], "v1")["latencyMs"],
    );

    // The table and `top` show the same rows; bad windows are refused.
    let out = mesh.meshctl(&["stat", "--window", "2m"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("echo.default") && l.contains(" v1 ") && l.contains('%')),
        "{table}"
    );
    let out = mesh
        .meshctl(&["top", "--window", "2m", "--every", "200ms", "--frames", "2"])
        .await;
    let frames = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(frames.matches("\x1b[2J").count(), 2, "{frames}");
    assert_eq!(frames.matches("echo.default").count(), 4, "{frames}");
    let out = mesh.meshctl(&["stat", "ghost"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown service default/ghost"),
        "{err}"
    );
    for (window, problem) in [("11m", "longer than the 600s"), ("soon", "not a duration")] {
        let out = mesh.meshctl(&["stat", "--window", window]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(problem),
            "{window}: {err}"
        );
    }
    let _ = client;
}
