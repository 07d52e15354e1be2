//! mesh's registry kinds as written: `Service` (instances listed by hand)
//! and `Workload` (an app `meshctl up` runs behind sidecars). They seed the
//! local registry; `apply` refuses them.

use super::meta::ObjectMeta;
use serde::Deserialize;

/// mesh's `Service`: a service whose instances are listed by hand.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// Always `mesh.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Service`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// Instances.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// `spec` of a Service.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Statically known instances (each one's inbound sidecar listener).
    #[serde(default)]
    pub instances: Vec<StaticInstance>,
}

/// An instance listed in a Service document.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticInstance {
    /// Unique instance id.
    pub id: String,
    /// "ip:port" of the instance's inbound sidecar listener.
    pub address: String,
    /// Version label; the instance also joins `<service>-<version>`.
    #[serde(default)]
    pub version: String,
    /// SPIFFE ID the instance presents over mTLS; absent for plaintext.
    #[serde(default)]
    pub identity: String,
}

/// mesh's `Workload`: an app run by `meshctl up` with a sidecar per replica.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    /// Always `mesh.dev/v1alpha1`.
    pub api_version: String,
    /// Always `Workload`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// What to run.
    pub spec: WorkloadSpec,
}

/// `spec` of a Workload.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Service the replicas belong to.
    pub service: String,
    /// Version label, e.g. `v1`; replicas also serve `<service>-<version>`.
    #[serde(default)]
    pub version: String,
    /// Number of replicas.
    #[serde(default = "one")]
    pub replicas: u32,
    /// The app's command line; `{port}`, `{service}`, `{version}` and
    /// `{instance}` are substituted. Absent for a client-only sidecar.
    #[serde(default)]
    pub command: Vec<String>,
    /// Health check the sidecar runs against the app.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// Service account the replicas run as (their SPIFFE ID's `sa/`);
    /// default: the service's name. Only this identity may register them.
    #[serde(default)]
    pub service_account: Option<String>,
}

fn one() -> u32 {
    1
}

/// An HTTP health check against the app.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path probed with GET; 2xx means healthy.
    pub path: String,
    /// Probe interval in milliseconds.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// Consecutive failures before the instance leaves the endpoint set.
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    /// Consecutive successes before it rejoins.
    #[serde(default)]
    pub success_threshold: Option<u32>,
}
