//! `meshctl stat` and `meshctl top`: golden metrics (RPS, success rate,
//! p50/p95/p99) per service and version, read from the control plane's
//! rolling window of sidecar telemetry, in the manner of `linkerd viz stat`.

use crate::cli::Output;
use crate::client::{admin, explain};
use anyhow::{Result, anyhow};
use mesh_proto::v1 as pb;
use serde_json::json;
use std::time::Duration;

/// What to ask for.
#[derive(Debug, Clone)]
pub struct Query {
    /// Service, or every service when empty.
    pub service: String,
    /// Namespace.
    pub namespace: String,
    /// Window, e.g. `30s`.
    pub window: String,
    /// `inbound` (as servers saw it) or `outbound` (as callers saw it).
    pub direction: String,
}

/// Asks the control plane.
pub async fn fetch(control: &crate::client::Control, q: &Query) -> Result<pb::GetStatsResponse> {
    let window_ms = mesh_control::manifest::meta::duration_ms(&q.window)
        .map_err(|e| anyhow!("--window {e}"))?;
    if window_ms == 0 {
        return Err(anyhow!("--window must be longer than 0"));
    }
    Ok(admin(control)
        .await?
        .get_stats(pb::GetStatsRequest {
            service: q.service.clone(),
            namespace: q.namespace.clone(),
            window_ms,
            direction: q.direction.clone(),
        })
        .await
        .map_err(explain)?
        .into_inner())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}

/// The answer as a table or JSON.
pub fn render(resp: &pb::GetStatsResponse, output: Output) -> Result<String> {
    if output == Output::Json {
        let rows: Vec<_> = resp
            .rows
            .iter()
            .map(|r| {
                json!({"service": r.service, "version": r.version, "sidecars": r.reporters,
                       "requests": r.requests, "failures": r.failures,
                       "successRate": r.success_rate, "rps": r.rps,
                       "latencyMs": {"p50": r.p50_ms, "p95": r.p95_ms, "p99": r.p99_ms}})
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&json!({
            "windowMs": resp.window_ms,
            "direction": resp.direction,
            "rows": rows,
        }))? + "\n");
    }
    let mut out = format!(
        "{:<24} {:<8} {:>8} {:>9} {:>9} {:>11} {:>11} {:>11}\n",
        "SERVICE",
        "VERSION",
        "SIDECARS",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99"
    );
    if resp.rows.is_empty() {
        out.push_str(&format!(
            "(no {} traffic reported in the last {:.0}s)\n",
            resp.direction,
            resp.window_ms as f64 / 1000.0
        ));
    }
    for r in &resp.rows {
        let version = if r.version.is_empty() {
            "*"
        } else {
            &r.version
        };
        let success = r
            .success_rate
            .map_or("-".into(), |s| format!("{:.2}%", s * 100.0));
        out.push_str(&format!(
            "{:<24} {:<8} {:>8} {:>9} {:>9.1} {:>11} {:>11} {:>11}\n",
            r.service,
            version,
            r.reporters,
            success,
            r.rps,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms)
        ));
    }
    Ok(out)
}

/// `meshctl stat`
pub async fn stat(control: &crate::client::Control, q: &Query, output: Output) -> Result<()> {
    print!("{}", render(&fetch(control, q).await?, output)?);
    Ok(())
}

/// `meshctl top`: the same, redrawn every `every` until Ctrl-C, or `frames`
/// times when given.
pub async fn top(
    control: &crate::client::Control,
    q: &Query,
    every: Duration,
    frames: Option<u32>,
) -> Result<()> {
    let mut tick = tokio::time::interval(every);
    let mut drawn = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let table = render(&fetch(control, q).await?, Output::Table)?;
        // Clear the screen and home the cursor, then draw the frame.
        print!(
            "\x1b[2J\x1b[Hmeshctl top: {} traffic, last {}, every {:?} (Ctrl-C to stop)\n\n{table}",
            if q.direction.is_empty() {
                "inbound"
            } else {
                &q.direction
            },
            q.window,
            every
        );
        std::io::Write::flush(&mut std::io::stdout())?;
        drawn += 1;
        if frames.is_some_and(|f| drawn >= f) {
            return Ok(());
        }
    }
}
