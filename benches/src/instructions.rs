//! Instructions per proxied request, counted by callgrind: the client-side
//! sidecar of a plaintext pair runs under `valgrind --tool=callgrind`
//! through a short and a long fixed-rate run, one connection, of HTTP/1.1
//! and of gRPC unary calls (h2). The
//! difference in instructions over the difference in requests (counted at
//! the echo app, so none is missed or double-counted) is what one request
//! costs, with start-up and shutdown cancelled out. Instruction counts do
//! not depend on what else the machine is doing, so this is the precise
//! A/B for small changes where wall-clock CPU drowns in noise: this build
//! against `MESH_BENCH_BASELINE_PROXY`, repetitions alternating which side
//! goes first.

use crate::ab::BASELINE_ENV;
use crate::data;
use crate::report;
use anyhow::{Context, Result};
use serde_json::json;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Requests per second of the measured runs: slow enough for a proxy
/// under callgrind (about 50× slower than native) to keep up.
pub(crate) const RATE: u64 = 100;

/// The request count at the echo app.
async fn arrivals(echo: SocketAddr) -> Result<u64> {
    let (_, body) = meshctl::traffic::get(echo, "/admin/stats").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["requests"]
        .as_u64()
        .context("echo /admin/stats has requests")
}

/// The total instruction count callgrind wrote to `file`.
pub(crate) fn total_instructions(file: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no instruction total in {}", file.display()))
}

/// What the measured runs send.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Load {
    Http1,
    Grpc,
}

impl Load {
    fn label(self) -> &'static str {
        match self {
            Load::Http1 => "HTTP/1.1",
            Load::Grpc => "gRPC unary (h2)",
        }
    }
}

/// One client sidecar's lifetime under `valgrind` with `tool_args`,
/// serving `secs` of `load` at `RATE`: the requests the echo app counted.
pub(crate) async fn under_valgrind(
    dir: &Path,
    echo: SocketAddr,
    (proxy, load): (&Path, Load),
    label: &'static str,
    secs: f64,
    tool_args: &[String],
) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut wrapper = vec!["valgrind".to_string()];
    wrapper.extend_from_slice(tool_args);
    let t = data::mesh(dir, echo, false, proxy, label, &[], &wrapper).await?;
    let before = arrivals(echo).await?;
    let duration = Duration::from_secs_f64(secs);
    let run = match load {
        Load::Http1 => {
            let url = format!("http://{}/", t.http_addr());
            crate::load::oha(None, &url, Some("echo"), RATE, 1, duration).await?
        }
        Load::Grpc => crate::load::grpc(t.grpc_addr(), Some("echo"), RATE, 1, duration).await?,
    };
    anyhow::ensure!(run.errors == 0, "{label}: {} requests failed", run.errors);
    let requests = arrivals(echo).await? - before;
    t.stop().await;
    Ok(requests)
}

/// One client sidecar's lifetime under callgrind, serving `secs` of load:
/// (instructions, requests).
async fn lifetime(
    dir: &Path,
    echo: SocketAddr,
    proxy: (&Path, Load),
    label: &'static str,
    secs: f64,
) -> Result<(u64, u64)> {
    let out = dir.join("callgrind.out");
    let args = [
        "--tool=callgrind".to_string(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    let requests = under_valgrind(dir, echo, proxy, label, secs, &args).await?;
    Ok((total_instructions(&out)?, requests))
}

/// Instructions per request of `proxy`: the long run's extra instructions
/// over its extra requests.
async fn per_request(
    dir: &Path,
    echo: SocketAddr,
    proxy: (&Path, Load),
    label: &'static str,
    (short, long): (f64, f64),
) -> Result<f64> {
    let (i1, n1) = lifetime(&dir.join("short"), echo, proxy, label, short).await?;
    let (i2, n2) = lifetime(&dir.join("long"), echo, proxy, label, long).await?;
    anyhow::ensure!(n2 > n1, "{label}: the long run served no more requests");
    Ok((i2 as f64 - i1 as f64) / (n2 - n1) as f64)
}

/// Runs the comparison; returns the markdown section and the JSON.
pub(crate) async fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let base = crate::ab::baseline()?;
    let this = meshctl::procs::binary("mesh-proxy");
    let (reps, secs) = if quick {
        (1, (0.5, 1.5))
    } else {
        (2, (2.0, 12.0))
    };
    let dir = std::env::temp_dir().join(format!("mesh-bench-instr-{}", std::process::id()));
    let (_echo, echo) = data::echo(&dir).await?;
    let loads = [Load::Http1, Load::Grpc];
    // this and base, per load, per repetition.
    let mut seen = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for rep in 0..reps {
        for (l, load) in loads.into_iter().enumerate() {
            let d = dir.join(format!("rep-{rep}-{l}"));
            // Which side goes first alternates; callgrind does not care,
            // but whatever a run leaves in the echo app or the kernel is
            // shared.
            for side in report::abba(rep) {
                let (proxy, label) = if !side {
                    (&this, "this")
                } else {
                    (&base, "base")
                };
                let n = per_request(&d.join(label), echo, (proxy, load), label, secs).await?;
                seen[l][usize::from(side)].push(n);
            }
        }
        eprintln!("instructions: repetition {} done", rep + 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut md = format!(
        "Machine: {}\n\nCommand: `{BASELINE_ENV}=<other mesh-proxy> cargo run --release -p mesh-benches -- instructions`\n\nThe client sidecar of a plaintext pair under `valgrind --tool=callgrind`, HTTP/1.1 and gRPC unary calls at {RATE} rps over one connection for {} s and for {} s, each in its own sidecar lifetime; instructions per request = the difference in instructions over the difference in requests counted at the echo app. {reps} repetitions, alternating which side goes first.\n\n| load | build | instructions per request (mean) | per repetition |\n|---|---|---|---|\n",
        report::machine(),
        secs.0,
        secs.1
    );
    let mut json_loads = serde_json::Map::new();
    for (l, load) in loads.into_iter().enumerate() {
        let [a, b] = &seen[l];
        let (ma, mb) = (mean(a), mean(b));
        let _ = writeln!(md, "| {} | this | {ma:.0} | {} |", load.label(), fmt(a));
        let _ = writeln!(md, "| {} | base | {mb:.0} | {} |", load.label(), fmt(b));
        let _ = writeln!(md, "| {} | this/base | {:.3}× | |", load.label(), ma / mb);
        json_loads.insert(
            format!("{load:?}"),
            json!({"this": a, "base": b, "ratio": ma / mb}),
        );
    }
    Ok((
        md,
        json!({"machine": report::machine(), "rate": RATE, "seconds": [secs.0, secs.1], "loads": json_loads}),
    ))
}
