//! Validates a mesh TrafficPolicy and compiles it into the backend policy
//! and route defaults of the route model, every problem named by field.

use super::model::{Fallback, Fault, Mirror, Retry, TrafficPolicy};
use crate::manifest::policy as docs;
use crate::rules::problems::Problems;

const RETRY_CONDITIONS: [&str; 4] = ["5xx", "gateway-error", "connect-failure", "reset"];
/// gRPC status names (lower-case, dashes) to codes.
fn grpc_code(name: &str) -> Option<u32> {
    let codes = [
        "cancelled",
        "unknown",
        "invalid-argument",
        "deadline-exceeded",
        "not-found",
        "already-exists",
        "permission-denied",
        "resource-exhausted",
        "failed-precondition",
        "aborted",
        "out-of-range",
        "unimplemented",
        "internal",
        "unavailable",
        "data-loss",
        "unauthenticated",
    ];
    let norm = name.to_ascii_lowercase().replace('_', "-");
    codes.iter().position(|c| *c == norm).map(|i| i as u32 + 1)
}

pub(super) fn traffic_policy(p: &mut Problems<'_>, tp: &docs::TrafficPolicy) -> TrafficPolicy {
    let s = &tp.spec;
    let mut out = TrafficPolicy {
        name: tp.metadata.name.clone(),
        namespace: tp.metadata.namespace.clone(),
        service: s.service.clone(),
        ..TrafficPolicy::default()
    };
    if s.service.is_empty() {
        p.add("spec.service", "must name the service the policy governs");
    }
    if let Some(lb) = &s.load_balancer {
        if ["p2c-ewma", "round-robin", "least-request"].contains(&lb.as_str()) {
            out.load_balancer = lb.clone();
        } else {
            p.add(
                "spec.loadBalancer",
                format!("{lb:?} is not one of p2c-ewma, round-robin, least-request"),
            );
        }
    }
    if let Some(o) = &s.outlier_detection {
        if let Some(n) = p.count(
            "spec.outlierDetection.consecutiveFailures",
            &o.consecutive_failures,
        ) {
            out.consecutive_failures = n;
        }
        if let Some(ms) = p.duration(
            "spec.outlierDetection.baseEjectionTime",
            &o.base_ejection_time,
        ) {
            out.base_ejection_ms = ms;
        }
        if let Some(n) = p.count(
            "spec.outlierDetection.maxEjectionPercent",
            &o.max_ejection_percent,
        ) {
            if n > 100 {
                p.add(
                    "spec.outlierDetection.maxEjectionPercent",
                    format!("{n} is over 100"),
                );
            }
            out.max_ejection_percent = n;
        }
    }
    if let Some(l) = &s.limits {
        out.max_requests = p
            .count("spec.limits.maxRequests", &l.max_requests)
            .unwrap_or(0);
        out.max_pending = p
            .count(
                "spec.limits.maxPendingConnections",
                &l.max_pending_connections,
            )
            .unwrap_or(0);
    }
    out.timeout_ms = p.duration("spec.timeout", &s.timeout);
    out.retry = s.retry.as_ref().map(|r| retry_spec(p, r));
    out.mirror = s.mirror.as_ref().map(|m| Mirror {
        service: m.service.clone(),
        percent: p.percent("spec.mirror.percent", m.percent.unwrap_or(100.0)),
    });
    if let Some(m) = &s.mirror
        && (m.service.is_empty() || m.service == s.service)
    {
        p.add("spec.mirror.service", "must name another service");
    }
    out.fault = s.fault.as_ref().map(|f| {
        let mut fault = Fault::default();
        if let Some(d) = &f.delay {
            fault.delay_ms = p
                .duration("spec.fault.delay.fixedDelay", &Some(d.fixed_delay.clone()))
                .unwrap_or(0);
            fault.delay_percent = p.percent("spec.fault.delay.percent", d.percent);
        }
        if let Some(a) = &f.abort {
            if !(200..600).contains(&a.http_status) {
                p.add(
                    "spec.fault.abort.httpStatus",
                    format!("{} is not an HTTP status", a.http_status),
                );
            }
            fault.abort_status = a.http_status;
            fault.abort_percent = p.percent("spec.fault.abort.percent", a.percent);
        }
        fault
    });
    out.fallback = s.fallback.as_ref().and_then(|f| fallback(p, &s.service, f));
    if let Some(tls) = &s.tls {
        match tls.mode.as_str() {
            "strict" => {}
            "permissive" => out.allow_plaintext = true,
            other => p.add(
                "spec.tls.mode",
                format!("{other:?} is not one of strict, permissive"),
            ),
        }
    }
    out
}

