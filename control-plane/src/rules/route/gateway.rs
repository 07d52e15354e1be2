//! Validates a Gateway API HTTPRoute (GAMMA: one Service parent) and
//! compiles it into the route model, every problem named by field.

use super::model::{
    Backend, HeaderMatch, HttpRoute, MAX_RULES, Mirror, PathMatch, RequestMatch, Retry, RouteRule,
};
use crate::manifest::gateway::{self as docs, HttpRouteMatch};
use crate::rules::problems::Problems;

pub(super) fn http_route(p: &mut Problems<'_>, r: &docs::HttpRoute) -> Option<HttpRoute> {
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
            if let Some(n) = p.attempts(&field("retry.attempts"), &g.attempts, "or remove retry") {
                retry.attempts = n;
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
                        Some(v) => match v.as_count("percentages") {
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
