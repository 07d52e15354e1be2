//! Validates routing documents and compiles them into the route model,
//! reporting every problem at once as "file:line: object: field: problem".

use super::docs::{self, HttpRouteMatch, SmiMatch};
use super::{
    Fault, HeaderMatch, HttpRoute, MAX_RULES, Mirror, PathMatch, RequestMatch, Retry, RouteGroup,
    RouteRule, Routing, TrafficPolicy,
};
use crate::manifest::{self, Document, Located, RawNumber};
use crate::rules::Backend;

/// Parses a Gateway API duration ("1s", "250ms", "1m30s") into ms.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("{s:?} is negative; durations must be 0 or more"));
    }
    if t.is_empty() {
        return Err("is empty; write a duration like 1s or 250ms".into());
    }
    let bad = || format!("{s:?} is not a duration; write e.g. 1s, 250ms or 1m30s");
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        total = total.saturating_add(n.saturating_mul(unit_ms));
        rest = &rest[len..];
    }
    Ok(total)
}

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

const RETRY_CONDITIONS: [&str; 4] = ["5xx", "gateway-error", "connect-failure", "reset"];

/// Collects problems for one document.
struct Problems<'a> {
    at: &'a Located,
    object: String,
    errors: Vec<manifest::Error>,
}

impl Problems<'_> {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(manifest::Error::at(
            self.at,
            &self.object,
            field.into(),
            problem.into(),
        ));
    }

    fn duration(&mut self, field: &str, v: &Option<String>) -> Option<u64> {
        match duration_ms(v.as_deref()?) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.add(field, e);
                None
            }
        }
    }

    fn count(&mut self, field: &str, v: &Option<RawNumber>) -> Option<u32> {
        match v.as_ref()?.as_weight() {
            Ok(n) => Some(n),
            Err(e) => {
                self.add(field, e.replace("weights", "values"));
                None
            }
        }
    }

    fn percent(&mut self, field: &str, v: f64) -> f64 {
        if !(0.0..=100.0).contains(&v) {
            self.add(field, format!("{v} is outside 0-100"));
        }
        v
    }

    fn regex(&mut self, field: &str, re: &str) {
        if let Err(e) = regex::Regex::new(re) {
            let first = e.to_string().lines().last().unwrap_or_default().to_string();
            self.add(field, format!("regex {re:?} does not compile: {first}"));
        }
    }
}

