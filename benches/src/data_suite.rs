//! Runs the data-plane suite and renders its tables and targets.

use crate::data::{self, Measured, Topology};
use crate::report;
use anyhow::Result;
use serde_json::json;
use std::fmt::Write;
use std::time::Duration;

/// Fixed rates (requests/s); 1,000 is where the targets and peer figures sit.
const RATES: [u64; 3] = [500, 1000, 2000];

struct Row {
    topo: &'static str,
    proto: &'static str,
    rate: u64,
    m: Measured,
}

/// Runs everything; returns the markdown section and the JSON.
pub(crate) async fn run(quick: bool) -> Result<(String, serde_json::Value)> {
    let dir = std::env::temp_dir().join(format!("mesh-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (fixed, flat) = if quick {
        (Duration::from_millis(1000), Duration::from_millis(1000))
    } else {
        (Duration::from_secs(10), Duration::from_secs(5))
    };
    let (_echo, echo) = data::echo(&dir).await?;
    let proxy = meshctl::procs::binary("mesh-proxy");
    let mut topologies: Vec<Topology> = vec![
        data::direct(echo),
        data::mesh(&dir.join("mesh"), echo, false, &proxy, "mesh", &[], &[]).await?,
        data::mesh(
            &dir.join("mesh-mtls"),
            echo,
            true,
            &proxy,
            "mesh-mtls",
            &[],
            &[],
        )
        .await?,
    ];
    topologies.push(data::pair(&dir.join("nginx"), echo, "nginx").await?);
    topologies.push(data::pair(&dir.join("haproxy"), echo, "haproxy").await?);
    let mut rows = Vec::new();
    for t in &topologies {
        // Warm up connections and pools outside the measurement.
        t.http(500, Duration::from_millis(300)).await?;
        t.grpc(500, Duration::from_millis(300)).await?;
        for &rate in &RATES {
            let m = t.http(rate, fixed).await?;
            eprintln!(
                "{:<8} http  {rate:>5} rps  p50 {:.3} p99 {:.3} ms  errors {}",
                t.name, m.run.p50, m.run.p99, m.run.errors
            );
            rows.push(Row {
                topo: t.name,
                proto: "http",
                rate,
                m,
            });
            let m = t.grpc(rate, fixed).await?;
            eprintln!(
                "{:<8} grpc  {rate:>5} rps  p50 {:.3} p99 {:.3} ms  errors {}",
                t.name, m.run.p50, m.run.p99, m.run.errors
            );
            rows.push(Row {
                topo: t.name,
                proto: "grpc",
                rate,
                m,
            });
        }
        for proto in ["http", "grpc"] {
            let m = if proto == "http" {
                t.http(0, flat).await?
            } else {
                t.grpc(0, flat).await?
            };
            eprintln!(
                "{:<8} {proto}  max {:.0} rps  errors {}",
                t.name, m.run.rps, m.run.errors
            );
            rows.push(Row {
                topo: t.name,
                proto,
                rate: 0,
                m,
            });
        }
    }
    // Our path must not fail a single request; a peer's failures are shown, not fatal.
    let ours: u64 = rows
        .iter()
        .filter(|r| r.topo.starts_with("mesh") || r.topo == "direct")
        .map(|r| r.m.run.errors)
        .sum();
    anyhow::ensure!(ours == 0, "{ours} requests failed through mesh or direct");
    let rss: Vec<(&str, Vec<f64>)> = topologies.iter().map(|t| (t.name, t.peak_rss())).collect();
    let md = render(&rows, &rss, fixed, flat);
    let json = json!({
        "machine": report::machine(),
        "command": "cargo run --release -p mesh-benches -- data",
        "connections": data::CONNS,
        "rows": rows.iter().map(|r| json!({
            "path": r.topo, "protocol": r.proto, "rate": r.rate,
            "p50_ms": r.m.run.p50, "p90_ms": r.m.run.p90, "p99_ms": r.m.run.p99, "p999_ms": r.m.run.p999,
            "requests": r.m.run.requests, "rps": r.m.run.rps, "cpu_s_per_1k_per_proxy": r.m.cpu_per_1k,
        })).collect::<Vec<_>>(),
        "peak_rss_mib": rss.iter().map(|(n, v)| json!({"path": n, "per_proxy": v})).collect::<Vec<_>>(),
    });
    drop(topologies);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((md, json))
}

fn find<'a>(rows: &'a [Row], topo: &str, proto: &str, rate: u64) -> Option<&'a Measured> {
    rows.iter()
        .find(|r| r.topo == topo && r.proto == proto && r.rate == rate)
        .map(|r| &r.m)
}

