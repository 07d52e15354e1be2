//! `meshctl get routes <service>`: the effective routing policy of one
//! service (matches, weights, timeout, retries, mirror, faults) and the
//! policy of each backend (balancer, ejection, limits), as sidecars get it.

use crate::cli::Output;
use crate::client::{admin, explain};
use anyhow::Result;
use mesh_proto::v1 as pb;
use serde_json::{Value, json};

/// Runs the command.
pub async fn get_routes(
    control: &crate::client::Control,
    namespace: &str,
    service: &str,
    output: Output,
) -> Result<()> {
    let resp = admin(control)
        .await?
        .get_routes(pb::GetRoutesRequest {
            service: service.into(),
            namespace: namespace.into(),
        })
        .await
        .map_err(explain)?
        .into_inner();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&to_json(&resp))?),
        Output::Table => print!("{}", table(&resp)),
    }
    Ok(())
}

fn short(cluster: &str) -> &str {
    cluster.rsplit_once('.').map_or(cluster, |(s, _)| s)
}

fn matches(r: &pb::Route) -> Vec<String> {
    use pb::header_match::Value as V;
    use pb::request_match::Path;
    r.matches
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            match &m.path {
                Some(Path::PathExact(p)) => parts.push(format!("path={p}")),
                Some(Path::PathPrefix(p)) => parts.push(format!("path={p}*")),
                Some(Path::PathRegex(p)) => parts.push(format!("path~{p}")),
                None => {}
            }
            if !m.method.is_empty() {
                parts.push(format!("method={}", m.method));
            }
            for h in &m.headers {
                parts.push(match &h.value {
                    Some(V::Exact(v)) => format!("{}={v}", h.name),
                    Some(V::Regex(v)) => format!("{}~{v}", h.name),
                    None => h.name.clone(),
                });
            }
            parts.join(",")
        })
        .collect()
}

fn retry_text(r: &pb::RetryPolicy) -> String {
    let mut on = r.retry_on.clone();
    on.extend(r.grpc_codes.iter().map(|c| format!("grpc-{c}")));
    format!(
        "{}x on {}{}{}; budget {}%+{}/s",
        r.max_retries,
        on.join(","),
        if r.per_try_timeout_ms > 0 {
            format!("; per try {}ms", r.per_try_timeout_ms)
        } else {
            String::new()
        },
        if r.non_idempotent { "; any method" } else { "" },
        r.budget_ratio * 100.0,
        r.budget_min_per_sec
    )
}

fn lb_name(p: &pb::BackendPolicy) -> &'static str {
    match pb::LoadBalancer::try_from(p.load_balancer) {
        Ok(pb::LoadBalancer::RoundRobin) => "round-robin",
        Ok(pb::LoadBalancer::LeastRequest) => "least-request",
        _ => "p2c-ewma",
    }
}

fn table(resp: &pb::GetRoutesResponse) -> String {
    let Some(sc) = &resp.service else {
        return String::new();
    };
    let mut out = format!(
        "service {}/{} (config version {})\n\n{:<16} {:<28} {:<24} {:<8} {:<64} {:<16} {:<36} FALLBACK\n",
        sc.namespace,
        sc.name,
        resp.version,
        "ROUTE",
        "MATCH",
        "BACKENDS",
        "TIMEOUT",
        "RETRIES",
        "MIRROR",
        "FAULT"
    );
    for r in &sc.routes {
        let total: u32 = r.backends.iter().map(|b| b.weight).sum();
        let backends: Vec<String> = r
            .backends
            .iter()
            .map(|b| {
                let pct = if total == 0 {
                    0.0
                } else {
                    100.0 * f64::from(b.weight) / f64::from(total)
                };
                format!("{} {pct:.0}%", short(&b.cluster))
            })
            .collect();
        let m = matches(r);
        out.push_str(&format!(
            "{:<16} {:<28} {:<24} {:<8} {:<64} {:<16} {:<36} {}\n",
            r.name,
            if m.is_empty() {
                "*".to_string()
            } else {
                m.join(" | ")
            },
            backends.join(", "),
            if r.timeout_ms > 0 {
                format!("{}ms", r.timeout_ms)
            } else {
                "-".into()
            },
            r.retry.as_ref().map_or("-".into(), retry_text),
            r.mirror.as_ref().map_or("-".into(), |m| format!(
                "{} {}%",
                short(&m.cluster),
                m.percent
            )),
            r.fault.as_ref().map_or("-".into(), |f| format!(
                "delay {}ms {}%, abort {} {}%",
                f.delay_ms, f.delay_percent, f.abort_status, f.abort_percent
            )),
            fallback_text(r),
        ));
    }
    out.push_str(&format!(
        "\n{:<16} {:<9} {:<14} {:<40} LIMITS\n",
        "BACKEND", "READY", "BALANCER", "EJECTION"
    ));
    for c in &resp.clusters {
        let p = c.policy.unwrap_or_default();
        let ejection = if p.consecutive_failures == 0 {
            "off".to_string()
        } else {
            format!(
                "after {} failures, {}s base, max {}%",
                p.consecutive_failures,
                p.base_ejection_ms as f64 / 1000.0,
                p.max_ejection_percent
            )
        };
        let limit = |n: u32| {
            if n == 0 {
                "unlimited".to_string()
            } else {
                n.to_string()
            }
        };
        out.push_str(&format!(
            "{:<16} {:<9} {:<14} {:<40} requests {}, pending connections {}\n",
            short(&c.name),
            c.endpoints.len(),
            lb_name(&p),
            ejection,
            limit(p.max_requests),
            limit(p.max_pending)
        ));
    }
    out
}

