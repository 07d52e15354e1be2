//! The YAML shapes of the routing kinds, exactly as their specs spell them:
//! SMI HTTPRouteGroup (specs.smi-spec.io/v1alpha4), Gateway API HTTPRoute
//! (gateway.networking.k8s.io/v1, with a Service parentRef as in GAMMA), and
//! mesh's TrafficPolicy. Parsing only; `compile` validates.

use crate::manifest::{ObjectMeta, RawNumber};
use serde::Deserialize;
use std::collections::BTreeMap;

/// API version of SMI HTTPRouteGroup.
pub const SPECS_API_VERSION: &str = "specs.smi-spec.io/v1alpha4";
/// API version of Gateway API HTTPRoute.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// SMI `HTTPRouteGroup`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteGroup {
    /// Always `specs.smi-spec.io/v1alpha4`.
    pub api_version: String,
    /// Always `HTTPRouteGroup`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The matches.
    pub spec: HttpRouteGroupSpec,
}

/// `spec` of an HTTPRouteGroup.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteGroupSpec {
    /// Named matches; a TrafficSplit referencing the group takes any of them.
    pub matches: Vec<SmiMatch>,
}

/// One SMI match: every field set must hold.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SmiMatch {
    /// Name of the match.
    pub name: String,
    /// Regex over the whole path.
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Methods; `*` means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name → regex over the whole value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A `matches` entry of a TrafficSplit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SplitMatchRef {
    /// Always `HTTPRouteGroup`.
    pub kind: String,
    /// Group name, in the split's namespace.
    pub name: String,
    /// `specs.smi-spec.io`, if given.
    #[serde(default)]
    pub api_group: Option<String>,
}

/// Gateway API `HTTPRoute` bound to a Service (GAMMA).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// Always `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// Always `HTTPRoute`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// Parent and rules.
    pub spec: HttpRouteSpec,
}

/// `spec` of an HTTPRoute.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The Service whose traffic the route takes.
    pub parent_refs: Vec<ParentRef>,
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A parentRef; mesh supports `kind: Service` with the core group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// `""` (core) for a Service.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Service name.
    pub name: String,
    /// Must be the route's own namespace if given.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Accepted and ignored: a service's ports share its routes here.
    #[serde(default)]
    pub port: Option<u16>,
}

/// One HTTPRoute rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Rule name (Gateway API v1.2+); generated when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Any match selects the rule; none matches every request.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Weighted backends.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Request and per-backend-request timeouts.
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// Retries (Gateway API v1.2 `HTTPRouteRetry`).
    #[serde(default)]
    pub retry: Option<GatewayRetry>,
    /// Filters; mesh supports `RequestMirror`.
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// One HTTPRoute match.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path match.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// Header matches.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<String>,
}

/// `path` of a match.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The path or pattern; `/` when absent.
    #[serde(default)]
    pub value: Option<String>,
}

/// A header match.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Header name (case-insensitive).
    pub name: String,
    /// Value or pattern.
    pub value: String,
}

/// A weighted backendRef.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// Service name.
    pub name: String,
    /// `""` for a Service.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight; 1 when absent.
    #[serde(default)]
    pub weight: Option<RawNumber>,
}

/// `timeouts` of a rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request, retries included.
    #[serde(default)]
    pub request: Option<String>,
    /// One attempt.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// Gateway API `retry`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayRetry {
    /// HTTP statuses that are retried.
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    #[serde(default)]
    pub attempts: Option<RawNumber>,
    /// Backoff before a retry.
    #[serde(default)]
    pub backoff: Option<String>,
}

/// An HTTPRoute filter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filter {
    /// Filter type; mesh supports `RequestMirror`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Set for `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
}

/// A `RequestMirror` filter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// Shadow service.
    pub backend_ref: BackendRef,
    /// Share of requests copied; 100 when absent.
    #[serde(default)]
    pub percent: Option<RawNumber>,
}

/// mesh's `TrafficPolicy`: how callers treat one service (its backends and
/// subsets), and the defaults for every route to it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Always `mesh.dev/v1alpha1`.
    pub api_version: String,
    /// Always `TrafficPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: TrafficPolicySpec,
}

/// `spec` of a TrafficPolicy.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The service it governs.
    pub service: String,
    /// `p2c-ewma` (default), `round-robin` or `least-request`.
    #[serde(default)]
    pub load_balancer: Option<String>,
    /// Ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: Option<OutlierSpec>,
    /// Concurrency limits.
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
    /// Default request timeout of its routes.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Default retry policy of its routes.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Mirroring of its routes.
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
    /// Faults injected on its routes.
    #[serde(default)]
    pub fault: Option<FaultSpec>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierSpec {
    /// Failures in a row that eject; 0 disables ejection.
    #[serde(default)]
    pub consecutive_failures: Option<RawNumber>,
    /// First ejection time.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Cap on the share ejected at once, percent.
    #[serde(default)]
    pub max_ejection_percent: Option<RawNumber>,
}

/// `limits`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Concurrent requests per calling sidecar.
    #[serde(default)]
    pub max_requests: Option<RawNumber>,
    /// Concurrent connection attempts per calling sidecar.
    #[serde(default)]
    pub max_pending_connections: Option<RawNumber>,
}

/// `retry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries after the first attempt (at least 1).
    #[serde(default)]
    pub attempts: Option<RawNumber>,
    /// Deadline per attempt.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Conditions: `5xx`, `gateway-error`, `connect-failure`, `reset`, or a status.
    #[serde(default)]
    pub retry_on: Option<Vec<String>>,
    /// gRPC status names, e.g. `unavailable`.
    #[serde(default)]
    pub grpc_codes: Option<Vec<String>>,
    /// First backoff.
    #[serde(default)]
    pub backoff: Option<String>,
    /// Backoff cap.
    #[serde(default)]
    pub max_backoff: Option<String>,
    /// Retry POST, PATCH and other non-idempotent methods too.
    #[serde(default)]
    pub non_idempotent: Option<bool>,
    /// The retry budget.
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
}

/// `retry.budget`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetSpec {
    /// Retries as a share of requests, 0–1.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Retries per second always allowed.
    #[serde(default)]
    pub min_per_second: Option<RawNumber>,
}

/// `mirror`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorSpec {
    /// Shadow service.
    pub service: String,
    /// Share of requests copied, 0–100.
    #[serde(default)]
    pub percent: Option<f64>,
}

/// `fault`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultSpec {
    /// Added latency.
    #[serde(default)]
    pub delay: Option<DelaySpec>,
    /// Synthesized errors.
    #[serde(default)]
    pub abort: Option<AbortSpec>,
}

/// `fault.delay`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelaySpec {
    /// How long.
    pub fixed_delay: String,
    /// Share of requests, 0–100.
    pub percent: f64,
}

/// `fault.abort`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbortSpec {
    /// Status to answer with.
    pub http_status: u16,
    /// Share of requests, 0–100.
    pub percent: f64,
}
