//! Load generation. HTTP/1.1 uses oha (fixed rate with `-q`, and
//! `--latency-correction` so a stall cannot hide its own queueing). gRPC at a
//! fixed rate has no packaged tool here (ghz is not available), so `grpc`
//! below is a small open-loop tonic client: request i is due at t0 + i/rate,
//! is sent whether or not earlier ones have answered, and its latency is
//! recorded in an HDR histogram.

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use mesh_proto::echo::EchoRequest;
use mesh_proto::echo::echo_client::EchoClient;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Latency percentiles (ms) and volume of one run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Run {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) rps: f64,
}

/// One oha run against `url` (inside network namespace `netns` when
/// given, as a pod's app); `rate` 0 means as fast as possible.
pub(crate) async fn oha(
    netns: Option<&str>,
    url: &str,
    host: Option<&str>,
    rate: u64,
    conns: usize,
    duration: Duration,
) -> Result<Run> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns, "oha"]);
            c
        }
        None => tokio::process::Command::new("oha"),
    };
    cmd.args([
        "--no-tui",
        "--output-format",
        "json",
        "-c",
        &conns.to_string(),
    ])
    .arg("-z")
    .arg(format!("{}ms", duration.as_millis()));
    if rate > 0 {
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    if let Some(h) = host {
        cmd.args(["--host", h]);
    }
    cmd.arg(url);
    let out = cmd
        .output()
        .await
        .context("running oha (cargo install oha --locked)")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing oha's JSON")?;
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let statuses = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let ok = statuses.get("200").and_then(|n| n.as_u64()).unwrap_or(0);
    let all_statuses: u64 = statuses.values().filter_map(|n| n.as_u64()).sum();
    // Requests still in flight when `-z` runs out are cut off by oha itself
    // ("aborted due to deadline"); they are not failures of the target.
    let mut transport_errors = 0;
    for (kind, n) in v["errorDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default()
    {
        if kind != "aborted due to deadline" {
            eprintln!("oha: {n} × {kind}");
            transport_errors += n.as_u64().unwrap_or(0);
        }
    }
    Ok(Run {
        p50: pct("p50"),
        p90: pct("p90"),
        p99: pct("p99"),
        p999: pct("p99.9"),
        requests: ok,
        errors: all_statuses - ok + transport_errors,
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
    })
}

async fn channels(
    target: SocketAddr,
    authority: Option<&str>,
    conns: usize,
) -> Result<Vec<EchoClient<tonic::transport::Channel>>> {
    let mut out = Vec::new();
    for _ in 0..conns {
        let mut ep =
            tonic::transport::Endpoint::from_shared(format!("http://{target}"))?.tcp_nodelay(true);
        if let Some(a) = authority {
            ep = ep.origin(format!("http://{a}").parse()?);
        }
        out.push(EchoClient::new(ep.connect().await?));
    }
    Ok(out)
}

/// gRPC unary calls with a 1 KiB payload. `rate` > 0: open loop at that
/// rate; `rate` == 0: closed loop, 4 calls in flight per connection.
pub(crate) async fn grpc(
    target: SocketAddr,
    authority: Option<&str>,
    rate: u64,
    conns: usize,
    duration: Duration,
) -> Result<Run> {
    let clients = channels(target, authority, conns).await?;
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let payload = vec![7u8; 1024];
    let start = Instant::now();
    if rate > 0 {
        // Bound the calls in flight so an overloaded target cannot exhaust memory.
        let limit = Arc::new(Semaphore::new(4096));
        let total = (duration.as_secs_f64() * rate as f64) as u64;
        let mut tasks = Vec::with_capacity(total as usize);
        let mut next = 0u64;
        while next < total {
            // tokio's timer ticks in milliseconds: on each wake, send every call now due.
            let due_now = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(total);
            while next < due_now {
                let due = start + Duration::from_secs_f64(next as f64 / rate as f64);
                // Latency counts from the send, unless the in-flight limit held the
                // call back: then from its due time, so a stalled target cannot hide
                // its own queueing (coordinated omission).
                let (permit, from) = match limit.clone().try_acquire_owned() {
                    Ok(p) => (p, Instant::now()),
                    Err(_) => (limit.clone().acquire_owned().await?, due),
                };
                let (mut c, hist, errors, payload) = (
                    clients[next as usize % conns].clone(),
                    hist.clone(),
                    errors.clone(),
                    payload.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let ok = c.unary(EchoRequest { payload }).await.is_ok();
                    let us = from.elapsed().as_micros() as u64;
                    drop(permit);
                    if ok {
                        let _ = hist.lock().expect("histogram").record(us.max(1));
                    } else {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }));
                next += 1;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        for t in tasks {
            let _ = t.await;
        }
    } else {
        let end = start + duration;
        let tasks: Vec<_> = (0..conns * 4)
            .map(|i| {
                let (mut c, hist, errors, payload) = (
                    clients[i % conns].clone(),
                    hist.clone(),
                    errors.clone(),
                    payload.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < end {
                        let sent = Instant::now();
                        if c.unary(EchoRequest {
                            payload: payload.clone(),
                        })
                        .await
                        .is_ok()
                        {
                            let _ = hist
                                .lock()
                                .expect("histogram")
                                .record((sent.elapsed().as_micros() as u64).max(1));
                        } else {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = hist.lock().expect("histogram");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Run {
        p50: ms(0.50),
        p90: ms(0.90),
        p99: ms(0.99),
        p999: ms(0.999),
        requests: h.len(),
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        rps: h.len() as f64 / elapsed,
    })
}