/// What answers while no backend has a usable endpoint.
fn fallback_text(r: &pb::Route) -> String {
    match r.fallback.as_ref().and_then(|f| f.target.as_ref()) {
        None => "-".into(),
        Some(pb::fallback::Target::Cluster(c)) => format!("service {}", short(c)),
        Some(pb::fallback::Target::Response(resp)) => {
            format!("response {} ({} bytes)", resp.status, resp.body.len())
        }
    }
}

fn fallback_json(r: &pb::Route) -> Value {
    match r.fallback.as_ref().and_then(|f| f.target.as_ref()) {
        None => Value::Null,
        Some(pb::fallback::Target::Cluster(c)) => json!({"service": short(c)}),
        Some(pb::fallback::Target::Response(resp)) => json!({"response": {
            "status": resp.status,
            "headers": resp.headers.iter().map(|h| (h.name.clone(), Value::from(h.value.clone()))).collect::<serde_json::Map<_, _>>(),
            "body": String::from_utf8_lossy(&resp.body),
        }}),
    }
}

fn to_json(resp: &pb::GetRoutesResponse) -> Value {
    let sc = resp.service.clone().unwrap_or_default();
    json!({
        "version": resp.version,
        "service": {"name": sc.name, "namespace": sc.namespace},
        "routes": sc.routes.iter().map(|r| json!({
            "name": r.name,
            "matches": matches(r),
            "backends": r.backends.iter().map(|b| json!({"service": short(&b.cluster), "weight": b.weight})).collect::<Vec<_>>(),
            "timeoutMs": r.timeout_ms,
            "retry": r.retry.as_ref().map(|p| json!({
                "attempts": p.max_retries,
                "perTryTimeoutMs": p.per_try_timeout_ms,
                "backoffMs": p.backoff_base_ms,
                "maxBackoffMs": p.backoff_max_ms,
                "retryOn": p.retry_on,
                "grpcCodes": p.grpc_codes,
                "nonIdempotent": p.non_idempotent,
                "budget": {"ratio": p.budget_ratio, "minPerSecond": p.budget_min_per_sec},
            })),
            "mirror": r.mirror.as_ref().map(|m| json!({"service": short(&m.cluster), "percent": m.percent})),
            "fault": r.fault.as_ref().map(|f| json!({
                "delayMs": f.delay_ms, "delayPercent": f.delay_percent,
                "abortStatus": f.abort_status, "abortPercent": f.abort_percent,
            })),
            "fallback": fallback_json(r),
        })).collect::<Vec<_>>(),
        "backends": resp.clusters.iter().map(|c| {
            let p = c.policy.unwrap_or_default();
            json!({
                "service": short(&c.name),
                "readyEndpoints": c.endpoints.len(),
                "loadBalancer": lb_name(&p),
                "outlierDetection": {
                    "consecutiveFailures": p.consecutive_failures,
                    "baseEjectionMs": p.base_ejection_ms,
                    "maxEjectionPercent": p.max_ejection_percent,
                },
                "limits": {"maxRequests": p.max_requests, "maxPendingConnections": p.max_pending},
            })
        }).collect::<Vec<_>>(),
    })
}
