//! The one internal route model that TrafficSplit + HTTPRouteGroup and
//! Gateway API HTTPRoute both compile into, plus TrafficPolicy (backend
//! behaviour and route defaults). Validated here, stored in the rule set,
//! and turned into proto by `index`. Pure: no I/O.

mod compile;
pub mod docs;
mod gateway;
mod proto;
mod traffic;

pub use compile::{duration_ms, routing_from};
pub use proto::{backend_policy, routes_for};

use crate::manifest::{self, Located};
use crate::rules::{Outcome, Outcomes, RuleSet};
use serde::{Deserialize, Serialize};

/// Gateway API's limit on rules per HTTPRoute.
pub const MAX_RULES: usize = 16;

/// One route: matches, weighted backends and policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRule {
    /// Name, unique within the service.
    pub name: String,
    /// Any match selects the route; none matches everything.
    pub matches: Vec<RequestMatch>,
    /// Backend services (same namespace) and relative weights.
    pub backends: Vec<crate::rules::Backend>,
    /// Request timeout, ms; `None` inherits the TrafficPolicy's.
    pub timeout_ms: Option<u64>,
    /// `None` inherits the TrafficPolicy's or the mesh default.
    pub retry: Option<Retry>,
    /// `None` inherits the TrafficPolicy's.
    pub mirror: Option<Mirror>,
}

/// Conditions that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Upper-case method.
    pub method: Option<String>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Whole leading segments.
    Prefix(String),
    /// Anchored regex.
    Regex(String),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Lower-case name.
    pub name: String,
    /// Exact value, or an anchored regex.
    pub value: Result<String, String>,
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// Retries after the first attempt, ≥ 1.
    pub attempts: u32,
    /// Per attempt, ms; 0 for none.
    pub per_try_timeout_ms: u64,
    /// First backoff, ms.
    pub backoff_ms: u64,
    /// Backoff cap, ms.
    pub max_backoff_ms: u64,
    /// Conditions.
    pub retry_on: Vec<String>,
    /// gRPC codes, numeric.
    pub grpc_codes: Vec<u32>,
    /// Retry non-idempotent methods too.
    pub non_idempotent: bool,
    /// Budget ratio, 0–1.
    pub budget_ratio: f64,
    /// Budget floor per second.
    pub budget_min_per_second: u32,
}

impl Default for Retry {
    /// The mesh default: two retries of idempotent requests that failed
    /// before the app could have acted (connect failure, reset) or that a
    /// gateway reported (502–504, gRPC UNAVAILABLE), within a 20% + 10/s budget.
    fn default() -> Self {
        Retry {
            attempts: 2,
            per_try_timeout_ms: 0,
            backoff_ms: 25,
            max_backoff_ms: 250,
            retry_on: vec![
                "gateway-error".into(),
                "connect-failure".into(),
                "reset".into(),
            ],
            grpc_codes: vec![14],
            non_idempotent: false,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
        }
    }
}

/// Shadow traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    /// Shadow service.
    pub service: String,
    /// Share, 0–100.
    pub percent: f64,
}

/// Injected faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Delay, ms.
    pub delay_ms: u64,
    /// Share delayed, 0–100.
    pub delay_percent: f64,
    /// Abort status.
    pub abort_status: u16,
    /// Share aborted, 0–100.
    pub abort_percent: f64,
}

/// An SMI HTTPRouteGroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteGroup {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Named matches.
    pub matches: Vec<(String, RequestMatch)>,
}

/// A Gateway API HTTPRoute on a Service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The parent Service.
    pub service: String,
    /// Rules, first match wins.
    pub rules: Vec<RouteRule>,
}

/// A TrafficPolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Governed service (and its version subsets).
    pub service: String,
    /// `p2c-ewma`, `round-robin` or `least-request`.
    pub load_balancer: String,
    /// 0 disables ejection.
    pub consecutive_failures: u32,
    /// First ejection, ms.
    pub base_ejection_ms: u64,
    /// Cap, percent.
    pub max_ejection_percent: u32,
    /// Concurrent requests per caller; 0 unlimited.
    pub max_requests: u32,
    /// Concurrent connection attempts per caller; 0 unlimited.
    pub max_pending: u32,
    /// Default request timeout, ms.
    pub timeout_ms: Option<u64>,
    /// Default retry policy.
    pub retry: Option<Retry>,
    /// Mirroring of every route.
    pub mirror: Option<Mirror>,
    /// Faults on every route.
    pub fault: Option<Fault>,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        TrafficPolicy {
            name: String::new(),
            namespace: String::new(),
            service: String::new(),
            load_balancer: "p2c-ewma".into(),
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_percent: 50,
            max_requests: 0,
            max_pending: 0,
            timeout_ms: None,
            retry: None,
            mirror: None,
            fault: None,
        }
    }
}

/// The routing documents of one apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// HTTPRouteGroups.
    pub groups: Vec<RouteGroup>,
    /// HTTPRoutes.
    pub routes: Vec<HttpRoute>,
    /// TrafficPolicies.
    pub policies: Vec<TrafficPolicy>,
}

