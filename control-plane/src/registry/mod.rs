//! Service discovery: which instances exist, where they listen, whether
//! they are ready and which identity they present. A backend fills a
//! [`Catalog`]; the index reads only that, so local mode (`local`: Service
//! documents and sidecar heartbeats) and the Kubernetes backend
//! (`cluster`: Services, EndpointSlices and Pods, kept current by the
//! watchers in `crate::kubernetes`) feed the same config.
//!
//! Every instance of service `S` with version `V` is an endpoint of `S` and
//! of the subset service `S-V`, the naming SMI release workflows use for
//! backends (`echo` splits over `echo-v1` and `echo-v2`).

pub mod claim;
pub mod cluster;
pub mod lease;
pub mod local;
pub mod vips;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `(namespace, service)`.
pub type ServiceKey = (String, String);

/// Where an instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// Listed in a Service document; never expires.
    Static,
    /// Registered by its sidecar; expires when heartbeats stop.
    Registered,
    /// An endpoint of the Kubernetes registry (EndpointSlices).
    Cluster,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Namespace.
    pub namespace: String,
    /// Service it belongs to.
    pub service: String,
    /// Version label (may be empty).
    pub version: String,
    /// Unique id within the namespace.
    pub instance_id: String,
    /// "ip:port" of its inbound sidecar listener.
    pub address: String,
    /// Whether its app passes health checks.
    pub ready: bool,
    /// SPIFFE ID its inbound presents over mTLS; empty for plaintext.
    #[serde(default)]
    pub identity: String,
    /// The verified identity that registered it; empty for static ones.
    #[serde(default)]
    pub owner: String,
    /// Static or registered.
    pub source: Source,
}

/// What every registry backend offers the index: its instances and the
/// services it knows of before any instance exists.
pub trait Catalog {
    /// Every instance, ready or not.
    fn instances(&self) -> Box<dyn Iterator<Item = &Instance> + '_>;

    /// Services declared without instances (yet).
    fn declared(&self) -> Box<dyn Iterator<Item = &ServiceKey> + '_>;

    /// The virtual IPs of each service that has any (Kubernetes
    /// ClusterIPs, or local mode's assigned ones).
    fn virtual_ips(&self) -> BTreeMap<ServiceKey, Vec<String>> {
        BTreeMap::new()
    }

    /// Every known service with all its instances (ready or not), including
    /// subset services and declared services that have none yet.
    fn services(&self) -> BTreeMap<ServiceKey, Vec<&Instance>> {
        let mut out: BTreeMap<ServiceKey, Vec<&Instance>> = BTreeMap::new();
        for key in self.declared() {
            out.entry(key.clone()).or_default();
        }
        for inst in self.instances() {
            out.entry((inst.namespace.clone(), inst.service.clone()))
                .or_default()
                .push(inst);
            if !inst.version.is_empty() {
                out.entry((inst.namespace.clone(), subset(&inst.service, &inst.version)))
                    .or_default()
                    .push(inst);
            }
        }
        out
    }

    /// Where a backend's own traffic shows in its sidecars' reports: the
    /// service its instances run as (`name.namespace`) and their version
    /// (empty for every version). A service of that name wins over a
    /// version subset spelled the same; `None` while nothing serves it.
    fn origin(&self, namespace: &str, backend: &str) -> Option<(String, String)> {
        let mut subset_of = None;
        for i in self.instances().filter(|i| i.namespace == namespace) {
            if i.service == backend {
                return Some((format!("{backend}.{namespace}"), String::new()));
            }
            if !i.version.is_empty() && subset(&i.service, &i.version) == backend {
                subset_of = Some((format!("{}.{namespace}", i.service), i.version.clone()));
            }
        }
        subset_of
    }

    /// Whether `namespace/service` is known at all: declared, or served by
    /// an instance as its service or its version subset.
    fn knows(&self, namespace: &str, service: &str) -> bool {
        self.declared()
            .any(|(ns, s)| ns == namespace && s == service)
            || self.instances().any(|i| {
                i.namespace == namespace
                    && (i.service == service
                        || (!i.version.is_empty() && subset(&i.service, &i.version) == service))
            })
    }
}

/// Name of the subset service for one version.
pub fn subset(service: &str, version: &str) -> String {
    format!("{service}-{version}")
}
