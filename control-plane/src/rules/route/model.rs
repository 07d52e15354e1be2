//! The one route model that TrafficSplit + HTTPRouteGroup and Gateway API
//! HTTPRoute both compile into, and TrafficPolicy (backend behaviour and
//! route defaults): plain data, validated by the files beside this one,
//! stored in the rule set, and turned into proto by `index`.

use serde::{Deserialize, Serialize};

/// A backend and its relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Backend service, same namespace as the route.
    pub service: String,
    /// Relative weight.
    pub weight: u32,
}

/// One route: matches, weighted backends and policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRule {
    /// Name, unique within the service.
    pub name: String,
    /// Any match selects the route; none matches everything.
    pub matches: Vec<RequestMatch>,
    /// Backend services (same namespace) and relative weights.
    pub backends: Vec<Backend>,
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
    /// Host names the route takes (`*.` wildcards); empty: every name.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, first match wins.
    pub rules: Vec<RouteRule>,
}

impl RequestMatch {
    /// Whether it takes every request: no condition but at most the path
    /// prefix `/` (how the upstream guides write a catch-all).
    pub fn takes_all(&self) -> bool {
        self.method.is_none()
            && self.headers.is_empty()
            && match &self.path {
                None => true,
                Some(PathMatch::Prefix(p)) => p.trim_end_matches('/').is_empty(),
                _ => false,
            }
    }
}

impl HttpRoute {
    /// The index of the rule a release moves: the first that takes every
    /// request (no matches, or a catch-all match), else the last.
    pub fn release_rule(&self) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.matches.is_empty() || r.matches.iter().any(RequestMatch::takes_all))
            .or_else(|| self.rules.len().checked_sub(1))
    }
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
    /// What answers while the service has no usable endpoint.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// mTLS callers may reach its endpoints that have no verified identity,
    /// in plaintext (`tls.mode: permissive`).
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// A service's fallback, used only while none of a route's backends has a
/// usable endpoint (every one ejected, or none ready).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fallback {
    /// Another service, same namespace.
    Service(String),
    /// A response of the sidecar's own.
    Response {
        /// HTTP status.
        status: u16,
        /// Headers, in order.
        headers: Vec<(String, String)>,
        /// Body.
        body: String,
    },
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
            fallback: None,
            allow_plaintext: false,
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