/// Every routing document in `docs`, validated; every problem at once.
pub fn routing_from(docs: &[Located]) -> Result<Routing, Vec<manifest::Error>> {
    let mut out = Routing::default();
    let mut errors = Vec::new();
    for at in docs {
        let (object, meta) = match &at.doc {
            Document::HttpRouteGroup(g) => ("HTTPRouteGroup", &g.metadata),
            Document::HttpRoute(r) => ("HTTPRoute", &r.metadata),
            Document::TrafficPolicy(p) => ("TrafficPolicy", &p.metadata),
            _ => continue,
        };
        let mut p = Problems {
            at,
            object: format!("{object} {}/{}", meta.namespace, meta.name),
            errors: Vec::new(),
        };
        match &at.doc {
            Document::HttpRouteGroup(g) => {
                let group = route_group(&mut p, g);
                out.groups.push(group);
            }
            Document::HttpRoute(r) => {
                if let Some(route) = http_route(&mut p, r) {
                    out.routes.push(route);
                }
            }
            Document::TrafficPolicy(tp) => {
                let policy = traffic_policy(&mut p, tp);
                out.policies.push(policy);
            }
            _ => {}
        }
        errors.append(&mut p.errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn route_group(p: &mut Problems<'_>, g: &docs::HttpRouteGroup) -> RouteGroup {
    if g.spec.matches.is_empty() {
        p.add("spec.matches", "needs at least one match");
    }
    let mut matches = Vec::new();
    for (i, m) in g.spec.matches.iter().enumerate() {
        if m.name.is_empty() {
            p.add(format!("spec.matches[{i}].name"), "must not be empty");
        }
        matches.push((m.name.clone(), smi_match(p, i, m)));
    }
    RouteGroup {
        name: g.metadata.name.clone(),
        namespace: g.metadata.namespace.clone(),
        matches,
    }
}

fn smi_match(p: &mut Problems<'_>, i: usize, m: &SmiMatch) -> RequestMatch {
    let field = |f: &str| format!("spec.matches[{i}].{f}");
    let path = m.path_regex.as_ref().map(|re| {
        p.regex(&field("pathRegex"), re);
        PathMatch::Regex(re.clone())
    });
    // SMI lists methods; one method per match here, so several become a regex-free check later.
    let methods: Vec<String> = m
        .methods
        .iter()
        .filter(|m| *m != "*")
        .map(|m| m.to_ascii_uppercase())
        .collect();
    if methods.len() > 1 {
        p.add(
            field("methods"),
            "list one method per match (or *); give each method its own match",
        );
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        p.regex(&field(&format!("headers.{name}")), value);
        headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: Err(value.clone()),
        });
    }
    RequestMatch {
        path,
        method: methods.into_iter().next(),
        headers,
    }
}

fn http_route(p: &mut Problems<'_>, r: &docs::HttpRoute) -> Option<HttpRoute> {
    let ns = &r.metadata.namespace;
    let service = match r.spec.parent_refs.as_slice() {
        [parent] => {
            if parent.kind.as_deref().unwrap_or("Service") != "Service"
                || !parent.group.as_deref().unwrap_or("").is_empty()
            {
                p.add(
                    "spec.parentRefs[0]",
                    "mesh routes attach to a Service (group \"\", kind Service); Gateways are not supported",
                );
            }
            if parent.namespace.as_ref().is_some_and(|n| n != ns) {
                p.add(
                    "spec.parentRefs[0].namespace",
                    "must be the route's own namespace",
                );
            }
            parent.name.clone()
        }
        _ => {
            p.add(
                "spec.parentRefs",
                "give exactly one parentRef: the Service whose traffic this route takes",
            );
            return None;
        }
    };
    if r.spec.rules.len() > MAX_RULES {
        p.add(
            "spec.rules",
            format!(
                "has {} rules; Gateway API allows at most {MAX_RULES}",
                r.spec.rules.len()
            ),
        );
    }
    if r.spec.rules.is_empty() {
        p.add("spec.rules", "needs at least one rule");
    }
    let mut rules = Vec::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let field = |f: &str| format!("spec.rules[{i}].{f}");
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{i}", r.metadata.name));
        let matches = rule
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| gateway_match(p, &field(&format!("matches[{j}]")), m))
            .collect();
        let mut backends = Vec::new();
        if rule.backend_refs.is_empty() {
            p.add(field("backendRefs"), "needs at least one backendRef");
        }
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let bf = field(&format!("backendRefs[{j}]"));
            check_service_ref(p, &bf, b);
            let weight = match &b.weight {
                None => 1,
                Some(w) => w.as_weight().unwrap_or_else(|e| {
                    p.add(format!("{bf}.weight"), e);
                    0
                }),
            };
            if b.name == service {
                p.add(
                    format!("{bf}.name"),
                    "is the parent Service itself; route to its version services (e.g. echo-v1)",
                );
            }
            backends.push(Backend {
                service: b.name.clone(),
                weight,
            });
        }
        if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
            p.add(
                field("backendRefs"),
                "every weight is 0, so no backend could receive traffic",
            );
        }
        let (timeout_ms, per_try) = match &rule.timeouts {
            Some(t) => (
                p.duration(&field("timeouts.request"), &t.request),
                p.duration(&field("timeouts.backendRequest"), &t.backend_request),
            ),
            None => (None, None),
        };
        let retry = rule.retry.as_ref().map(|g| {
            let mut retry = Retry::default();
            match g.attempts.as_ref().map(RawNumber::as_weight) {
                Some(Ok(0)) => p.add(
                    field("retry.attempts"),
                    "is 0; give at least 1, or remove retry",
                ),
                Some(Ok(n)) => retry.attempts = n,
                Some(Err(e)) => p.add(field("retry.attempts"), e.replace("weights", "attempts")),
                None => {}
            }
            if !g.codes.is_empty() {
                retry.retry_on = g.codes.iter().map(u16::to_string).collect();
                for c in &g.codes {
                    if !(400..600).contains(c) {
                        p.add(
                            field("retry.codes"),
                            format!("{c} is not a 4xx or 5xx status"),
                        );
                    }
                }
            }
            if let Some(ms) = p.duration(&field("retry.backoff"), &g.backoff) {
                retry.backoff_ms = ms;
                retry.max_backoff_ms = retry.max_backoff_ms.max(ms);
            }
            retry.per_try_timeout_ms = per_try.unwrap_or(0);
            retry
        });
        let retry = match (retry, per_try) {
            (None, Some(ms)) => Some(Retry {
                per_try_timeout_ms: ms,
                ..Retry::default()
            }),
            (r, _) => r,
        };
        let mut mirror = None;
        for (j, f) in rule.filters.iter().enumerate() {
            let ff = field(&format!("filters[{j}]"));
            match (f.kind.as_str(), &f.request_mirror) {
                ("RequestMirror", Some(m)) => {
                    check_service_ref(p, &format!("{ff}.requestMirror.backendRef"), &m.backend_ref);
                    let percent = match &m.percent {
                        None => 100.0,
                        Some(v) => match v.as_weight() {
                            Ok(n) => {
                                p.percent(&format!("{ff}.requestMirror.percent"), f64::from(n))
                            }
                            Err(e) => {
                                p.add(format!("{ff}.requestMirror.percent"), e);
                                0.0
                            }
                        },
                    };
                    mirror = Some(Mirror {
                        service: m.backend_ref.name.clone(),
                        percent,
                    });
                }
                ("RequestMirror", None) => p.add(
                    format!("{ff}.requestMirror"),
                    "is required for type RequestMirror",
                ),
                (other, _) => p.add(
                    format!("{ff}.type"),
                    format!("filter {other:?} is not supported; mesh supports RequestMirror"),
                ),
            }
        }
        rules.push(RouteRule {
            name,
            matches,
            backends,
            timeout_ms,
            retry,
            mirror,
        });
    }
    Some(HttpRoute {
        name: r.metadata.name.clone(),
        namespace: ns.clone(),
        service,
        rules,
    })
}

