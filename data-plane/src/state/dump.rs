//! `/config_dump`: the applied snapshot as JSON, with what this sidecar
//! has learned about each endpoint (EWMA, in flight, ejections).

use super::cluster::Cluster;
use super::service::Service;
use crate::balance;
use serde::Serialize;
use std::sync::Arc;

/// `/config_dump` body.
#[derive(Debug, Serialize)]
pub struct Dump {
    version: String,
    services: Vec<DumpService>,
    clusters: Vec<DumpCluster>,
}

#[derive(Debug, Serialize)]
struct DumpService {
    name: String,
    namespace: String,
    resource_version: String,
    /// The addresses apps dial for it.
    virtual_ips: Vec<std::net::IpAddr>,
    routes: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct DumpCluster {
    name: String,
    resource_version: String,
    policy: balance::Policy,
    endpoints: Vec<DumpEndpoint>,
    /// Endpoints without an identity this mTLS sidecar does not reach.
    refused_plaintext: usize,
}

#[derive(Debug, Serialize)]
struct DumpEndpoint {
    address: String,
    instance_id: String,
    version: String,
    identity: Option<String>,
    stats: balance::StatsDump,
}

impl Dump {
    /// The dump of snapshot `version`.
    pub(super) fn new<'a>(
        version: &str,
        services: &[Arc<Service>],
        clusters: impl Iterator<Item = &'a Arc<Cluster>>,
    ) -> Dump {
        Dump {
            version: version.to_string(),
            services: services
                .iter()
                .map(|s| DumpService {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    resource_version: s.resource_version.clone(),
                    virtual_ips: s.virtual_ips.clone(),
                    routes: s.routes.iter().map(|r| r.dump()).collect(),
                })
                .collect(),
            clusters: clusters
                .map(|c| DumpCluster {
                    name: c.name.to_string(),
                    resource_version: c.resource_version.clone(),
                    policy: c.policy.clone(),
                    refused_plaintext: c.refused_plaintext,
                    endpoints: c
                        .endpoints
                        .iter()
                        .zip(&c.stats)
                        .map(|(e, st)| DumpEndpoint {
                            stats: st.dump(),
                            address: e.addr.to_string(),
                            instance_id: e.instance_id.clone(),
                            version: e.version.to_string(),
                            identity: e.identity.as_ref().map(|i| i.to_string()),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
