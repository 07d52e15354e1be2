//! PURE: one backend's cluster (its ready endpoints and the policy its
//! callers apply), and the content hash that is every resource's version.
//! Shared by the whole build and the rebuild after a registry change.

use super::routes::{self, ByService};
use crate::registry::Instance;
use mesh_proto::v1 as pb;
use prost::Message;

/// The cluster of `ns/svc` (a service, or a version subset such as
/// `echo-v1`) over `instances`, those of them that are ready.
pub(super) fn cluster(
    by: &ByService<'_>,
    instances: &[&Instance],
    ns: &str,
    svc: &str,
) -> pb::Cluster {
    // A version subset (echo-v1) takes its service's TrafficPolicy.
    let parent = instances
        .iter()
        .find(|i| i.service != svc)
        .map(|i| i.service.as_str());
    let endpoints = instances
        .iter()
        .filter(|i| i.ready)
        .map(|i| pb::Endpoint {
            address: i.address.clone(),
            instance_id: i.instance_id.clone(),
            version: i.version.clone(),
            identity: i.identity.clone(),
        })
        .collect();
    let mut c = pb::Cluster {
        name: super::cluster_name(ns, svc),
        resource_version: String::new(),
        endpoints,
        policy: Some(routes::backend_policy(by, ns, svc, parent)),
    };
    c.resource_version = content_version(&c);
    c
}

/// A stable content hash (FNV-1a over the encoded message), so a resource's
/// version changes exactly when its content does.
pub(super) fn content_version<M: Message>(m: &M) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in m.encode_to_vec() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
