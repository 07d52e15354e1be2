//! The demo's second half: the release controller does what the first half
//! did by hand. A good v2 is walked 10 → 50 → 100% and promoted with nobody
//! watching; then v2 starts failing a third of its requests, and the next
//! release of it is rolled back on its own, with the reason.

use crate::cli;
use crate::client::{Control, admin, explain};
use crate::traffic::Steady;
use crate::up::Mesh;
use anyhow::{Context, Result, bail};
use mesh_proto::v1 as pb;
use std::net::SocketAddr;
use std::time::Duration;

/// Each step's time before its check: a few of the sidecars' 1 s reports.
const INTERVAL_MS: u64 = 3_000;

fn spec() -> pb::ReleaseSpec {
    pb::ReleaseSpec {
        service: "echo".into(),
        namespace: "default".into(),
        stable: "echo-v1".into(),
        canary: "echo-v2".into(),
        steps: vec![10, 50, 100],
        interval_ms: INTERVAL_MS,
        ..Default::default()
    }
}

/// Runs one release to its end, a line per step and check; its last state.
async fn release(control: &Control) -> Result<pb::Release> {
    let mut client = admin(control).await?;
    let started = client
        .start_release(pb::StartReleaseRequest {
            spec: Some(spec()),
            file: None,
        })
        .await
        .map_err(explain)?
        .into_inner();
    if !started.problems.is_empty() {
        bail!("{}", cli::render_problems(&started.problems));
    }
    let mut seen = 0;
    // Bounded: three steps and their checks, with room for a slow machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = crate::release::fetch(control, "default", "echo")
            .await?
            .and_then(|r| r.release)
            .context("the release vanished")?;
        for c in r.checks.iter().skip(seen) {
            println!("  {:>3}% {:<8} {}", c.canary_weight, c.outcome, c.detail);
        }
        seen = r.checks.len();
        if crate::release::finished(&r.phase) {
            println!("  → {}: {}", r.phase, r.reason);
            return Ok(r);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the release did not end within 90 s: {} ({})",
                r.phase,
                r.reason
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The automated half of the demo.
pub async fn story(
    mesh: &Mesh,
    control: &Control,
    outbound: SocketAddr,
    admin_addr: SocketAddr,
) -> Result<()> {
    cli::shift(control, "default", "echo", "echo-v2", 0).await?;
    println!(
        "\n▶ automated release: `meshctl release start echo --canary echo-v2 --steps 10,50,100 --interval 3s`\n  (each step checks v2's own success rate ≥ 99% and p99 ≤ 500 ms over ≥ 20 requests)"
    );
    let steady = Steady::start(outbound, "echo", 2, 1_000_000);
    let good = release(control).await?;
    let v2 = mesh
        .replica("echo-v2")
        .and_then(|r| r.app.as_ref())
        .map(|(_, addr)| addr.clone())
        .context("demo mesh has an echo-v2 app")?;
    let addr: SocketAddr = v2.parse()?;
    // Back to v1 first (once the client runs it), then v2 goes bad.
    let version = cli::shift(control, "default", "echo", "echo-v2", 0).await?;
    crate::procs::wait_config(admin_addr, version, Duration::from_secs(10)).await?;
    let (code, body) = crate::traffic::get(addr, "/admin/errors?rate=0.3").await?;
    if code != 200 {
        bail!("echo-v2 did not take the error rate: {code} {body}");
    }
    println!("\n▶ v2 now fails 30% of its requests; the same release again");
    let bad = release(control).await?;
    let outcomes = steady.finish().await;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    let st = cli::status(control, "default", "echo").await?;
    let weights: Vec<String> = st
        .backends
        .iter()
        .map(|b| format!("{} {}%", b.service, b.weight))
        .collect();
    println!(
        "\nautomated releases: the good v2 {}, the bad v2 {}; weights now {}; {} of {} background requests failed (the canary shield sent each request the bad v2 failed once more, to v1)",
        good.phase,
        bad.phase,
        weights.join(", "),
        failed,
        outcomes.len()
    );
    if good.phase != "Promoted" || bad.phase != "RolledBack" {
        bail!("expected the good v2 promoted and the bad one rolled back");
    }
    Ok(())
}
