//! `meshctl demo`: the release story end to end. Brings up the demo mesh
//! (echo v1 ×2, echo v2 ×1, a client sidecar), keeps steady traffic flowing,
//! shifts 0 → 10 → 50 → 100% to v2, and shows the v1/v2 share of answers at
//! each step, the number of failed requests (which should be zero), and the
//! golden metrics per version the control plane aggregated. Then the same
//! release automated (`demo_release`): a good v2 promoted unattended, a
//! bad one rolled back on its own.

use crate::cli;
use crate::procs::wait_config;
use crate::traffic::{Steady, burst};
use crate::up::{Mesh, Options};
use anyhow::{Context, Result, bail};
use std::time::Duration;

/// The demo mesh file, embedded so the demo runs from any directory.
pub const DEMO_MESH: &str = include_str!("../../../examples/demo/mesh.yaml");

/// Runs the demo with `per_step` requests measured at each step.
pub async fn run(per_step: usize) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("mesh.yaml");
    std::fs::write(&file, DEMO_MESH)?;
    println!("▶ starting the demo mesh (control plane, echo v1 ×2, echo v2 ×1, client sidecar)…");
    let mesh = Mesh::start(&Options {
        file,
        state_dir: Some(dir.join("state")),
        grpc_addr: "127.0.0.1:0".into(),
        admin_addr: "127.0.0.1:0".into(),
        log_dir: dir.join("logs"),
    })
    .await?;
    let result = story(&mesh, per_step).await;
    println!("\n▶ shutting down…");
    mesh.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn story(mesh: &Mesh, per_step: usize) -> Result<()> {
    println!("{}", mesh.describe());
    let control = mesh.control()?;
    let client_sidecar = mesh.replica("client").context("demo mesh has a client")?;
    let outbound = client_sidecar.sidecar.addr("outbound")?;
    let admin = client_sidecar.sidecar.addr("admin")?;
    // Wait (bounded) until the control plane sees every echo instance ready.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut watch = crate::progress::Slow::new("the echo instances to be ready");
    loop {
        let st = cli::status(&control, "default", "echo").await?;
        let ready: usize = st
            .backends
            .iter()
            .map(|b| b.endpoints.iter().filter(|e| e.ready).count())
            .sum();
        watch.tick(|| format!("{ready} of 3 ready"));
        if ready >= 3 {
            print!("{}", cli::render_status(&st, cli::Output::Table)?);
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "echo instances not ready after 30s:\n{}",
                cli::render_status(&st, cli::Output::Table)?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("\n▶ steady background traffic through the client sidecar ({outbound}, Host: echo)");
    let steady = Steady::start(outbound, "echo", 2, 1_000_000);
    println!(
        "\n{:<22} {:>8} {:>8} {:>7}   share of answers",
        "step", "v1", "v2", "failed"
    );
    for pct in [0u32, 10, 50, 100] {
        let version = cli::shift(&control, "default", "echo", "echo-v2", pct).await?;
        wait_config(admin, version, Duration::from_secs(10)).await?;
        let t = burst(outbound, "echo", per_step, 4).await;
        let (v1, v2) = (t.count("v1"), t.count("v2"));
        let share = v2 as f64 / (v1 + v2).max(1) as f64;
        let bar = "█".repeat((share * 30.0).round() as usize);
        let rest = "░".repeat(30 - (share * 30.0).round() as usize);
        println!(
            "{:<22} {:>8} {:>8} {:>7}   v2 {bar}{rest} {:.1}%",
            format!("shift v2 → {pct}%"),
            v1,
            v2,
            t.failures,
            share * 100.0
        );
    }
    let outcomes = steady.finish().await;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    println!(
        "\nbackground traffic during all shifts: {} requests, {} failed",
        outcomes.len(),
        failed
    );
    let st = cli::status(&control, "default", "echo").await?;
    println!(
        "\n$ meshctl release status echo\n{}",
        cli::render_status(&st, cli::Output::Table)?
    );
    // Golden metrics from the sidecars' telemetry, as the control plane
    // aggregates it (reports arrive every few seconds: wait, bounded).
    let query = crate::stat::Query {
        service: "echo".into(),
        namespace: "default".into(),
        window: "2m".into(),
        direction: "outbound".into(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut watch = crate::progress::Slow::new("the sidecars' telemetry reports");
    let stats = loop {
        let stats = crate::stat::fetch(&control, &query).await?;
        let has_v2 = stats.rows.iter().any(|r| r.version == "v2");
        watch.tick(|| "no v2 answers counted yet".into());
        if has_v2 || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "\n$ meshctl stat echo --direction outbound --window 2m\n{}",
        crate::stat::render(&stats, cli::Output::Table)?
    );
    if failed > 0 {
        bail!("{failed} requests failed during the release");
    }
    crate::demo_release::story(mesh, &control, outbound, admin).await
}