fn render(rows: &[Row], rss: &[(&str, Vec<f64>)], fixed: Duration, flat: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {}\n\nCommand: `cargo run --release -p mesh-benches -- data`\n\nLoad: {} connections; HTTP/1.1 GET of a 1 KiB body by oha (`-q RATE --latency-correction`); gRPC unary with a 1 KiB payload by the open-loop client in `benches/src/load.rs`. {} s per fixed-rate run, {} s flat out. mesh is the plaintext sidecar pair; mesh-mtls is the same pair with workload certificates (TLS 1.3, strict inbound); one worker per sidecar; nginx one worker, haproxy one thread. \"Added\" is the path minus direct in the same run.\n",
        report::machine(),
        data::CONNS,
        fixed.as_secs_f64(),
        flat.as_secs_f64()
    );
    for proto in ["http", "grpc"] {
        let _ = writeln!(
            s,
            "### {} at fixed rates\n\n| path | rate | p50 ms | p90 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | CPU-s / 1k req / proxy | errors |\n|---|---|---|---|---|---|---|---|---|---|---|",
            if proto == "http" {
                "HTTP/1.1"
            } else {
                "gRPC unary"
            }
        );
        for rate in RATES {
            let Some(d) = find(rows, "direct", proto, rate) else {
                continue;
            };
            for r in rows.iter().filter(|r| r.proto == proto && r.rate == rate) {
                let m = &r.m.run;
                let added = |x: f64, base: f64| {
                    if r.topo == "direct" {
                        "—".to_string()
                    } else {
                        format!("{:+.3}", x - base)
                    }
                };
                let cpu = if r.topo == "direct" {
                    "—".to_string()
                } else {
                    format!("{:.3}", r.m.cpu_per_1k)
                };
                let _ = writeln!(
                    s,
                    "| {} | {rate} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {cpu} | {} |",
                    r.topo,
                    m.p50,
                    m.p90,
                    m.p99,
                    m.p999,
                    added(m.p50, d.run.p50),
                    added(m.p99, d.run.p99),
                    added(m.p999, d.run.p999),
                    m.errors
                );
            }
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "### Flat out\n\n| path | protocol | requests/s | vs direct | proxy CPU-s / 1k req / proxy | requests per proxy CPU-second | errors |\n|---|---|---|---|---|---|---|"
    );
    for proto in ["http", "grpc"] {
        let d = find(rows, "direct", proto, 0)
            .map(|m| m.run.rps)
            .unwrap_or(f64::NAN);
        for r in rows.iter().filter(|r| r.proto == proto && r.rate == 0) {
            let per_core = if r.topo == "direct" || r.m.cpu_per_1k <= 0.0 {
                "—".to_string()
            } else {
                format!("{:.0}", 1000.0 / r.m.cpu_per_1k)
            };
            let cpu = if r.topo == "direct" {
                "—".to_string()
            } else {
                format!("{:.3}", r.m.cpu_per_1k)
            };
            let _ = writeln!(
                s,
                "| {} | {proto} | {:.0} | {:.2}× | {cpu} | {per_core} | {} |",
                r.topo,
                r.m.run.rps,
                r.m.run.rps / d,
                r.m.run.errors
            );
        }
    }
    let _ = writeln!(
        s,
        "\n### Memory\n\n| path | peak RSS per proxy (MiB) |\n|---|---|"
    );
    for (name, v) in rss.iter().filter(|(n, _)| *n != "direct") {
        let list: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        let _ = writeln!(s, "| {name} | {} |", list.join(", "));
    }
    // Ratios at 1,000 rps and flat out, the figures the issue asks to compare.
    let _ = writeln!(
        s,
        "\n### Ratios (same run)\n\n| protocol | mesh/direct p99 @1k rps | mesh/nginx added p99 @1k rps | mesh/nginx throughput | mesh/nginx CPU per request |\n|---|---|---|---|---|"
    );
    for proto in ["http", "grpc"] {
        let get = |topo: &str, rate: u64| find(rows, topo, proto, rate);
        let (Some(d), Some(m), Some(n)) =
            (get("direct", 1000), get("mesh", 1000), get("nginx", 1000))
        else {
            continue;
        };
        let (Some(mf), Some(nf)) = (get("mesh", 0), get("nginx", 0)) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {proto} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            m.run.p99 / d.run.p99,
            (m.run.p99 - d.run.p99) / (n.run.p99 - d.run.p99),
            mf.run.rps / nf.run.rps,
            mf.cpu_per_1k / nf.cpu_per_1k,
        );
    }
    // What mTLS costs, same run.
    let _ = writeln!(
        s,
        "\n### mTLS vs plaintext (same run)\n\n| protocol | mTLS/plaintext p50 @1k rps | mTLS/plaintext p99 @1k rps | mTLS/plaintext throughput | mTLS/plaintext CPU per request |\n|---|---|---|---|---|"
    );
    for proto in ["http", "grpc"] {
        let get = |topo: &str, rate: u64| find(rows, topo, proto, rate);
        let (Some(p), Some(t), Some(pf), Some(tf)) = (
            get("mesh", 1000),
            get("mesh-mtls", 1000),
            get("mesh", 0),
            get("mesh-mtls", 0),
        ) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {proto} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            t.run.p50 / p.run.p50,
            t.run.p99 / p.run.p99,
            tf.run.rps / pf.run.rps,
            tf.cpu_per_1k / pf.cpu_per_1k,
        );
    }
    // Targets from the benchmark issue, stated against this run.
    let added_p99 = |topo: &str| {
        let d = find(rows, "direct", "http", 1000)?.run.p99;
        Some(find(rows, topo, "http", 1000)?.run.p99 - d)
    };
    let per_core = |topo: &str| find(rows, topo, "http", 0).map(|m| 1000.0 / m.cpu_per_1k);
    let mesh_rss = rss
        .iter()
        .find(|(n, _)| *n == "mesh")
        .map(|(_, v)| v.iter().cloned().fold(0.0, f64::max))
        .unwrap_or(f64::NAN);
    let mesh_cpu = find(rows, "mesh", "http", 1000)
        .map(|m| m.cpu_per_1k)
        .unwrap_or(f64::NAN);
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let (mp99, np99) = (
        added_p99("mesh").unwrap_or(f64::NAN),
        added_p99("nginx").unwrap_or(f64::NAN),
    );
    let tp99 = added_p99("mesh-mtls").unwrap_or(f64::NAN);
    let (mpc, npc) = (
        per_core("mesh").unwrap_or(f64::NAN),
        per_core("nginx").unwrap_or(f64::NAN),
    );
    let _ = writeln!(
        s,
        "\n### Targets (HTTP/1.1, this run)\n\n| target | mesh | nginx pair | status |\n|---|---|---|---|\n| added p99 of a sidecar pair ≤ 0.5 ms at 1,000 rps | {mp99:+.3} ms | {np99:+.3} ms | {} |\n| added p99 no worse than the nginx pair | {mp99:+.3} ms | {np99:+.3} ms | {} |\n| with mTLS, added p99 no worse than the plaintext nginx pair (shared/PEERS.md goal) | {tp99:+.3} ms | {np99:+.3} ms | {} |\n| sidecar peak RSS ≤ 15 MB under load | {mesh_rss:.1} MiB | | {} |\n| ≤ 0.1 CPU-s per 1,000 requests per sidecar (1,000 rps) | {mesh_cpu:.3} | | {} |\n| throughput per core ≥ nginx's | {mpc:.0} req/CPU-s | {npc:.0} req/CPU-s | {} |",
        mark(mp99 <= 0.5),
        mark(mp99 <= np99),
        mark(tp99 <= np99),
        mark(mesh_rss <= 15.0 * 1_000_000.0 / 1_048_576.0),
        mark(mesh_cpu <= 0.1),
        mark(mpc >= npc),
    );
    s
}
