//! The route model in proto form: the routes of one service (HTTPRoute
//! rules, or matched TrafficSplits first and then the unmatched one), with
//! TrafficPolicy defaults filled in, and the policy of one backend.

use crate::rules::route::model::{
    Backend, Fallback, HeaderMatch, HttpRoute, PathMatch, RequestMatch, Retry, RouteRule,
    TrafficPolicy,
};
use crate::rules::{Policy, RuleSet, Split};
use mesh_proto::v1 as pb;
use std::collections::HashMap;

type Key<'a> = (&'a str, &'a str);

/// The rules of each service, grouped once per build: looking them up by
/// scanning every rule for every service made a large mesh quadratic.
/// Where several rules of a kind name one service, the first in
/// `(namespace, name)` order counts, as a scan would have found it.
pub(super) struct ByService<'a> {
    rules: &'a RuleSet,
    splits: HashMap<Key<'a>, Vec<&'a Split>>,
    routes: HashMap<Key<'a>, &'a HttpRoute>,
    policies: HashMap<Key<'a>, &'a TrafficPolicy>,
    authz: HashMap<Key<'a>, &'a Policy>,
}

impl<'a> ByService<'a> {
    pub(super) fn new(rules: &'a RuleSet) -> Self {
        let mut splits: HashMap<Key<'a>, Vec<&'a Split>> = HashMap::new();
        for s in rules.splits.values() {
            splits
                .entry((s.namespace.as_str(), s.service.as_str()))
                .or_default()
                .push(s);
        }
        let mut routes = HashMap::new();
        for r in rules.http_routes.values() {
            routes
                .entry((r.namespace.as_str(), r.service.as_str()))
                .or_insert(r);
        }
        let mut policies = HashMap::new();
        for p in rules.traffic_policies.values() {
            policies
                .entry((p.namespace.as_str(), p.service.as_str()))
                .or_insert(p);
        }
        let mut authz = HashMap::new();
        for p in rules.policies.values() {
            authz
                .entry((p.namespace.as_str(), p.service.as_str()))
                .or_insert(p);
        }
        ByService {
            rules,
            splits,
            routes,
            policies,
            authz,
        }
    }

    /// The TrafficPolicy governing `ns/service`, if any.
    fn policy(&self, ns: &str, service: &str) -> Option<&'a TrafficPolicy> {
        self.policies.get(&(ns, service)).copied()
    }

    /// The AuthorizationPolicy protecting `ns/service`, if any.
    pub(super) fn authorization(&self, ns: &str, service: &str) -> Option<&'a Policy> {
        self.authz.get(&(ns, service)).copied()
    }
}

/// The routes of `ns/service`, first match wins. `cluster` names (and
/// registers) the cluster of a backend service.
pub(super) fn routes_for(
    by: &ByService<'_>,
    ns: &str,
    service: &str,
    cluster: &mut dyn FnMut(&str) -> String,
) -> Vec<pb::Route> {
    let rules = by.rules;
    let policy = by.policy(ns, service);
    let mut model: Vec<RouteRule> = Vec::new();
    // GAMMA is settling on hostnames meaning a match on :authority (as
    // Linkerd does; gateway-api#2885): every rule carries the route's.
    let mut hostnames: &[String] = &[];
    if let Some(r) = by.routes.get(&(ns, service)) {
        model = by_precedence(&r.rules);
        hostnames = &r.hostnames;
    } else {
        let mut splits: Vec<&Split> = by.splits.get(&(ns, service)).cloned().unwrap_or_default();
        // Matched splits first (by name), then the catch-all.
        splits.sort_by_key(|s| (s.matches.is_empty(), s.name.clone()));
        for s in splits {
            let matches = s
                .matches
                .iter()
                .filter_map(|g| rules.route_groups.get(&(ns.to_string(), g.clone())))
                .flat_map(|g| g.matches.iter().map(|(_, m)| m.clone()))
                .collect();
            model.push(RouteRule {
                name: s.name.clone(),
                matches,
                backends: s.backends.clone(),
                timeout_ms: None,
                retry: None,
                mirror: None,
            });
        }
        if model.last().is_none_or(|r| !r.matches.is_empty()) {
            model.push(RouteRule {
                name: "default".into(),
                matches: Vec::new(),
                backends: vec![Backend {
                    service: service.to_string(),
                    weight: 1,
                }],
                timeout_ms: None,
                retry: None,
                mirror: None,
            });
        }
    }
    model
        .into_iter()
        .map(|r| {
            let retry = r
                .retry
                .or_else(|| policy.and_then(|p| p.retry.clone()))
                .unwrap_or_default();
            let mirror = r.mirror.or_else(|| policy.and_then(|p| p.mirror.clone()));
            pb::Route {
                name: r.name,
                r#match: None,
                backends: r
                    .backends
                    .iter()
                    .map(|b| pb::WeightedBackend {
                        cluster: cluster(&b.service),
                        weight: b.weight,
                    })
                    .collect(),
                matches: r.matches.iter().map(request_match).collect(),
                timeout_ms: r
                    .timeout_ms
                    .or_else(|| policy.and_then(|p| p.timeout_ms))
                    .unwrap_or(0),
                retry: retry_proto(&retry),
                mirror: mirror.map(|m| pb::Mirror {
                    cluster: cluster(&m.service),
                    percent: m.percent,
                }),
                hostnames: hostnames.to_vec(),
                shield: rules
                    .shields
                    .get(&(ns.to_string(), service.to_string()))
                    .filter(|s| {
                        let names = |n: &str| r.backends.iter().any(|b| b.service == n);
                        names(&s.canary) && names(&s.stable)
                    })
                    .map(|s| pb::Shield {
                        canary: cluster(&s.canary),
                        stable: cluster(&s.stable),
                    }),
                fault: policy.and_then(|p| p.fault.as_ref()).map(|f| pb::Fault {
                    delay_ms: f.delay_ms,
                    delay_percent: f.delay_percent,
                    abort_status: u32::from(f.abort_status),
                    abort_percent: f.abort_percent,
                }),
                fallback: policy
                    .and_then(|p| p.fallback.as_ref())
                    .map(|f| pb::Fallback {
                        target: Some(match f {
                            Fallback::Service(svc) => pb::fallback::Target::Cluster(cluster(svc)),
                            Fallback::Response {
                                status,
                                headers,
                                body,
                            } => pb::fallback::Target::Response(pb::StaticResponse {
                                status: u32::from(*status),
                                headers: headers
                                    .iter()
                                    .map(|(name, value)| pb::Header {
                                        name: name.clone(),
                                        value: value.clone(),
                                    })
                                    .collect(),
                                body: body.clone().into_bytes(),
                            }),
                        }),
                    }),
            }
        })
        .collect()
}

