//! The read-only views `meshctl` shows, in proto form: a service's routes
//! and the clusters they name (from the snapshot sidecars run), workload
//! identities, splits, and the problems of a refused apply.

use super::View;
use crate::manifest;
use crate::registry::Instance;
use crate::rules::Split;
use mesh_proto::v1 as pb;
use std::collections::BTreeSet;

/// `meshctl get routes`: `namespace/service`'s config in `view` (version
/// `version`) and the clusters it names.
pub fn routes(
    view: &View,
    version: u64,
    namespace: &str,
    service: &str,
) -> Result<pb::GetRoutesResponse, super::Error> {
    let sc = view
        .services
        .iter()
        .find(|s| s.namespace == namespace && s.name == service)
        .ok_or_else(|| super::Error::UnknownService {
            namespace: namespace.into(),
            service: service.into(),
        })?;
    let named: BTreeSet<&str> = super::subset::named_clusters(sc).collect();
    Ok(pb::GetRoutesResponse {
        version: version.to_string(),
        service: Some((**sc).clone()),
        clusters: view
            .clusters
            .iter()
            .filter(|c| named.contains(c.name.as_str()))
            .map(|c| (**c).clone())
            .collect(),
    })
}

/// Instances with the expiry of their certificates (0 when unknown).
pub fn identities<'a>(
    instances: impl IntoIterator<Item = (&'a Instance, i64)>,
) -> Vec<pb::WorkloadIdentity> {
    instances
        .into_iter()
        .map(|(i, not_after)| pb::WorkloadIdentity {
            namespace: i.namespace.clone(),
            service: i.service.clone(),
            instance_id: i.instance_id.clone(),
            identity: i.identity.clone(),
            cert_not_after_unix: not_after,
        })
        .collect()
}

/// A split as `meshctl get splits` shows it.
pub fn split(s: &Split) -> pb::Split {
    pb::Split {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        service: s.service.clone(),
        backends: s
            .backends
            .iter()
            .map(|b| pb::SplitBackend {
                service: b.service.clone(),
                weight: b.weight,
            })
            .collect(),
    }
}

/// One problem of a refused apply or delete.
pub fn problem(e: &manifest::Error) -> pb::Problem {
    pb::Problem {
        file: e.file.clone(),
        line: e.line as u32,
        object: e.object.clone().unwrap_or_default(),
        field: e.field.clone().unwrap_or_default(),
        problem: e.problem.clone(),
    }
}
