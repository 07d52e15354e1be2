//! A/B of two sidecars in one run, same control plane, same echo, rounds
//! interleaved A B, B A, A B … so drift in a shared machine's speed, and
//! whatever a run leaves behind for the next, hit both equally. Two comparisons: this build against another build
//! (`MESH_BENCH_BASELINE_PROXY`, say the commit before a change), and this
//! build with telemetry at its defaults against the same build with
//! `MESH_PROXY_TELEMETRY=off`. Reports medians per side and their ratio,
//! with every round's figure.

use crate::data::{self, Measured, Topology};
use crate::report;
use anyhow::{Context, Result};
use serde_json::json;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Path to the other build's mesh-proxy.
pub(crate) const BASELINE_ENV: &str = "MESH_BENCH_BASELINE_PROXY";

/// A named figure read from one measurement.
type Metric = (&'static str, fn(&Measured) -> f64);

/// Rounds per side, an even number so each side runs as many rounds on
/// its early pair as on its late one.
const ROUNDS: usize = 6;

struct Load {
    name: &'static str,
    proto: &'static str,
    rate: u64,
}

const LOADS: [Load; 4] = [
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
    Load {
        name: "gRPC at 1,000 rps",
        proto: "grpc",
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

/// One side of a comparison.
pub(crate) struct Side {
    label: &'static str,
    proxy: PathBuf,
    env: &'static [(&'static str, &'static str)],
}

/// What is compared, and how to say so.
pub(crate) struct Comparison {
    a: Side,
    b: Side,
    command: &'static str,
    what: &'static str,
    /// Pairs speak mTLS to each other (plaintext otherwise).
    mtls: bool,
}

/// The other build's mesh-proxy, from `MESH_BENCH_BASELINE_PROXY`.
pub(crate) fn baseline() -> Result<PathBuf> {
    let base = PathBuf::from(
        std::env::var_os(BASELINE_ENV)
            .with_context(|| format!("set {BASELINE_ENV} to the other build's mesh-proxy"))?,
    );
    anyhow::ensure!(
        base.is_file(),
        "{BASELINE_ENV}={} is not a file",
        base.display()
    );
    Ok(base)
}

/// This build against `MESH_BENCH_BASELINE_PROXY`.
pub(crate) fn builds() -> Result<Comparison> {
    let base = baseline()?;
    Ok(Comparison {
        a: Side {
            label: "this",
            proxy: meshctl::procs::binary("mesh-proxy"),
            env: &[],
        },
        b: Side {
            label: "base",
            proxy: base,
            env: &[],
        },
        command: "MESH_BENCH_BASELINE_PROXY=<other mesh-proxy> cargo run --release -p mesh-benches -- ab",
        what: "Plaintext sidecar pairs of this build and of the baseline build",
        mtls: false,
    })
}

/// This build's telemetry at its defaults (metrics, TCP counters and
/// aggregates reported every 5 s; no trace collector, no access log)
/// against the same build with telemetry off.
pub(crate) fn telemetry() -> Comparison {
    let proxy = meshctl::procs::binary("mesh-proxy");
    Comparison {
        a: Side {
            label: "telemetry on",
            proxy: proxy.clone(),
            env: &[],
        },
        b: Side {
            label: "telemetry off",
            proxy,
            env: &[("MESH_PROXY_TELEMETRY", "off")],
        },
        command: "cargo run --release -p mesh-benches -- telemetry",
        what: "Plaintext sidecar pairs of this build, telemetry at its defaults and MESH_PROXY_TELEMETRY=off",
        mtls: false,
    }
}

/// This build with two workers (thread per core, SO_REUSEPORT listeners)
/// against the same build with one.
pub(crate) fn workers() -> Comparison {
    let proxy = meshctl::procs::binary("mesh-proxy");
    Comparison {
        a: Side {
            label: "2 workers",
            proxy: proxy.clone(),
            env: &[("MESH_PROXY_WORKERS", "2")],
        },
        b: Side {
            label: "1 worker",
            proxy,
            env: &[("MESH_PROXY_WORKERS", "1")],
        },
        command: "cargo run --release -p mesh-benches -- workers",
        what: "Plaintext sidecar pairs of this build, MESH_PROXY_WORKERS=2 and =1",
        mtls: false,
    }
}

/// This build's TLS crypto (ring) against `MESH_BENCH_BASELINE_PROXY`
/// built with `--features aws-lc`, both pairs over mTLS.
pub(crate) fn providers() -> Result<Comparison> {
    let base = baseline()?;
    Ok(Comparison {
        a: Side {
            label: "ring",
            proxy: meshctl::procs::binary("mesh-proxy"),
            env: &[],
        },
        b: Side {
            label: "aws-lc-rs",
            proxy: base,
            env: &[],
        },
        command: "cargo build --release -p mesh-proxy --features aws-lc --target-dir target/aws-lc && MESH_BENCH_BASELINE_PROXY=target/aws-lc/release/mesh-proxy cargo run --release -p mesh-benches -- providers",
        what: "mTLS sidecar pairs of this build (ring) and of the same source built with aws-lc-rs",
        mtls: true,
    })
}

/// A sidecar pair of one side.
async fn pair(
    dir: &std::path::Path,
    echo: std::net::SocketAddr,
    side: &Side,
    mtls: bool,
) -> Result<Topology> {
    data::mesh(dir, echo, mtls, &side.proxy, side.label, side.env, &[]).await
}

/// Runs the comparison; returns the markdown section and the JSON.
pub(crate) async fn run(quick: bool, cmp: Comparison) -> Result<(String, serde_json::Value)> {
    let Comparison {
        a: sa,
        b: sb,
        command,
        what,
        mtls,
    } = cmp;
    let dir = std::env::temp_dir().join(format!("mesh-bench-ab-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (rounds, d) = if quick {
        (1, Duration::from_millis(500))
    } else {
        (ROUNDS, Duration::from_secs(4))
    };
    let (_echo, echo) = data::echo(&dir).await?;
    // Two pairs per side, started A B B A: on this machine a pair's place
    // in the start order showed up as a few percent of its own, so each
    // side runs half its rounds on an early pair and half on a late one.
    let a1 = pair(&dir.join("a1"), echo, &sa, mtls).await?;
    let b1 = pair(&dir.join("b1"), echo, &sb, mtls).await?;
    let b2 = pair(&dir.join("b2"), echo, &sb, mtls).await?;
    let a2 = pair(&dir.join("a2"), echo, &sa, mtls).await?;
    for t in [&a1, &b1, &b2, &a2] {
        t.http(500, Duration::from_millis(300)).await?;
        t.grpc(500, Duration::from_millis(300)).await?;
    }
    let mut md = format!(
        "Machine: {}\n\nCommand: `{command}`\n\n{what}, two pairs per side started A B B A, one echo; {rounds} interleaved rounds (order alternating, pairs alternating) of {} s per load; 16 connections. CPU is per proxy, mean of the pair.\n\n| load | metric | {a} (median) | {b} (median) | {a}/{b} | {a}, per round | {b}, per round |\n|---|---|---|---|---|---|---|\n",
        report::machine(),
        d.as_secs_f64(),
        a = sa.label,
        b = sb.label,
    );
    let mut rows = Vec::new();
    for l in &LOADS {
        let (mut ma, mut mb) = (Vec::new(), Vec::new());
        // A B, B A, A B …: whichever side runs first in a round pays for
        // whatever the previous load left behind, so the order alternates.
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                (&a1, &b1)
            } else {
                (&a2, &b2)
            };
            if round % 2 == 0 {
                ma.push(one(a, l, d).await?);
                mb.push(one(b, l, d).await?);
            } else {
                mb.push(one(b, l, d).await?);
                ma.push(one(a, l, d).await?);
            }
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
            let (xa, xb) = (report::median(va.clone()), report::median(vb.clone()));
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
            rows.push(json!({"load": l.name, "metric": metric, "a": sa.label, "b": sb.label, "a_rounds": va, "b_rounds": vb, "ratio_of_medians": xa / xb}));
        }
        eprintln!("ab: {} done", l.name);
    }
    drop((a1, b1, b2, a2));
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        md,
        json!({"machine": report::machine(), "rounds": rounds, "seconds_per_round": d.as_secs_f64(), "rows": rows}),
    ))
}