/// HTTPRoute rules in Gateway API match precedence: one route per match,
/// ordered by exact path, then regex path, then the longest path prefix,
/// then a method, then the most header matches; ties keep declaration
/// order. A match without a path counts as the prefix `/`. (SMI has no
/// such rule: there, declaration order, matched splits first, is the spec.)
fn by_precedence(rules: &[RouteRule]) -> Vec<RouteRule> {
    let mut expanded: Vec<RouteRule> = Vec::new();
    for rule in rules {
        if rule.matches.is_empty() {
            expanded.push(rule.clone());
        }
        for m in &rule.matches {
            expanded.push(RouteRule {
                matches: vec![m.clone()],
                ..rule.clone()
            });
        }
    }
    let key = |r: &RouteRule| {
        let m = r.matches.first();
        let (rank, len) = match m.and_then(|m| m.path.as_ref()) {
            Some(PathMatch::Exact(p)) => (3, p.len()),
            Some(PathMatch::Regex(p)) => (2, p.len()),
            Some(PathMatch::Prefix(p)) => (1, p.trim_end_matches('/').len()),
            None => (1, 0),
        };
        let method = m.is_some_and(|m| m.method.is_some());
        let headers = m.map_or(0, |m| m.headers.len());
        std::cmp::Reverse((rank, len, method, headers))
    };
    // Stable: equal keys keep declaration order.
    expanded.sort_by_key(key);
    expanded
}

/// A policy with nothing to retry on is no policy: the sidecar then skips
/// buffering bodies for replay.
fn retry_proto(r: &Retry) -> Option<pb::RetryPolicy> {
    if r.retry_on.is_empty() && r.grpc_codes.is_empty() {
        return None;
    }
    Some(pb::RetryPolicy {
        max_retries: r.attempts,
        per_try_timeout_ms: r.per_try_timeout_ms,
        backoff_base_ms: r.backoff_ms,
        backoff_max_ms: r.max_backoff_ms,
        retry_on: r.retry_on.clone(),
        grpc_codes: r.grpc_codes.clone(),
        non_idempotent: r.non_idempotent,
        budget_ratio: r.budget_ratio,
        budget_min_per_sec: r.budget_min_per_second,
    })
}

fn request_match(m: &RequestMatch) -> pb::RequestMatch {
    use pb::request_match::Path;
    pb::RequestMatch {
        path: m.path.as_ref().map(|p| match p {
            PathMatch::Exact(v) => Path::PathExact(v.clone()),
            PathMatch::Prefix(v) => Path::PathPrefix(v.clone()),
            PathMatch::Regex(v) => Path::PathRegex(v.clone()),
        }),
        method: m.method.clone().unwrap_or_default(),
        headers: m.headers.iter().map(header_match).collect(),
    }
}

fn header_match(h: &HeaderMatch) -> pb::HeaderMatch {
    use pb::header_match::Value;
    pb::HeaderMatch {
        name: h.name.clone(),
        value: Some(match &h.value {
            Ok(exact) => Value::Exact(exact.clone()),
            Err(re) => Value::Regex(re.clone()),
        }),
    }
}

/// The policy of backend `service`: its own TrafficPolicy, else that of
/// `parent` (the service it is a version subset of), else the defaults.
pub(super) fn backend_policy(
    by: &ByService<'_>,
    ns: &str,
    service: &str,
    parent: Option<&str>,
) -> pb::BackendPolicy {
    let default = TrafficPolicy::default();
    let p = by
        .policy(ns, service)
        .or_else(|| parent.and_then(|parent| by.policy(ns, parent)))
        .unwrap_or(&default);
    pb::BackendPolicy {
        load_balancer: match p.load_balancer.as_str() {
            "round-robin" => pb::LoadBalancer::RoundRobin,
            "least-request" => pb::LoadBalancer::LeastRequest,
            _ => pb::LoadBalancer::P2cEwma,
        } as i32,
        consecutive_failures: p.consecutive_failures,
        base_ejection_ms: p.base_ejection_ms,
        max_ejection_percent: p.max_ejection_percent,
        max_requests: p.max_requests,
        max_pending: p.max_pending,
        allow_plaintext: p.allow_plaintext,
    }
}
