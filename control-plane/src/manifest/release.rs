//! The `Release` kind as written (mesh.dev/v1alpha1): which service, which
//! backends, the steps, and the analysis every step must pass. Parsing
//! only; the release module validates and fills in defaults.

use super::meta::{ObjectMeta, RawNumber};
use serde::Deserialize;

/// mesh's `Release`: an automated canary release of one service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Release {
    /// Always `mesh.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Release`.
    pub kind: String,
    /// Name and namespace (the service's namespace).
    pub metadata: ObjectMeta,
    /// What the release does.
    pub spec: ReleaseSpec,
}

/// `spec` of a Release.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReleaseSpec {
    /// The service whose split moves.
    pub service: String,
    /// The backend keeping the traffic; absent: the split's other backend.
    #[serde(default)]
    pub stable: Option<String>,
    /// The backend being released.
    pub canary: String,
    /// Canary weights in percent, ascending.
    #[serde(default)]
    pub steps: Option<Vec<RawNumber>>,
    /// Or steps of this many percent ...
    #[serde(default)]
    pub step_weight: Option<RawNumber>,
    /// ... up to this one.
    #[serde(default)]
    pub max_weight: Option<RawNumber>,
    /// Time at each step before its check ("30s").
    #[serde(default)]
    pub interval: Option<String>,
    /// What a step's check measures.
    #[serde(default)]
    pub analysis: Option<Analysis>,
    /// Wait at the last step for `meshctl release promote`.
    #[serde(default)]
    pub manual_promotion: Option<bool>,
    /// Hooks the release calls.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// Retry a canary's failure once on the stable (default true).
    #[serde(default)]
    pub shield: Option<bool>,
}

/// `spec.webhooks[]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Shown in status.
    pub name: String,
    /// pre-rollout, rollout, confirm-promotion, post-rollout or rollback.
    #[serde(rename = "type")]
    pub kind: String,
    /// `http://host:port/path` or `https://…`.
    pub url: String,
    /// Per attempt ("5s").
    #[serde(default)]
    pub timeout: Option<String>,
    /// Attempts after the first.
    #[serde(default)]
    pub retries: Option<RawNumber>,
    /// Sent along in the payload.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// https: base64 of the PEM roots its certificate must chain to (as a
    /// Kubernetes webhook's caBundle).
    #[serde(default, rename = "caBundle")]
    pub ca_bundle: Option<String>,
}

/// `spec.analysis`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Analysis {
    /// Least canary success rate, percent.
    #[serde(default)]
    pub success_rate: Option<f64>,
    /// Most canary p99 ("500ms").
    #[serde(default)]
    pub p99: Option<String>,
    /// Least canary requests in a step's window.
    #[serde(default)]
    pub min_requests: Option<RawNumber>,
    /// Failed checks in a row that roll back.
    #[serde(default)]
    pub failure_threshold: Option<RawNumber>,
    /// A release that has not moved for this long rolls back ("10m").
    #[serde(default)]
    pub progress_deadline: Option<String>,
    /// The canary against the stable, in the same window.
    #[serde(default)]
    pub compare: Option<Compare>,
}

/// `spec.analysis.compare`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Compare {
    /// Most success-rate points the canary may trail the stable by.
    #[serde(default)]
    pub max_success_rate_gap: Option<f64>,
    /// Most canary p99 / stable p99.
    #[serde(default)]
    pub max_p99_ratio: Option<f64>,
}
