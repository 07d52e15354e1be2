//! PURE: the view after registry changes to a few services, made from the
//! one before. A registration, a readiness flip or a departure changes
//! only the endpoints of the instance's service and of its version subset:
//! those clusters are made anew and everything else is shared with the
//! view before, so a change costs in proportion to the services it
//! touches, not to the mesh. When the change reaches further (a service
//! appears or loses its last instance) there is no such view, and the
//! caller builds the whole one.

use super::{View, cluster_name, clusters, routes::ByService};
use crate::registry::{Catalog, Instance, ServiceKey};
use crate::rules::RuleSet;
use std::collections::BTreeSet;
use std::sync::Arc;

/// `prev` (built from `rules` and the registry before) after the changes to
/// the services `dirty` names, or None when only a whole build can say.
/// Its services and the names and order of its clusters are `prev`'s; the
/// indices are those of the clusters whose content changed.
pub fn after(
    prev: &View,
    reg: &dyn Catalog,
    rules: &RuleSet,
    dirty: &BTreeSet<ServiceKey>,
) -> Option<(View, Vec<usize>)> {
    let by = ByService::new(rules);
    let mut clusters = prev.clusters.clone();
    let mut changed = Vec::new();
    for (ns, svc) in dirty {
        let instances: Vec<&Instance> = reg
            .instances()
            .filter(|i| i.namespace == *ns && serves(i, svc))
            .collect();
        let known = prev
            .services
            .binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(ns, svc)))
            .is_ok();
        // A new service, or one that may be gone: the set of services is
        // the whole build's to say.
        if !known || instances.is_empty() {
            return None;
        }
        let name = cluster_name(ns, svc);
        // A service no route names has no cluster to remake.
        if let Ok(i) = clusters.binary_search_by(|c| c.name.as_str().cmp(&name)) {
            let c = clusters::cluster(&by, &instances, ns, svc);
            if c.resource_version != clusters[i].resource_version {
                clusters[i] = Arc::new(c);
                changed.push(i);
            }
        }
    }
    let view = View {
        services: prev.services.clone(),
        clusters,
    };
    Some((view, changed))
}

/// Whether `i` is an instance of `svc`: of the service itself, or of its
/// version subset (`<service>-<version>`, as `registry::subset` spells
/// it), compared without building the name.
fn serves(i: &Instance, svc: &str) -> bool {
    i.service == svc
        || (!i.version.is_empty()
            && svc.len() == i.service.len() + 1 + i.version.len()
            && svc.starts_with(i.service.as_str())
            && svc[i.service.len()..].starts_with('-')
            && svc.ends_with(i.version.as_str()))
}
