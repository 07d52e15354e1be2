//! What interception adds, measured apart from everything else it shares
//! with the explicit path: the two paths differ only between the app and
//! its sidecar (a nat rewrite of each packet, and the sidecar reading the
//! original destination on accept), so each difference is measured where
//! it is precise. The kernel's: a request/response ping-pong from an app
//! in a pod with the redirect rules to a listener on the outbound port,
//! through the nat (a virtual IP) against straight to 127.0.0.1, in
//! alternating rounds of many round trips, on blocking threads so little
//! else is timed. The sidecar's: its instructions per request under
//! callgrind on both paths in one lifetime (zeroed and dumped around each
//! run), which the machine's noise cannot move.

use crate::load;
use crate::netns::NetNs;
use crate::pods::{AS_PROXY, Hub, PROXY_UID, Pod};
use crate::report;
use anyhow::{Context, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The ping-pong's listener: the sidecar's outbound port, where the
/// redirect rules send what they catch.
const OUTBOUND_PORT: u16 = 4140;
/// Bytes of a request and of its response: about an HTTP/1.1 GET and its
/// small answer, so each trip is one segment each way as a request is.
const REQUEST: usize = 100;
const RESPONSE: usize = 400;
/// Round trips per round not measured (the connection warming).
const WARM: usize = 200;

/// One path's ping-pong, over every round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trips {
    pub(crate) median_us: f64,
    /// The median over rounds of each round's p99: one round that a
    /// burst of the machine's other work lands on moves a pooled p99 by
    /// tens of µs either way, which is noise, not the path.
    pub(crate) p99_us: f64,
    /// CPU of both ends (the app's thread and the listener's) per trip.
    pub(crate) cpu_us: f64,
}

/// The CPU this thread has run, in ns (the scheduler's own count; with
/// no separate irq accounting it includes the softirq work done on the
/// thread's behalf, which is where loopback delivery runs).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The ping-pong in a pod of its own with the redirect rules: direct
/// (127.0.0.1) and redirected (`virtual_ip`), `rounds` each in ABBA
/// order of `trips` round trips. Returns (direct, redirected).
pub(crate) fn ping_pong(hub: &mut Hub, rounds: usize, trips: usize) -> Result<(Trips, Trips)> {
    let pod = hub.pod("bnat");
    let listener_cpu = listen(&pod.ns, 2 * rounds);
    // No service holds this address: what reaches the listener got there
    // through the nat alone (without it the connection goes to the hub,
    // where nothing answers).
    let redirected: SocketAddr = "10.96.250.1:8080".parse()?;
    let direct: SocketAddr = SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT));
    let name = pod.ns.name.clone();
    let client = std::thread::spawn(move || -> Result<[Samples; 2]> {
        crate::netns::enter(&name);
        let mut paths = [Samples::default(), Samples::default()];
        for nat in (0..rounds).flat_map(report::abba) {
            let to = if nat { redirected } else { direct };
            let (rtts, cpu) = trips_to(to, trips)
                .with_context(|| format!("ping-pong to {to} ({})", what(nat)))?;
            let listener = listener_cpu
                .recv_timeout(Duration::from_secs(30))
                .context("the listener reports its CPU")?;
            let path = &mut paths[nat as usize];
            let mut sorted = rtts;
            sorted.sort_by(f64::total_cmp);
            path.p99s.push(report::percentile(&sorted, 99.0));
            path.rtts.extend(sorted);
            path.cpu_ns += cpu + listener;
        }
        Ok(paths)
    });
    let [d, r] = client
        .join()
        .map_err(|_| anyhow::anyhow!("the ping-pong thread panicked"))??;
    let summary = |mut p: Samples| {
        p.rtts.sort_by(f64::total_cmp);
        Trips {
            median_us: report::percentile(&p.rtts, 50.0),
            p99_us: report::median(p.p99s),
            cpu_us: p.cpu_ns as f64 / 1000.0 / p.rtts.len().max(1) as f64,
        }
    };
    Ok((summary(d), summary(r)))
}

/// One path's round trips (µs), each round's p99, and CPU (ns).
#[derive(Default)]
struct Samples {
    rtts: Vec<f64>,
    p99s: Vec<f64>,
    cpu_ns: u64,
}

fn what(nat: bool) -> &'static str {
    if nat { "redirected" } else { "direct" }
}

