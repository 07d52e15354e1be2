//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) as upstream
//! spells it, bound to a Service parent as in GAMMA. Parsing only; the
//! rules module validates.

use super::meta::{ObjectMeta, RawNumber};
use serde::Deserialize;

/// API version of Gateway API HTTPRoute.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

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
    /// Host names (Host / :authority, port ignored; `*.` wildcards) the
    /// route takes; empty takes every name of the Service.
    #[serde(default)]
    pub hostnames: Vec<String>,
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
    /// Accepted and ignored, like `port` (a Service port's name).
    #[serde(default)]
    pub section_name: Option<String>,
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
    /// Read so that it can be refused by name (not supported).
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
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
    /// Read so that it can be refused by name (not supported).
    #[serde(default)]
    pub query_params: Vec<serde_json::Value>,
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
    /// Must be the route's own namespace if given.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Relative weight; 1 when absent.
    #[serde(default)]
    pub weight: Option<RawNumber>,
    /// Per-backend filters: read so that they can be refused by name.
    #[serde(default)]
    pub filters: Vec<serde_json::Value>,
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

/// An HTTPRoute filter. (No `deny_unknown_fields`: `other` takes them.)
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Filter type; mesh supports `RequestMirror`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Set for `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    /// The other filter kinds' settings, read so that a filter mesh does
    /// not support is refused by its type rather than as an unknown field.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
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
