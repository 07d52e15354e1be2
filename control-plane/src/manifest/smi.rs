//! The SMI kinds as upstream spells them: `TrafficSplit`
//! (split.smi-spec.io/v1alpha4) and `HTTPRouteGroup`
//! (specs.smi-spec.io/v1alpha4). Parsing only; the rules module validates.

use super::meta::{ObjectMeta, RawNumber};
use serde::Deserialize;
use std::collections::BTreeMap;

/// API version of SMI TrafficSplit that mesh implements.
pub const SPLIT_API_VERSION: &str = "split.smi-spec.io/v1alpha4";
/// API version of SMI HTTPRouteGroup.
pub const SPECS_API_VERSION: &str = "specs.smi-spec.io/v1alpha4";

/// SMI TrafficSplit `split.smi-spec.io/v1alpha4`, as upstream defines it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficSplit {
    /// Always `split.smi-spec.io/v1alpha4`.
    pub api_version: String,
    /// Always `TrafficSplit`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The split itself.
    pub spec: TrafficSplitSpec,
}

/// `spec` of a TrafficSplit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrafficSplitSpec {
    /// The root (apex) service clients address.
    pub service: String,
    /// Backends and their relative weights.
    pub backends: Vec<SplitBackend>,
    /// HTTPRouteGroup references: the split applies only to matching requests.
    #[serde(default)]
    pub matches: Vec<SplitMatchRef>,
}

/// One backend of a TrafficSplit.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitBackend {
    /// Backend service name, in the split's namespace.
    pub service: String,
    /// Relative weight, kept raw so validation can say exactly what is wrong.
    pub weight: RawNumber,
}

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