fn check_service_ref(p: &mut Problems<'_>, field: &str, b: &docs::BackendRef) {
    if b.name.is_empty() {
        p.add(format!("{field}.name"), "must not be empty");
    }
    if b.kind.as_deref().unwrap_or("Service") != "Service"
        || !b.group.as_deref().unwrap_or("").is_empty()
    {
        p.add(
            field.to_string(),
            "must reference a Service (group \"\", kind Service)",
        );
    }
}

fn gateway_match(p: &mut Problems<'_>, field: &str, m: &HttpRouteMatch) -> RequestMatch {
    let path = m.path.as_ref().map(|path| {
        let value = path.value.clone().unwrap_or_else(|| "/".into());
        match path.kind.as_deref().unwrap_or("PathPrefix") {
            "Exact" => PathMatch::Exact(value),
            "PathPrefix" => PathMatch::Prefix(value),
            "RegularExpression" => {
                p.regex(&format!("{field}.path.value"), &value);
                PathMatch::Regex(value)
            }
            other => {
                p.add(
                    format!("{field}.path.type"),
                    format!("{other:?} is not one of Exact, PathPrefix, RegularExpression"),
                );
                PathMatch::Prefix(value)
            }
        }
    });
    if let Some(PathMatch::Exact(v) | PathMatch::Prefix(v)) = &path
        && !v.starts_with('/')
    {
        p.add(
            format!("{field}.path.value"),
            format!("{v:?} must start with /"),
        );
    }
    let mut headers = Vec::new();
    for (k, h) in m.headers.iter().enumerate() {
        let hf = format!("{field}.headers[{k}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            p.add(
                format!("{hf}.name"),
                format!("{:?} is not a header name", h.name),
            );
        }
        let value = match h.kind.as_deref().unwrap_or("Exact") {
            "Exact" => Ok(h.value.clone()),
            "RegularExpression" => {
                p.regex(&format!("{hf}.value"), &h.value);
                Err(h.value.clone())
            }
            other => {
                p.add(
                    format!("{hf}.type"),
                    format!("{other:?} is not one of Exact, RegularExpression"),
                );
                Ok(h.value.clone())
            }
        };
        headers.push(HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value,
        });
    }
    let method = m.method.as_ref().map(|v| {
        if http::Method::from_bytes(v.as_bytes()).is_err()
            || v.chars().any(|c| c.is_ascii_lowercase())
        {
            p.add(
                format!("{field}.method"),
                format!("{v:?} is not an upper-case HTTP method"),
            );
        }
        v.clone()
    });
    RequestMatch {
        path,
        method,
        headers,
    }
}

fn traffic_policy(p: &mut Problems<'_>, tp: &docs::TrafficPolicy) -> TrafficPolicy {
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
    out
}

fn retry_spec(p: &mut Problems<'_>, r: &docs::RetrySpec) -> Retry {
    let mut out = Retry::default();
    match r.attempts.as_ref().map(RawNumber::as_weight) {
        Some(Ok(0)) => p.add(
            "spec.retry.attempts",
            "is 0; give at least 1, or set retryOn: [] to never retry",
        ),
        Some(Ok(n)) => out.attempts = n,
        Some(Err(e)) => p.add("spec.retry.attempts", e.replace("weights", "attempts")),
        None => {}
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
    fn durations() {
        assert_eq!(duration_ms("1s"), Ok(1000));
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1h"), Ok(3_600_000));
        assert!(duration_ms("-1s").unwrap_err().contains("negative"));
        assert!(duration_ms("abc").unwrap_err().contains("not a duration"));
        assert!(duration_ms("10").unwrap_err().contains("not a duration"));
        assert!(duration_ms("").is_err());
    }

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_code("unavailable"), Some(14));
        assert_eq!(grpc_code("DEADLINE_EXCEEDED"), Some(4));
        assert_eq!(grpc_code("cancelled"), Some(1));
        assert_eq!(grpc_code("nope"), None);
    }
}
