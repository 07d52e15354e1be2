//! mesh's own rule kinds as written: `AuthorizationPolicy` (who may call a
//! service) and `TrafficPolicy` (how callers treat it). Parsing only; the
//! rules module validates.

use super::meta::{ObjectMeta, RawNumber};
use serde::Deserialize;

/// mesh's `AuthorizationPolicy`: the callers a service accepts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// Always `mesh.dev/v1alpha1`.
    pub api_version: String,
    /// Always `AuthorizationPolicy`.
    pub kind: String,
    /// Name and namespace (the target service's namespace).
    pub metadata: ObjectMeta,
    /// Target and rules.
    pub spec: AuthorizationSpec,
}

/// `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSpec {
    /// Service the policy protects.
    pub service: String,
    /// A caller is allowed when any rule matches; an empty list denies everyone.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
}

/// One rule: exactly one field set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AllowRule {
    /// Exactly this SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Any service account in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Any SPIFFE ID ending with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_suffix: Option<String>,
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
    /// What answers while the service has no usable endpoint.
    #[serde(default)]
    pub fallback: Option<FallbackSpec>,
    /// How mTLS callers treat endpoints without a verified identity.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// `tls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSpec {
    /// `strict` (default): a caller with a workload identity reaches only
    /// endpoints that prove theirs; `permissive`: it also reaches endpoints
    /// without one, in plaintext.
    pub mode: String,
}

/// `fallback`: another service, or a response of our own; exactly one.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FallbackSpec {
    /// A service to send requests to instead.
    #[serde(default)]
    pub service: Option<String>,
    /// A static answer.
    #[serde(default)]
    pub response: Option<StaticResponseSpec>,
}

/// `fallback.response`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticResponseSpec {
    /// HTTP status.
    pub status: RawNumber,
    /// Response headers, name to value.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Body, as text.
    #[serde(default)]
    pub body: String,
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
