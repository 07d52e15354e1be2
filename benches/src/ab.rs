//! A/B of two sidecar builds in one run: this build's mesh-proxy against
//! another (`MESH_BENCH_BASELINE_PROXY`, say the commit before a change),
//! same control plane, same echo, rounds interleaved A, B, A, B … so drift
//! in a shared machine's speed hits both equally. Reports medians per
//! build and their ratio, with every round's figure.

use crate::data::{self, Measured, Topology};
use crate::report;
use anyhow::{Context, Result};
use serde_json::json;
use std::fmt::Write;
use std::time::Duration;

/// Path to the other build's mesh-proxy.
const BASELINE_ENV: &str = "MESH_BENCH_BASELINE_PROXY";

/// A named figure read from one measurement.
type Metric = (&'static str, fn(&Measured) -> f64);

/// Rounds per build; the median of 5 shrugs off one noisy round.
const ROUNDS: usize = 5;

struct Load {
    name: &'static str,
    proto: &'static str,
    rate: u64,
}

const LOADS: [Load; 3] = [
    Load {
        name: "HTTP/1.1 flat out",
        proto: "http",
        rate: 0,
    },
    Load {
        name: "gRPC flat out",
        proto: "grpc",
        rate: 0,
    },
    Load {
        name: "HTTP/1.1 at 1,000 rps",
        proto: "http",
        rate: 1000,
    },
];

async fn one(t: &Topology, l: &Load, d: Duration) -> Result<Measured> {
    let m = if l.proto == "http" {
        t.http(l.rate, d).await?
    } else {
        t.grpc(l.rate, d).await?
    };
    anyhow::ensure!(
        m.run.errors == 0,
        "{} failed {} requests",
        t.name,
        m.run.errors
    );
    Ok(m)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison; returns the markdown section and the JSON.
pub(crate) async fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let base = std::path::PathBuf::from(
        std::env::var_os(BASELINE_ENV)
            .with_context(|| format!("set {BASELINE_ENV} to the other build's mesh-proxy"))?,
    );
    anyhow::ensure!(
        base.is_file(),
        "{BASELINE_ENV}={} is not a file",
        base.display()
    );
    let dir = std::env::temp_dir().join(format!("mesh-bench-ab-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (rounds, d) = if quick {
        (1, Duration::from_millis(500))
    } else {
        (ROUNDS, Duration::from_secs(4))
    };
    let (_echo, echo) = data::echo(&dir).await?;
    let this = meshctl::procs::binary("mesh-proxy");
    let a = data::mesh(&dir.join("a"), echo, false, &this, "this").await?;
    let b = data::mesh(&dir.join("b"), echo, false, &base, "base").await?;
    for t in [&a, &b] {
        t.http(500, Duration::from_millis(300)).await?;
        t.grpc(500, Duration::from_millis(300)).await?;
    }
    let mut md = format!(
        "Machine: {}\n\nCommand: `{BASELINE_ENV}=<other mesh-proxy> cargo run --release -p mesh-benches -- ab`\n\nTwo plaintext sidecar pairs (this build, the baseline build) on one control plane and one echo; {rounds} interleaved rounds of {} s per load; 16 connections. CPU is per proxy, mean of the pair.\n\n| load | metric | this (median) | base (median) | this/base | this, per round | base, per round |\n|---|---|---|---|---|---|---|\n",
        report::machine(),
        d.as_secs_f64()
    );
    let mut rows = Vec::new();
    for l in &LOADS {
        let (mut ma, mut mb) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ma.push(one(&a, l, d).await?);
            mb.push(one(&b, l, d).await?);
        }
        let metrics: [Metric; 3] = if l.rate == 0 {
            [
                ("requests/s", |m| m.run.rps),
                ("CPU-s / 1k req / proxy", |m| m.cpu_per_1k),
                ("p99 ms", |m| m.run.p99),
            ]
        } else {
            [
                ("p50 ms", |m| m.run.p50),
                ("p99 ms", |m| m.run.p99),
                ("CPU-s / 1k req / proxy", |m| m.cpu_per_1k),
            ]
        };
        for (metric, f) in metrics {
            let va: Vec<f64> = ma.iter().map(f).collect();
            let vb: Vec<f64> = mb.iter().map(f).collect();
            let (xa, xb) = (median(va.clone()), median(vb.clone()));
            let fmt = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.3}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                md,
                "| {} | {metric} | {xa:.3} | {xb:.3} | {:.2}× | {} | {} |",
                l.name,
                xa / xb,
                fmt(&va),
                fmt(&vb)
            );
            rows.push(json!({"load": l.name, "metric": metric, "this": va, "base": vb, "ratio_of_medians": xa / xb}));
        }
        eprintln!("ab: {} done", l.name);
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        md,
        json!({"machine": report::machine(), "rounds": rounds, "seconds_per_round": d.as_secs_f64(), "rows": rows}),
    ))
}