/// One connection's measured round trips to `to`: each trip's time (µs)
/// and this thread's CPU (ns) over them.
fn trips_to(to: SocketAddr, trips: usize) -> Result<(Vec<f64>, u64)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (req, mut resp) = ([0x71u8; REQUEST], [0u8; RESPONSE]);
    for _ in 0..WARM {
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
    }
    let mut rtts = Vec::with_capacity(trips);
    let cpu = thread_cpu_ns();
    for _ in 0..trips {
        let t = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let cpu = thread_cpu_ns() - cpu;
    s.shutdown(std::net::Shutdown::Write)?;
    Ok((rtts, cpu))
}

/// The listener on the outbound port of `ns`, on a thread of its own, for
/// `connections` connections one after another: each connection's CPU
/// after its warm-up trips comes back on the channel.
fn listen(ns: &NetNs, connections: usize) -> std::sync::mpsc::Receiver<u64> {
    let name = ns.name.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        crate::netns::enter(&name);
        let listener = TcpListener::bind(("0.0.0.0", OUTBOUND_PORT)).expect("bind 4140");
        let _ = ready_tx.send(());
        for _ in 0..connections {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let (mut req, resp) = ([0u8; REQUEST], [0x72u8; RESPONSE]);
            let mut served = 0usize;
            let mut cpu = 0;
            while s.read_exact(&mut req).is_ok() && s.write_all(&resp).is_ok() {
                served += 1;
                if served == WARM {
                    cpu = thread_cpu_ns();
                }
            }
            let _ = tx.send(thread_cpu_ns().saturating_sub(cpu));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the ping-pong listener binds");
    rx
}

/// Instructions per request of the client sidecar on each path:
/// (explicit, intercepted). Replaces `client`'s sidecar with one under
/// callgrind, which stays for the rest of the run.
pub(crate) async fn instructions(
    hub: &Hub,
    client: &mut Pod,
    server: &Pod,
    dir: &Path,
    quick: bool,
) -> Result<(f64, f64)> {
    if let Some(mut native) = client.procs.pop() {
        native.stop(Duration::from_secs(5)).await;
    }
    // The sidecar runs as its own uid: the profile goes where it may write.
    let out = dir.join("callgrind");
    std::fs::create_dir_all(&out)?;
    let uid: u32 = PROXY_UID.parse()?;
    std::os::unix::fs::chown(&out, Some(uid), Some(uid))?;
    let file = out.join("cg.out");
    let out_arg = format!("--callgrind-out-file={}", file.display());
    let wrapper = ["valgrind", "--tool=callgrind", out_arg.as_str()];
    let env = [("MESH_PROXY_LOG", "warn")];
    hub.sidecar_under(client, "client", "", None, &env, &wrapper)
        .await;
    let vip = hub.wait_service(client, "echo", &[&server.ip]).await;
    let pid = client
        .procs
        .last()
        .and_then(|p| p.pid())
        .context("the profiled sidecar's pid")?;
    let explicit = ("http://127.0.0.1:4140/".to_string(), Some("echo"));
    let intercepted = (format!("http://{vip}:8080/"), None);
    // Slow enough for a sidecar under callgrind (about 50x slower) to keep
    // up; two connections carry about as many requests each as one of
    // the timed rounds' connections does, so per-connection work (the
    // original destination, detection) weighs as much as it does there.
    let (rate, conns) = (crate::instructions::RATE, 2);
    let (reps, secs) = if quick { (1, 1.0) } else { (2, 12.0) };
    let run = |(url, host): &(String, Option<&'static str>), secs: f64| {
        let (url, host, ns) = (url.clone(), *host, client.ns.name.clone());
        async move {
            let d = Duration::from_secs_f64(secs);
            let r = load::oha(Some(&ns), &url, host, rate, conns, d).await?;
            anyhow::ensure!(r.errors == 0, "{url}: {} requests failed", r.errors);
            Ok::<u64, anyhow::Error>(r.requests)
        }
    };
    run(&explicit, 1.0).await?;
    run(&intercepted, 1.0).await?;
    let (mut e, mut i) = (Vec::new(), Vec::new());
    let mut dumps = 0;
    for rep in 0..reps {
        for nat in report::abba(rep) {
            let (path, into) = if nat {
                (&intercepted, &mut i)
            } else {
                (&explicit, &mut e)
            };
            callgrind_control("-z", pid)?;
            let requests = run(path, secs).await?;
            callgrind_control("-d", pid)?;
            dumps += 1;
            let dump = out.join(format!("cg.out.{dumps}"));
            let total = crate::instructions::total_instructions(&dump)?;
            into.push(total as f64 / requests.max(1) as f64);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok((mean(&e), mean(&i)))
}

/// `callgrind_control <verb> <pid>`, which must succeed. As the sidecar's
/// uid: vgdb, which it runs, talks to the profiled process through FIFOs
/// that process made, and from another uid (even root) the exchange
/// stalls.
fn callgrind_control(verb: &str, pid: u32) -> Result<()> {
    let out = std::process::Command::new(AS_PROXY[0])
        .args(&AS_PROXY[1..])
        .args(["timeout", "60", "callgrind_control", verb, &pid.to_string()])
        .output()
        .context("running callgrind_control (valgrind)")?;
    anyhow::ensure!(
        out.status.success(),
        "callgrind_control {verb} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The timed rounds' explicit path, which the parts are weighed against.
pub(crate) struct Explicit {
    /// CPU-s per 1,000 requests per sidecar, and of the client sidecar
    /// its user share.
    pub(crate) cpu_per_1k: f64,
    pub(crate) client_user_per_1k: f64,
    pub(crate) p99_ms: f64,
}

/// The markdown and JSON of the parts, and what they add up to against
/// the explicit path's CPU and p99.
pub(crate) fn report(
    pp: (Trips, Trips),
    rounds: usize,
    trips: usize,
    instr: (f64, f64),
    base: &Explicit,
) -> (String, serde_json::Value) {
    let (d, r) = pp;
    let kernel_us = (r.cpu_us - d.cpu_us).max(0.0);
    // The sidecar's extra instructions as time, at its own user CPU per
    // instruction on the explicit path.
    let ns_per_instr = base.client_user_per_1k * 1e6 / instr.0;
    let user_us = ((instr.1 - instr.0) * ns_per_instr / 1000.0).max(0.0);
    // Per request the pair spends twice a sidecar's CPU.
    let pair_us = 2.0 * base.cpu_per_1k * 1000.0;
    let cpu_ratio = (pair_us + kernel_us + user_us) / pair_us;
    let added_us = (r.median_us - d.median_us)
        .max(r.p99_us - d.p99_us)
        .max(0.0)
        + user_us;
    let p99_ratio = (base.p99_ms * 1000.0 + added_us) / (base.p99_ms * 1000.0);
    let md = format!(
        "The difference alone, measured where it is precise (the two paths are the same from the sidecar's accept on):\n\n| part | explicit | intercepted | added |\n|---|---|---|---|\n| app ↔ listener ping-pong ({REQUEST} B / {RESPONSE} B, {rounds}×2 rounds of {trips} trips, ABBA): median round trip | {:.1} µs | {:.1} µs | {:+.1} µs |\n| the same, p99 round trip (median of the rounds') | {:.1} µs | {:.1} µs | {:+.1} µs |\n| the same, CPU per trip (both ends) | {:.2} µs | {:.2} µs | {:+.2} µs |\n| client sidecar under callgrind, instructions per request | {:.0} | {:.0} | {:+.0} ({:.3}×) |\n\nAdded up against the explicit path of the timed rounds (the pair's CPU {pair_us:.0} µs per request, p99 {:.3} ms): the kernel's {kernel_us:.2} µs plus the sidecar's {user_us:.2} µs (its extra instructions at {ns_per_instr:.2} ns each) make interception's CPU per request **{cpu_ratio:.3}×** the explicit path's, and the larger of the median and p99 round-trip differences plus the sidecar's puts its p99 at **{p99_ratio:.3}×** (target ≤ 1.05 both).\n",
        d.median_us,
        r.median_us,
        r.median_us - d.median_us,
        d.p99_us,
        r.p99_us,
        r.p99_us - d.p99_us,
        d.cpu_us,
        r.cpu_us,
        r.cpu_us - d.cpu_us,
        instr.0,
        instr.1,
        instr.1 - instr.0,
        instr.1 / instr.0,
        base.p99_ms,
    );
    let json = json!({
        "ping_pong": {"rounds": rounds, "trips": trips, "request_bytes": REQUEST, "response_bytes": RESPONSE,
            "direct": {"median_us": d.median_us, "p99_us": d.p99_us, "cpu_us": d.cpu_us},
            "redirected": {"median_us": r.median_us, "p99_us": r.p99_us, "cpu_us": r.cpu_us}},
        "instructions_per_request": {"explicit": instr.0, "intercepted": instr.1},
        "added": {"kernel_cpu_us": kernel_us, "sidecar_cpu_us": user_us, "latency_us": added_us},
        "cpu_ratio": cpu_ratio, "p99_ratio": p99_ratio,
    });
    (md, json)
}