/// Upserts the routing documents into `next` (already holding this apply's
/// splits) and checks the merged set: TrafficSplit matches name existing
/// groups, a service is routed by TrafficSplits or by one HTTPRoute, never
/// both, and has at most one TrafficPolicy.
pub fn apply(
    next: &mut RuleSet,
    new: &Routing,
    docs: &[Located],
) -> Result<Outcomes, Vec<manifest::Error>> {
    let mut outcomes = Vec::new();
    let mut note = |kind: &str, ns: &str, name: &str, o: Outcome| {
        outcomes.push((format!("{} {ns}/{name}", kind.to_lowercase()), o));
    };
    for g in &new.groups {
        let o = crate::rules::upsert(
            &mut next.route_groups,
            (g.namespace.clone(), g.name.clone()),
            g,
        );
        note("HTTPRouteGroup", &g.namespace, &g.name, o);
    }
    for r in &new.routes {
        let o = crate::rules::upsert(
            &mut next.http_routes,
            (r.namespace.clone(), r.name.clone()),
            r,
        );
        note("HTTPRoute", &r.namespace, &r.name, o);
    }
    for p in &new.policies {
        let o = crate::rules::upsert(
            &mut next.traffic_policies,
            (p.namespace.clone(), p.name.clone()),
            p,
        );
        note("TrafficPolicy", &p.namespace, &p.name, o);
    }
    let mut errors = Vec::new();
    for s in next.splits.values() {
        for (i, g) in s.matches.iter().enumerate() {
            if !next
                .route_groups
                .contains_key(&(s.namespace.clone(), g.clone()))
            {
                errors.push(manifest::Error::about(
                    manifest::find(docs, "TrafficSplit", &s.namespace, &s.name),
                    &format!("TrafficSplit {}/{}", s.namespace, s.name),
                    format!("spec.matches[{i}].name"),
                    format!(
                        "no HTTPRouteGroup {}/{g}; apply it in the same file or first",
                        s.namespace
                    ),
                ));
            }
        }
    }
    for r in next.http_routes.values() {
        let at = manifest::find(docs, "HTTPRoute", &r.namespace, &r.name);
        let object = format!("HTTPRoute {}/{}", r.namespace, r.name);
        if let Some(s) = next
            .splits
            .values()
            .find(|s| s.namespace == r.namespace && s.service == r.service)
        {
            errors.push(manifest::Error::about(
                at.or_else(|| manifest::find(docs, "TrafficSplit", &s.namespace, &s.name)),
                &object,
                "spec.parentRefs[0].name".into(),
                format!(
                    "service {:?} is already routed by TrafficSplit {}/{}; use one syntax per service",
                    r.service, s.namespace, s.name
                ),
            ));
        }
        if let Some(other) = next
            .http_routes
            .values()
            .find(|o| o.namespace == r.namespace && o.service == r.service && o.name < r.name)
        {
            errors.push(manifest::Error::about(
                at,
                &object,
                "spec.parentRefs[0].name".into(),
                format!(
                    "service {:?} already has HTTPRoute {}/{}; put every rule for a service in one HTTPRoute",
                    r.service, other.namespace, other.name
                ),
            ));
        }
    }
    for p in next.traffic_policies.values() {
        if let Some(other) = next
            .traffic_policies
            .values()
            .find(|o| o.namespace == p.namespace && o.service == p.service && o.name < p.name)
        {
            errors.push(manifest::Error::about(
                manifest::find(docs, "TrafficPolicy", &p.namespace, &p.name),
                &format!("TrafficPolicy {}/{}", p.namespace, p.name),
                "spec.service".into(),
                format!(
                    "service {:?} already has TrafficPolicy {}/{}",
                    p.service, other.namespace, other.name
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(outcomes)
    } else {
        Err(errors)
    }
}

/// Refuses mirrors to services nothing serves or declares: a mirror that
/// silently copies to nowhere would make a shadow test meaningless.
pub fn check_mirrors(
    new: &Routing,
    docs: &[Located],
    knows: impl Fn(&str, &str) -> bool,
) -> Result<(), Vec<manifest::Error>> {
    let mut errors = Vec::new();
    let mut check = |kind: &str, ns: &str, name: &str, field: String, m: &Mirror| {
        if !knows(ns, &m.service) {
            errors.push(manifest::Error::about(
                manifest::find(docs, kind, ns, name),
                &format!("{kind} {ns}/{name}"),
                field,
                format!("mirror names unknown service {ns}/{}", m.service),
            ));
        }
    };
    for r in &new.routes {
        for (i, rule) in r.rules.iter().enumerate() {
            if let Some(m) = &rule.mirror {
                check(
                    "HTTPRoute",
                    &r.namespace,
                    &r.name,
                    format!("spec.rules[{i}].filters"),
                    m,
                );
            }
        }
    }
    for p in &new.policies {
        if let Some(m) = &p.mirror {
            check(
                "TrafficPolicy",
                &p.namespace,
                &p.name,
                "spec.mirror.service".into(),
                m,
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests;