/// The largest static fallback body: a small answer, not a file server.
const MAX_FALLBACK_BODY: usize = 64 * 1024;

fn fallback(p: &mut Problems<'_>, own: &str, f: &docs::FallbackSpec) -> Option<Fallback> {
    match (&f.service, &f.response) {
        (Some(_), Some(_)) | (None, None) => {
            p.add(
                "spec.fallback",
                "give exactly one of service (another service) or response (a static answer)",
            );
            None
        }
        (Some(svc), None) => {
            if svc.is_empty() || svc == own {
                p.add("spec.fallback.service", "must name another service");
                return None;
            }
            Some(Fallback::Service(svc.clone()))
        }
        (None, Some(r)) => {
            let status = match r.status.as_count("statuses") {
                Ok(s @ 200..=599) => s as u16,
                Ok(s) => {
                    p.add(
                        "spec.fallback.response.status",
                        format!("{s} is not a final HTTP status (200-599)"),
                    );
                    return None;
                }
                Err(e) => {
                    p.add("spec.fallback.response.status", e);
                    return None;
                }
            };
            let mut headers = Vec::new();
            for (name, value) in &r.headers {
                let field = format!("spec.fallback.response.headers.{name}");
                let lower = name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                    p.add(&field, format!("{name:?} is not a header name"));
                } else if http::HeaderValue::from_str(value).is_err() {
                    p.add(&field, format!("{value:?} is not a header value"));
                } else if ["content-length", "transfer-encoding", "connection"]
                    .contains(&lower.as_str())
                {
                    p.add(&field, "is set by the sidecar from the body");
                } else {
                    headers.push((lower, value.clone()));
                }
            }
            if r.body.len() > MAX_FALLBACK_BODY {
                p.add(
                    "spec.fallback.response.body",
                    format!(
                        "is {} bytes; a static fallback body is at most {} KiB",
                        r.body.len(),
                        MAX_FALLBACK_BODY / 1024
                    ),
                );
            }
            Some(Fallback::Response {
                status,
                headers,
                body: r.body.clone(),
            })
        }
    }
}

fn retry_spec(p: &mut Problems<'_>, r: &docs::RetrySpec) -> Retry {
    let mut out = Retry::default();
    if let Some(n) = p.attempts(
        "spec.retry.attempts",
        &r.attempts,
        "or set retryOn: [] to never retry",
    ) {
        out.attempts = n;
    }
    out.per_try_timeout_ms = p
        .duration("spec.retry.perTryTimeout", &r.per_try_timeout)
        .unwrap_or(0);
    if let Some(ms) = p.duration("spec.retry.backoff", &r.backoff) {
        out.backoff_ms = ms;
    }
    if let Some(ms) = p.duration("spec.retry.maxBackoff", &r.max_backoff) {
        out.max_backoff_ms = ms;
    }
    out.max_backoff_ms = out.max_backoff_ms.max(out.backoff_ms);
    if let Some(on) = &r.retry_on {
        for (i, c) in on.iter().enumerate() {
            let status_ok = c.parse::<u16>().is_ok_and(|n| (400..600).contains(&n));
            if !RETRY_CONDITIONS.contains(&c.as_str()) && !status_ok {
                p.add(
                    format!("spec.retry.retryOn[{i}]"),
                    format!("{c:?} is not one of 5xx, gateway-error, connect-failure, reset, or a 4xx/5xx status"),
                );
            }
        }
        out.retry_on = on.clone();
    }
    if let Some(codes) = &r.grpc_codes {
        out.grpc_codes = Vec::new();
        for (i, c) in codes.iter().enumerate() {
            match grpc_code(c) {
                Some(n) => out.grpc_codes.push(n),
                None => p.add(
                    format!("spec.retry.grpcCodes[{i}]"),
                    format!("{c:?} is not a gRPC status name (e.g. unavailable)"),
                ),
            }
        }
    }
    out.non_idempotent = r.non_idempotent.unwrap_or(false);
    if let Some(b) = &r.budget {
        if let Some(ratio) = b.ratio {
            if !(0.0..=1.0).contains(&ratio) || ratio.is_nan() {
                p.add("spec.retry.budget.ratio", format!("{ratio} is outside 0-1"));
            }
            out.budget_ratio = ratio;
        }
        if let Some(n) = p.count("spec.retry.budget.minPerSecond", &b.min_per_second) {
            out.budget_min_per_second = n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_code("unavailable"), Some(14));
        assert_eq!(grpc_code("DEADLINE_EXCEEDED"), Some(4));
        assert_eq!(grpc_code("cancelled"), Some(1));
        assert_eq!(grpc_code("nope"), None);
    }
}
