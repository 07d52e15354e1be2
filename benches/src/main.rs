//! mesh-bench: loopback benchmarks with real processes. Every figure is
//! written to benches/results/<suite>.json and to BENCHMARKS.md.
//!
//!   cargo run --release -p mesh-benches -- all          # everything, < 10 min
//!   cargo run --release -p mesh-benches -- all --quick  # CI smoke: every scenario runs; no timings asserted
//!   MESH_BENCH_BASELINE_PROXY=<mesh-proxy> cargo run --release -p mesh-benches -- ab            # A/B, wall clock
//!   MESH_BENCH_BASELINE_PROXY=<mesh-proxy> cargo run --release -p mesh-benches -- instructions  # A/B, callgrind
//!   cargo run --release -p mesh-benches -- allocations   # heap allocations per request (DHAT)
//!   cargo run --release -p mesh-benches -- workers       # two workers against one
//!   cargo run --release -p mesh-benches -- memory        # where a sidecar's resident memory goes
//!   cargo run --release -p mesh-benches -- scale         # the control plane at 10,000 services, sidecars subscribed
//!   MESH_BENCH_BASELINE_PROXY=<aws-lc build> cargo run --release -p mesh-benches -- providers  # ring against aws-lc-rs
//!
//! Needs oha (`cargo install oha --locked`), nginx and haproxy (Debian
//! packages); `benches/setup.sh` installs whatever is missing.

