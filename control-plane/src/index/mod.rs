//! PURE: registry + rules → the config every sidecar receives, and the
//! read-only views `meshctl` shows. The only code of the control plane that
//! builds proto from domain types. No I/O, no locks, no clocks.

mod clusters;
pub mod rebuild;
mod routes;
mod status;
pub mod subset;
pub mod views;

pub use status::{Error, effective_shares, status, warnings};

use crate::registry::{Catalog, ServiceKey};
use crate::rules::{Policy, RuleSet};
use mesh_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The discovery payload shared by every subscriber of one version. Each
/// resource is shared, not copied, with the views before and after it
/// that hold it unchanged (see `rebuild`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Route config per service, ordered by (namespace, name).
    pub services: Vec<Arc<pb::ServiceConfig>>,
    /// Ready endpoints per backend, ordered by name.
    pub clusters: Vec<Arc<pb::Cluster>>,
}

impl View {
    /// The full discovery response carrying this view as `version`.
    pub fn response(&self, version: u64) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: version.to_string(),
            nonce: nonce(version, false),
            services: self.services.iter().map(|s| (**s).clone()).collect(),
            clusters: self.clusters.iter().map(|c| (**c).clone()).collect(),
            ..Default::default()
        }
    }

    /// The incremental response taking a sidecar from `base` (published
    /// as `base_version`) to this view as `version`. Its nonce is marked
    /// (see [`nonce`]) so a reply says which of the two it answers.
    pub fn delta(&self, base: &View, base_version: u64, version: u64) -> pb::DiscoveryResponse {
        let mut d = mesh_proto::incremental::between(
            (&base.services, &base.clusters),
            (&self.services, &self.clusters),
            &base_version.to_string(),
            &version.to_string(),
        );
        d.nonce = nonce(version, true);
        d
    }
}

impl View {
    /// The incremental response from `base_version` to this view as
    /// `version`, when only the clusters at `changed` differ from it (as
    /// `rebuild::after` says): no comparison of the whole view.
    pub fn delta_of(
        &self,
        changed: &[usize],
        base_version: u64,
        version: u64,
    ) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: version.to_string(),
            nonce: nonce(version, true),
            base_version: base_version.to_string(),
            clusters: changed
                .iter()
                .map(|&i| (*self.clusters[i]).clone())
                .collect(),
            ..Default::default()
        }
    }
}

/// The nonce of the response carrying `version`, full or incremental.
/// Each stream gets a version at most once in each form, so nonces are
/// unique per stream, and one encoding serves every stream.
pub fn nonce(version: u64, incremental: bool) -> String {
    if incremental {
        format!("{version}+")
    } else {
        version.to_string()
    }
}

/// The version a reply's nonce names, and whether it answered the
/// incremental response. A stream's own responses add `/<n>` (see
/// `discovery`), which this ignores.
pub fn parse_nonce(nonce: &str) -> Option<(u64, bool)> {
    let nonce = nonce.split_once('/').map_or(nonce, |(n, _)| n);
    match nonce.strip_suffix('+') {
        Some(v) => Some((v.parse().ok()?, true)),
        None => Some((nonce.parse().ok()?, false)),
    }
}

/// Cluster name of a service: `<service>.<namespace>`.
pub fn cluster_name(namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}")
}

/// Builds the view from the catalog and the splits.
pub fn build(reg: &dyn Catalog, rules: &RuleSet) -> View {
    let catalog = reg.services();
    let mut roots: std::collections::BTreeSet<ServiceKey> = catalog.keys().cloned().collect();
    // A routed or protected service is config-worthy even before it has instances.
    roots.extend(
        rules
            .splits
            .values()
            .map(|s| (s.namespace.clone(), s.service.clone()))
            .chain(
                rules
                    .http_routes
                    .values()
                    .map(|r| (r.namespace.clone(), r.service.clone())),
            )
            .chain(
                rules
                    .policies
                    .values()
                    .map(|p| (p.namespace.clone(), p.service.clone())),
            ),
    );
    let by = routes::ByService::new(rules);
    let mut clusters: BTreeMap<String, Arc<pb::Cluster>> = BTreeMap::new();
    let mut cluster_for = |ns: &str, svc: &str| {
        let name = cluster_name(ns, svc);
        clusters.entry(name.clone()).or_insert_with(|| {
            let instances = catalog
                .get(&(ns.to_string(), svc.to_string()))
                .map_or(&[][..], Vec::as_slice);
            Arc::new(clusters::cluster(&by, instances, ns, svc))
        });
        name
    };
    let mut services = Vec::new();
    let mut vips = reg.virtual_ips();
    for (ns, svc) in roots {
        let routes = routes::routes_for(&by, &ns, &svc, &mut |backend| cluster_for(&ns, backend));
        let authorization = by.authorization(&ns, &svc).map(authorization);
        let virtual_ips = vips.remove(&(ns.clone(), svc.clone())).unwrap_or_default();
        let mut sc = pb::ServiceConfig {
            name: svc,
            namespace: ns,
            resource_version: String::new(),
            routes,
            authorization,
            virtual_ips,
        };
        sc.resource_version = clusters::content_version(&sc);
        services.push(Arc::new(sc));
    }
    View {
        services,
        clusters: clusters.into_values().collect(),
    }
}

/// The proto form of a policy.
fn authorization(p: &Policy) -> pb::Authorization {
    use pb::allow_rule::Match;
    pb::Authorization {
        policy: p.name.clone(),
        allow: p
            .allow
            .iter()
            .filter_map(|r| {
                let m = match (&r.identity, &r.namespace, &r.identity_suffix) {
                    (Some(id), _, _) => Match::Identity(id.clone()),
                    (_, Some(ns), _) => Match::Namespace(ns.clone()),
                    (_, _, Some(suffix)) => Match::IdentitySuffix(suffix.clone()),
                    _ => return None,
                };
                Some(pb::AllowRule { r#match: Some(m) })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
