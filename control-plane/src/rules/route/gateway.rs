//! Validates a Gateway API HTTPRoute (GAMMA: one Service parent) as
//! upstream writes it, within the upstream CRD schema's limits (`limits`),
//! and compiles it into the route model, every problem named by field.

use super::limits::{self, at_most};
use super::model::{
    Backend, HeaderMatch, HttpRoute, Mirror, PathMatch, RequestMatch, Retry, RouteRule,
};
use crate::manifest::gateway::{self as docs, HttpRouteMatch};
use crate::rules::problems::Problems;

/// Whether a reference's `group` names the core API group: the empty
/// string, or `core` as the GAMMA guides write it.
fn core_group(group: &Option<String>) -> bool {
    matches!(group.as_deref(), None | Some("") | Some("core"))
}

pub(super) fn http_route(p: &mut Problems<'_>, r: &docs::HttpRoute) -> Option<HttpRoute> {
    let ns = &r.metadata.namespace;
    let service = match r.spec.parent_refs.as_slice() {
        [parent] => {
            if parent.kind.as_deref().unwrap_or("Service") != "Service"
                || !core_group(&parent.group)
            {
                p.add(
                    "spec.parentRefs[0]",
                    "mesh routes attach to a Service (group \"\" or core, kind Service); Gateways are not supported",
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
    let hostnames = hostnames(p, &r.spec.hostnames);
    if let Err(e) = at_most(r.spec.rules.len(), limits::MAX_RULES, "rules") {
        p.add("spec.rules", e);
    }
    if r.spec.rules.is_empty() {
        p.add("spec.rules", "needs at least one rule");
    }
    let total: usize = r.spec.rules.iter().map(|r| r.matches.len()).sum();
    if let Err(e) = at_most(total, limits::MAX_TOTAL_MATCHES, "matches across its rules") {
        p.add("spec.rules", e);
    }
    let mut rules: Vec<RouteRule> = Vec::new();
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let field = |f: &str| format!("spec.rules[{i}].{f}");
        if let Some(n) = &rule.name {
            if let Err(e) = limits::section_name(n) {
                p.add(field("name"), e);
            }
            if r.spec.rules[..i].iter().any(|o| o.name.as_ref() == Some(n)) {
                p.add(
                    field("name"),
                    format!(
                        "{n:?} is used by an earlier rule; rule names are unique within a route"
                    ),
                );
            }
        }
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{i}", r.metadata.name));
        if let Err(e) = at_most(rule.matches.len(), limits::MAX_MATCHES, "matches") {
            p.add(field("matches"), e);
        }
        let matches = rule
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| gateway_match(p, &field(&format!("matches[{j}]")), m))
            .collect();
        let backends = backends(p, &field("backendRefs"), rule, &service, ns);
        let (timeout_ms, per_try) = match &rule.timeouts {
            Some(t) => (
                p.duration(&field("timeouts.request"), &t.request),
                p.duration(&field("timeouts.backendRequest"), &t.backend_request),
            ),
            None => (None, None),
        };
        // "backendRequest timeout cannot be longer than request timeout"
        // (a request timeout of 0 means none).
        if let (Some(total), Some(each)) = (timeout_ms, per_try)
            && total > 0
            && each > total
        {
            p.add(
                field("timeouts.backendRequest"),
                "cannot be longer than timeouts.request",
            );
        }
        let retry = rule
            .retry
            .as_ref()
            .map(|g| retry(p, &field("retry"), g, per_try));
        let retry = match (retry, per_try) {
            (None, Some(ms)) => Some(Retry {
                per_try_timeout_ms: ms,
                ..Retry::default()
            }),
            (r, _) => r,
        };
        if rule.session_persistence.is_some() {
            p.add(
                field("sessionPersistence"),
                "is not supported by mesh; remove it",
            );
        }
        let mirror = filters(p, &field("filters"), rule, ns);
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
        hostnames,
        rules,
    })
}

/// `spec.hostnames`, lower-cased for matching; every bad one named.
fn hostnames(p: &mut Problems<'_>, names: &[String]) -> Vec<String> {
    if let Err(e) = at_most(names.len(), limits::MAX_HOSTNAMES, "hostnames") {
        p.add("spec.hostnames", e);
    }
    for (i, h) in names.iter().enumerate() {
        if let Err(e) = limits::hostname(h) {
            p.add(format!("spec.hostnames[{i}]"), e);
        }
    }
    names.to_vec()
}

/// A rule's weighted backends.
fn backends(
    p: &mut Problems<'_>,
    field: &str,
    rule: &docs::HttpRouteRule,
    service: &str,
    ns: &str,
) -> Vec<Backend> {
    if rule.backend_refs.is_empty() {
        p.add(field, "needs at least one backendRef");
    }
    if let Err(e) = at_most(rule.backend_refs.len(), limits::MAX_BACKENDS, "backendRefs") {
        p.add(field, e);
    }
    let mut out = Vec::new();
    for (j, b) in rule.backend_refs.iter().enumerate() {
        let bf = format!("{field}[{j}]");
        check_service_ref(p, &bf, b, ns);
        let weight = match &b.weight {
            None => 1,
            Some(w) => match w.as_weight() {
                Ok(n) if n > limits::MAX_WEIGHT => {
                    p.add(
                        format!("{bf}.weight"),
                        format!(
                            "{n} is over Gateway API's maximum weight of {}",
                            limits::MAX_WEIGHT
                        ),
                    );
                    0
                }
                Ok(n) => n,
                Err(e) => {
                    p.add(format!("{bf}.weight"), e);
                    0
                }
            },
        };
        if b.name == service {
            p.add(
                format!("{bf}.name"),
                "is the parent Service itself; route to its version services (e.g. echo-v1)",
            );
        }
        if !b.filters.is_empty() {
            p.add(
                format!("{bf}.filters"),
                "per-backend filters are not supported by mesh; put filters on the rule",
            );
        }
        out.push(Backend {
            service: b.name.clone(),
            weight,
        });
    }
    if !out.is_empty() && out.iter().all(|b| b.weight == 0) {
        p.add(
            field,
            "every weight is 0, so no backend could receive traffic",
        );
    }
    out
}

/// A rule's `retry`. Attempts 0 disables retries, as the spec demands
/// ("An explicit zero value MUST disable retries").
fn retry(p: &mut Problems<'_>, field: &str, g: &docs::GatewayRetry, per_try: Option<u64>) -> Retry {
    let mut retry = Retry::default();
    if let Some(v) = &g.attempts {
        match v.as_count("attempts") {
            Ok(n) => retry.attempts = n,
            Err(e) => p.add(format!("{field}.attempts"), e),
        }
    }
    if !g.codes.is_empty() {
        retry.retry_on = g.codes.iter().map(u16::to_string).collect();
        for c in &g.codes {
            if !(400..600).contains(c) {
                p.add(
                    format!("{field}.codes"),
                    format!("{c} is not a 4xx or 5xx status (the schema allows 400-599)"),
                );
            }
        }
    }
    if retry.attempts == 0 {
        retry.retry_on.clear();
        retry.grpc_codes.clear();
    }
    if let Some(ms) = p.duration(&format!("{field}.backoff"), &g.backoff) {
        retry.backoff_ms = ms;
        retry.max_backoff_ms = retry.max_backoff_ms.max(ms);
    }
    retry.per_try_timeout_ms = per_try.unwrap_or(0);
    retry
}

/// A rule's filters; mesh supports `RequestMirror`. Returns the mirror.
fn filters(
    p: &mut Problems<'_>,
    field: &str,
    rule: &docs::HttpRouteRule,
    ns: &str,
) -> Option<Mirror> {
    if let Err(e) = at_most(rule.filters.len(), limits::MAX_FILTERS, "filters") {
        p.add(field, e);
    }
    let mut mirror = None;
    for (j, f) in rule.filters.iter().enumerate() {
        let ff = format!("{field}[{j}]");
        match (f.kind.as_str(), &f.request_mirror) {
            ("RequestMirror", Some(m)) => {
                check_service_ref(
                    p,
                    &format!("{ff}.requestMirror.backendRef"),
                    &m.backend_ref,
                    ns,
                );
                let percent = match &m.percent {
                    None => 100.0,
                    Some(v) => match v.as_count("percentages") {
                        Ok(n) => p.percent(&format!("{ff}.requestMirror.percent"), f64::from(n)),
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
    mirror
}

fn check_service_ref(p: &mut Problems<'_>, field: &str, b: &docs::BackendRef, ns: &str) {
    if b.name.is_empty() {
        p.add(format!("{field}.name"), "must not be empty");
    }
    if b.kind.as_deref().unwrap_or("Service") != "Service" || !core_group(&b.group) {
        p.add(
            field.to_string(),
            "must reference a Service (group \"\" or core, kind Service)",
        );
    }
    if b.namespace.as_ref().is_some_and(|n| n != ns) {
        p.add(
            format!("{field}.namespace"),
            "must be the route's own namespace (cross-namespace references need a ReferenceGrant, which mesh does not support)",
        );
    }
}

fn gateway_match(p: &mut Problems<'_>, field: &str, m: &HttpRouteMatch) -> RequestMatch {
    let path = m.path.as_ref().map(|path| {
        let value = path.value.clone().unwrap_or_else(|| "/".into());
        let vf = format!("{field}.path.value");
        if value.len() > limits::MAX_PATH {
            p.add(
                &vf,
                format!(
                    "is {} characters; Gateway API allows at most {}",
                    value.len(),
                    limits::MAX_PATH
                ),
            );
        }
        match path.kind.as_deref().unwrap_or("PathPrefix") {
            kind @ ("Exact" | "PathPrefix") => {
                if let Err(e) = limits::plain_path(&value) {
                    p.add(&vf, e);
                }
                if kind == "Exact" {
                    PathMatch::Exact(value)
                } else {
                    PathMatch::Prefix(value)
                }
            }
            "RegularExpression" => {
                p.regex(&vf, &value);
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
    if let Err(e) = at_most(m.headers.len(), limits::MAX_HEADERS, "headers") {
        p.add(format!("{field}.headers"), e);
    }
    if !m.query_params.is_empty() {
        p.add(
            format!("{field}.queryParams"),
            "query parameter matching is not supported by mesh; match on path or headers",
        );
    }
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for (k, h) in m.headers.iter().enumerate() {
        let hf = format!("{field}.headers[{k}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err()
            || h.name.len() > limits::MAX_HEADER_NAME
        {
            p.add(
                format!("{hf}.name"),
                format!(
                    "{:?} is not a header name (a token of at most {} characters)",
                    h.name,
                    limits::MAX_HEADER_NAME
                ),
            );
        }
        let lower = h.name.to_ascii_lowercase();
        // Headers are a list-map keyed by name: one entry per name.
        if headers.iter().any(|o| o.name == lower) {
            p.add(
                format!("{hf}.name"),
                format!("{:?} is listed twice in one match", h.name),
            );
        }
        if h.value.is_empty() || h.value.len() > limits::MAX_HEADER_VALUE {
            p.add(
                format!("{hf}.value"),
                format!("must be 1 to {} characters long", limits::MAX_HEADER_VALUE),
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
        headers.push(HeaderMatch { name: lower, value });
    }
    let method = m.method.as_ref().map(|v| {
        if !limits::METHODS.contains(&v.as_str()) {
            p.add(
                format!("{field}.method"),
                format!("{v:?} is not one of {}", limits::METHODS.join(", ")),
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