mod ab;
mod allocations;
mod cluster;
mod control;
mod data;
mod data_suite;
mod instructions;
mod intercept;
// The network-namespace pods of the interception tests.
#[path = "../../tests/support/netns.rs"]
mod netns;
#[path = "../../tests/support/pods.rs"]
mod pods;
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/support/tokens.rs"]
mod tokens;
// The Kubernetes API test server of the end-to-end tests.
#[path = "../../tests/support/kube_api/mod.rs"]
mod kube_api;
mod load;
mod memory;
mod peers;
mod redirect;
mod release;
mod report;
mod scale;
mod sys;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(name = "mesh-bench", about = "mesh loopback benchmarks")]
struct Args {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// Control plane: rule-change fan-out to N sidecars, memory at scale,
    /// and a release's rollback reaching real sidecars.
    Control {
        /// Small and fast: proves every scenario runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Control plane at scale: 10,000 services and 100,000 endpoints,
    /// sidecars subscribed to what they call; an endpoint change, a rolling
    /// restart, and 5,000 sidecars connecting at once.
    Scale {
        /// Small and fast: proves every scenario runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Control plane on a cluster: an EndpointSlice change fanned out to N
    /// sidecars, and memory with the cluster in its reflectors.
    Cluster {
        /// Small and fast: proves every scenario runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Data plane: direct vs mesh vs nginx vs haproxy, HTTP/1.1 and gRPC.
    Data {
        /// Small and fast: proves every scenario runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Interception (root): the intercepted path against the explicit one,
    /// and opaque TCP through the sidecar pair against haproxy, pod to pod
    /// in network namespaces.
    Intercept {
        /// Small and fast: proves every scenario runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// This build's sidecar against another build (MESH_BENCH_BASELINE_PROXY),
    /// interleaved rounds in one run.
    Ab {
        /// Small and fast: proves the comparison runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// TLS crypto: this build (ring) against MESH_BENCH_BASELINE_PROXY
    /// built with `--features aws-lc`, mTLS pairs.
    Providers {
        /// Small and fast: proves the comparison runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Instructions per proxied request (callgrind), this build against
    /// MESH_BENCH_BASELINE_PROXY: the precise A/B.
    Instructions {
        /// Small and fast: proves the comparison runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Heap allocations per proxied HTTP/1.1 request (DHAT), by crate and
    /// by our own call sites.
    Allocations {
        /// Small and fast: proves the measurement runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Where an mTLS sidecar's resident memory goes under load, by mapping.
    Memory {
        /// Small and fast: proves the suite runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// The sidecar with two workers against one, same build, interleaved
    /// rounds in one run.
    Workers {
        /// Small and fast: proves the comparison runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Telemetry at its defaults against telemetry off, same build,
    /// interleaved rounds in one run.
    Telemetry {
        /// Small and fast: proves the comparison runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
    /// Data, control and telemetry suites.
    All {
        /// Small and fast: proves every scenario runs; numbers are not recorded.
        #[arg(long)]
        quick: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    meshctl::procs::ensure_built(!cfg!(debug_assertions));
    match args.suite {
        Suite::Control { quick } => control_suite(quick).await,
        Suite::Cluster { quick } => cluster_suite(quick).await,
        Suite::Scale { quick } => scale_suite(quick).await,
        Suite::Data { quick } => data(quick).await,
        Suite::Intercept { quick } => intercept_suite(quick).await,
        Suite::Ab { quick } => compare(quick, "ab", ab::builds()?).await,
        Suite::Telemetry { quick } => compare(quick, "telemetry", ab::telemetry()).await,
        Suite::Workers { quick } => compare(quick, "workers", ab::workers()).await,
        Suite::Providers { quick } => compare(quick, "providers", ab::providers()?).await,
        Suite::Allocations { quick } => {
            publish(quick, "allocations", allocations::run(quick).await?)
        }
        Suite::Memory { quick } => publish(quick, "memory", memory::run(quick).await?),
        Suite::Instructions { quick } => {
            publish(quick, "instructions", instructions::run(quick).await?)
        }
        Suite::All { quick } => {
            data(quick).await?;
            control_suite(quick).await?;
            scale_suite(quick).await?;
            cluster_suite(quick).await?;
            intercept_suite(quick).await?;
            publish(quick, "memory", memory::run(quick).await?)?;
            compare(quick, "telemetry", ab::telemetry()).await
        }
    }
}

async fn compare(quick: bool, name: &str, cmp: ab::Comparison) -> Result<()> {
    publish(quick, name, ab::run(quick, cmp).await?)
}

/// Prints a suite's section; records it (JSON and BENCHMARKS.md) unless quick.
fn publish(quick: bool, name: &str, (md, json): (String, serde_json::Value)) -> Result<()> {
    println!("{md}");
    if !quick {
        report::write_json(name, &json)?;
        report::update_markdown(name, &md)?;
    }
    Ok(())
}

async fn data(quick: bool) -> Result<()> {
    let (md, json) = data_suite::run(quick).await?;
    println!("{md}");
    if quick {
        println!("quick mode: every scenario ran end to end; numbers not recorded");
        return Ok(());
    }
    let path = report::write_json("data", &json)?;
    report::update_markdown("data", &md)?;
    println!("wrote {} and BENCHMARKS.md", path.display());
    Ok(())
}

async fn intercept_suite(quick: bool) -> Result<()> {
    let (md, json) = intercept::run(quick).await?;
    println!("{md}");
    if quick || json.get("skipped").is_some() {
        println!("quick mode or skipped: numbers not recorded");
        return Ok(());
    }
    let path = report::write_json("intercept", &json)?;
    report::update_markdown("intercept", &md)?;
    println!("wrote {} and BENCHMARKS.md", path.display());
    Ok(())
}

async fn scale_suite(quick: bool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mesh-bench-scale-{}", std::process::id()));
    let (services, per, subscribers, changes, connecting) = if quick {
        (200, 10, 50, 4, 200)
    } else {
        (10_000, 10, 1_000, 20, 5_000)
    };
    let r = scale::run(&dir, services, per, subscribers, changes, connecting).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let rows = [
        format!(
            "| one endpoint change of a service every sidecar calls | {} services, {} endpoints | {} sidecars, {} changes | p50 {:.1} ms | p99 {:.1} ms | last sidecar p99 {:.1} ms | {:.0} bytes p50, {:.0} max |",
            r.services,
            r.endpoints,
            r.subscribers,
            r.changes,
            r.p50_ms,
            r.p99_ms,
            r.last_p99_ms,
            r.bytes_p50,
            r.bytes_max
        ),
        format!(
            "| responses at sidecars that do not call the changed service | | | | {} | | |",
            r.unaffected
        ),
        format!(
            "| rolling restart of 100 endpoints, 25 at a time | | {} sidecars | | {:.1} pushes per sidecar (mean) | | {} max |",
            r.subscribers, r.rollout_pushes_mean, r.rollout_pushes_max
        ),
        format!(
            "| sidecars connecting at once, each calling 10 services | | {} sidecars | | first config p50 {:.0} ms | p99 {:.0} ms | |",
            r.connecting, r.first_p50_ms, r.first_p99_ms
        ),
        format!(
            "| control-plane RSS, idle then with them connected | | {} sidecars | | idle {:.1} MiB | connected {:.1} MiB | {:.2}× |",
            r.connecting,
            r.idle_mib,
            r.connected_mib,
            r.connected_mib / r.idle_mib
        ),
        format!(
            "| a real sidecar's RSS after a request to svc-0: on demand here, against holding all of a 10-service mesh | | 1 sidecar | | {:.1} MiB | {:.1} MiB | {:+.1} MiB |",
            r.sidecar_mib,
            r.small_sidecar_mib,
            r.sidecar_mib - r.small_sidecar_mib
        ),
    ];
    record(
        quick,
        "scale",
        &rows,
        "Simulated sidecars over real gRPC (as in the control suite), each subscribed to 10 services: `svc-0`, which every one calls, and 9 others spread over the mesh. An endpoint change is a registration (or deregistration) of one instance of `svc-0` over the Discovery API, timed until each sidecar has applied the response and sent its ACK; registry changes are gathered for 10 ms (`--batch-window-ms`) before they are pushed. Targets: p99 ≤ 50 ms, ≤ 1 KiB per affected sidecar, nothing for the others; a handful of pushes per sidecar for a rolling restart; first config p99 ≤ 1 s and RSS ≤ 2× idle with 5,000 sidecars connecting at once; a sidecar on demand here within 1 MiB of one in a 10-service mesh.",
        "| what | scale | sidecars | | p50 / count | p99 | |\n|---|---|---|---|---|---|---|",
        || {
            json!({
                "services": r.services, "endpoints": r.endpoints, "subscribers": r.subscribers, "changes": r.changes,
                "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "last_p99_ms": r.last_p99_ms,
                "bytes_p50": r.bytes_p50, "bytes_max": r.bytes_max, "unaffected": r.unaffected,
                "rollout_pushes_mean": r.rollout_pushes_mean, "rollout_pushes_max": r.rollout_pushes_max,
                "connecting": r.connecting, "first_p50_ms": r.first_p50_ms, "first_p99_ms": r.first_p99_ms,
                "idle_mib": r.idle_mib, "connected_mib": r.connected_mib,
                "sidecar_mib": r.sidecar_mib, "small_sidecar_mib": r.small_sidecar_mib,
            })
        },
    )
}

async fn cluster_suite(quick: bool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mesh-bench-cluster-{}", std::process::id()));
    let (services, per, subscribers, changes) = if quick {
        (50, 10, 20, 3)
    } else {
        (1000, 10, 1000, 100)
    };
    let r = cluster::run(&dir, services, per, subscribers, changes).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let rows = [
        format!(
            "| an EndpointSlice change fanned out | {} Services, {} endpoints | {} sidecars, {} changes | first p50 {:.1} ms | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms |",
            r.services,
            r.endpoints,
            r.subscribers,
            r.changes,
            r.first_p50_ms,
            r.p50_ms,
            r.p99_ms,
            r.max_ms
        ),
        format!(
            "| control-plane memory, registry from the cluster | {} Services, {} endpoints in its reflectors | {} sidecars subscribed | | RSS {:.1} MiB | peak {:.1} MiB | |",
            r.services, r.endpoints, r.subscribers, r.rss_mib, r.peak_mib
        ),
    ];
    record(
        quick,
        "cluster",
        &rows,
        "mesh-control `--registry kubernetes` against the Kubernetes API test server (tests/support/kube_api), with every Service and EndpointSlice in its reflectors. Timed: from an EndpointSlice change committed in the API server (one endpoint's `ready` flipped; the server sends the watch event as it commits) until the last simulated sidecar has the new version and sends its ACK. Target: p99 ≤ 100 ms at 1,000 sidecars.",
        "| what | scale | | first | p50 / RSS | p99 / peak | max |\n|---|---|---|---|---|---|---|",
        || {
            json!({
                "services": r.services, "endpoints": r.endpoints, "subscribers": r.subscribers, "changes": r.changes,
                "first_p50_ms": r.first_p50_ms, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
                "rss_mib": r.rss_mib, "peak_mib": r.peak_mib,
            })
        },
    )
}

async fn control_suite(quick: bool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mesh-bench-{}", std::process::id()));
    let (sizes, shifts, scale, splits) = if quick {
        (vec![20], 3, (50, 10, 5), 500)
    } else {
        (vec![100, 1000], 30, (1000, 10, 100), 10_000)
    };
    let mut rows = Vec::new();
    let mut fanouts = Vec::new();
    for n in sizes {
        let f = control::fanout(&dir.join(format!("fanout-{n}")), n, shifts).await?;
        let row = format!(
            "| fan-out of one rule change | {} sidecars | {} shifts | first p50 {:.1} ms | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms |",
            f.subscribers, f.shifts, f.first_p50_ms, f.p50_ms, f.p99_ms, f.max_ms
        );
        println!("{row}");
        rows.push(row);
        fanouts.push(json!({"subscribers": f.subscribers, "shifts": f.shifts, "first_p50_ms": f.first_p50_ms, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms, "max_ms": f.max_ms}));
    }
    let m = control::memory(&dir.join("memory"), scale.0, scale.1, scale.2).await?;
    let row = format!(
        "| control-plane memory | {} services, {} endpoints | {} sidecars subscribed | | RSS {:.1} MiB | peak {:.1} MiB | |",
        m.services, m.endpoints, m.subscribers, m.rss_mib, m.peak_mib
    );
    println!("{row}");
    rows.push(row);
    let l = control::large_apply(&dir.join("large-apply"), splits, 20).await?;
    let row = format!(
        "| apply of {} splits, then of one more | {} instances heartbeating every 10 ms, no lease lapsed | {} heartbeats during it | apply {:.0} ms, one more {:.0} ms | heartbeat p50 {:.2} ms | p99 {:.2} ms | max {:.2} ms |",
        l.splits,
        l.instances,
        l.beats,
        l.apply_ms,
        l.one_ms,
        l.beat_p50_ms,
        l.beat_p99_ms,
        l.beat_max_ms
    );
    println!("{row}");
    rows.push(row);
    let r = release::rollback(&dir.join("rollback"), if quick { 2 } else { 20 }).await?;
    let row = format!(
        "| release rollback: command → every sidecar on stable-only weights | {} real sidecars (demo mesh) | {} rounds | | p50 {:.1} ms | | max {:.1} ms |",
        r.sidecars, r.rounds, r.p50_ms, r.max_ms
    );
    println!("{row}");
    rows.push(row);
    let _ = std::fs::remove_dir_all(&dir);
    if quick {
        println!("quick mode: every scenario ran end to end; numbers not recorded");
        return Ok(());
    }
    let result = json!({
        "machine": report::machine(),
        "command": "cargo run --release -p mesh-benches -- control",
        "rollback": {"rounds": r.rounds, "sidecars": r.sidecars, "p50_ms": r.p50_ms, "max_ms": r.max_ms},
        "fanout": fanouts,
        "memory": {"services": m.services, "endpoints": m.endpoints, "subscribers": m.subscribers, "rss_mib": m.rss_mib, "peak_mib": m.peak_mib},
        "large_apply": {"splits": l.splits, "instances": l.instances, "apply_ms": l.apply_ms, "one_ms": l.one_ms, "beats": l.beats, "beat_p50_ms": l.beat_p50_ms, "beat_p99_ms": l.beat_p99_ms, "beat_max_ms": l.beat_max_ms},
    });
    let path = report::write_json("control", &result)?;
    let body = format!(
        "Machine: {}\n\nCommand: `cargo run --release -p mesh-benches -- control`\n\nFan-out: time from the Shift RPC until the last simulated sidecar has the new version and sends its ACK (the control plane's record of every ACK is checked too). Target: p99 ≤ 100 ms at 1,000 sidecars. Rollback: a release started on the demo mesh's real sidecars, then `release rollback` (the transition a failed check makes: persisted, then one push), timed until all four sidecars run the stable-only config (polled every 1 ms).\n\n| what | scale | | first | p50 / RSS | p99 / peak | max |\n|---|---|---|---|---|---|---|\n{}\n",
        report::machine(),
        rows.join("\n")
    );
    report::update_markdown("control", &body)?;
    println!("wrote {} and BENCHMARKS.md", path.display());
    Ok(())
}

/// Prints a suite's rows; unless quick, records them in
/// benches/results/<name>.json (`result`, with the machine and the
/// command added) and in BENCHMARKS.md, under `prose`, as a table with
/// `header`.
fn record(
    quick: bool,
    name: &str,
    rows: &[String],
    prose: &str,
    header: &str,
    result: impl FnOnce() -> serde_json::Value,
) -> Result<()> {
    for row in rows {
        println!("{row}");
    }
    if quick {
        println!("quick mode: every scenario ran end to end; numbers not recorded");
        return Ok(());
    }
    let command = format!("cargo run --release -p mesh-benches -- {name}");
    let mut result = result();
    result["machine"] = json!(report::machine());
    result["command"] = json!(command);
    let path = report::write_json(name, &result)?;
    let body = format!(
        "Machine: {}\n\nCommand: `{command}`\n\n{prose}\n\n{header}\n{}\n",
        report::machine(),
        rows.join("\n")
    );
    report::update_markdown(name, &body)?;
    println!("wrote {} and BENCHMARKS.md", path.display());
    Ok(())
}
