//! The local registry, mesh's embedded default: instances listed in Service
//! documents (static, never expire) and instances their sidecars register
//! with heartbeats (leased, in `lease`: three missed beats and they are
//! gone), saved across restarts by the single writer.

use super::cluster::Cluster;
use super::lease::Said;
use super::{Catalog, Instance, ServiceKey, Source, subset};
use crate::manifest::{Document, Located};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Identity of a registering sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// Version.
    pub version: String,
    /// Instance id.
    pub instance_id: String,
}

/// Errors from registrations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A required identity field is empty.
    #[error("{0} must not be empty")]
    Missing(&'static str),
    /// The address is not `ip:port`.
    #[error("address {0:?} is not ip:port")]
    Address(String),
}

/// The local catalog of services and instances.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    instances: BTreeMap<(String, String), Instance>,
    /// Services known from documents even before any instance exists.
    declared: BTreeSet<ServiceKey>,
    /// Service accounts Workload documents name (others run as their
    /// service's name).
    accounts: HashMap<ServiceKey, String>,
    /// What the Kubernetes registry last synced (empty in local mode).
    cluster: Arc<Cluster>,
    /// Where local mode's virtual IPs come from, if it gives any.
    vips: Option<crate::config::VirtualIps>,
}

/// Checks a registration before anything is recorded of it.
pub fn check(node: &NodeId, address: &str) -> Result<(), Error> {
    for (name, v) in [
        ("node.service", &node.service),
        ("node.namespace", &node.namespace),
        ("node.instance_id", &node.instance_id),
    ] {
        if v.is_empty() {
            return Err(Error::Missing(name));
        }
    }
    if address.parse::<std::net::SocketAddr>().is_err() {
        return Err(Error::Address(address.to_string()));
    }
    Ok(())
}

impl Catalog for Registry {
    fn instances(&self) -> Box<dyn Iterator<Item = &Instance> + '_> {
        Box::new(self.instances.values().chain(self.cluster.instances()))
    }

    fn declared(&self) -> Box<dyn Iterator<Item = &ServiceKey> + '_> {
        Box::new(self.declared.iter().chain(self.cluster.declared()))
    }

    fn virtual_ips(&self) -> BTreeMap<ServiceKey, Vec<String>> {
        // A cluster's Services carry their own; the range is local mode's.
        let mut out = self.cluster.virtual_ips();
        if let Some(range) = &self.vips {
            let services = self.services();
            let unassigned = services.keys().filter(|k| !out.contains_key(*k));
            for (key, ip) in super::vips::assign(range, unassigned.collect::<Vec<_>>()) {
                out.insert(key, vec![ip.to_string()]);
            }
        }
        out
    }
}

impl Registry {
    /// Seeds the registry from Service and Workload documents.
    pub fn from_documents(docs: &[Located]) -> Result<Self, Vec<String>> {
        let mut reg = Registry::default();
        let mut errors = Vec::new();
        for d in docs {
            match &d.doc {
                Document::Service(s) => {
                    let ns = &s.metadata.namespace;
                    reg.declared.insert((ns.clone(), s.metadata.name.clone()));
                    for (i, inst) in s.spec.instances.iter().enumerate() {
                        if inst.address.parse::<std::net::SocketAddr>().is_err() {
                            errors.push(format!(
                                "{}:{}: Service {ns}/{}: spec.instances[{i}].address: {:?} is not ip:port",
                                d.file, d.line, s.metadata.name, inst.address
                            ));
                            continue;
                        }
                        reg.instances.insert(
                            (ns.clone(), inst.id.clone()),
                            Instance {
                                namespace: ns.clone(),
                                service: s.metadata.name.clone(),
                                version: inst.version.clone(),
                                instance_id: inst.id.clone(),
                                address: inst.address.clone(),
                                ready: true,
                                identity: inst.identity.clone(),
                                owner: String::new(),
                                source: Source::Static,
                            },
                        );
                    }
                }
                Document::Workload(w) => {
                    let ns = &w.metadata.namespace;
                    reg.declared.insert((ns.clone(), w.spec.service.clone()));
                    if let Some(account) = &w.spec.service_account {
                        reg.accounts
                            .insert((ns.clone(), w.spec.service.clone()), account.clone());
                    }
                    if !w.spec.version.is_empty() {
                        reg.declared
                            .insert((ns.clone(), subset(&w.spec.service, &w.spec.version)));
                    }
                }
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(reg)
        } else {
            Err(errors)
        }
    }

    /// Restores registered instances saved before a restart (their leases
    /// are the caller's: see `lease::Leases::restore`).
    pub fn restore(&mut self, saved: Vec<Instance>) {
        for inst in saved {
            if inst.source == Source::Registered {
                let key = (inst.namespace.clone(), inst.instance_id.clone());
                self.instances.entry(key).or_insert(inst);
            }
        }
    }

    /// Gives every service a virtual IP from `range` (local mode).
    pub fn set_virtual_ips(&mut self, range: Option<crate::config::VirtualIps>) {
        self.vips = range;
    }

    /// Replaces what the Kubernetes registry contributes. Returns whether
    /// anything changed.
    pub fn set_cluster(&mut self, cluster: Arc<Cluster>) -> bool {
        // Shared, not copied or compared: the cluster's registry is large,
        // and the Kubernetes registry sends only one that differs.
        let changed = !Arc::ptr_eq(&self.cluster, &cluster);
        self.cluster = cluster;
        changed
    }

    /// The service accounts Workload documents name.
    pub fn accounts(&self) -> &HashMap<ServiceKey, String> {
        &self.accounts
    }

    /// Registered instances, for persisting.
    pub fn registered(&self) -> Vec<Instance> {
        self.instances
            .values()
            .filter(|i| i.source == Source::Registered)
            .cloned()
            .collect()
    }

    /// Records what a heartbeat said of `node`. Returns whether the
    /// endpoint sets changed.
    pub fn heartbeat(&mut self, node: &NodeId, said: &Said) -> Result<bool, Error> {
        check(node, &said.address)?;
        let key = (node.namespace.clone(), node.instance_id.clone());
        let inst = Instance {
            namespace: node.namespace.clone(),
            service: said.service.clone(),
            version: said.version.clone(),
            instance_id: node.instance_id.clone(),
            address: said.address.clone(),
            ready: said.ready,
            identity: said.identity.clone(),
            owner: said.owner.clone(),
            source: Source::Registered,
        };
        let changed = self.instances.get(&key) != Some(&inst);
        self.instances.insert(key, inst);
        Ok(changed)
    }

    /// The services whose endpoints instance `instance_id` is one of: its
    /// service and its version subset. None while it is not registered.
    pub fn services_of(&self, namespace: &str, instance_id: &str) -> Vec<ServiceKey> {
        let key = (namespace.to_string(), instance_id.to_string());
        let Some(i) = self.instances.get(&key) else {
            return Vec::new();
        };
        let mut keys = vec![(i.namespace.clone(), i.service.clone())];
        if !i.version.is_empty() {
            keys.push((i.namespace.clone(), super::subset(&i.service, &i.version)));
        }
        keys
    }

    /// Removes a registered instance. Returns whether it was present.
    pub fn deregister(&mut self, namespace: &str, instance_id: &str) -> bool {
        let key = (namespace.to_string(), instance_id.to_string());
        match self.instances.get(&key) {
            Some(i) if i.source == Source::Registered => self.instances.remove(&key).is_some(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, version: &str) -> NodeId {
        NodeId {
            namespace: "default".into(),
            service: "echo".into(),
            version: version.into(),
            instance_id: id.into(),
        }
    }

    fn said(version: &str, address: &str) -> Said {
        Said {
            service: "echo".into(),
            version: version.into(),
            address: address.into(),
            ready: true,
            identity: String::new(),
            owner: String::new(),
        }
    }

    #[test]
    fn instances_join_root_and_subset_services() {
        let mut r = Registry::default();
        assert!(
            r.heartbeat(&node("a", "v1"), &said("v1", "127.0.0.1:1"))
                .unwrap()
        );
        assert!(
            r.heartbeat(&node("b", "v2"), &said("v2", "127.0.0.1:2"))
                .unwrap()
        );
        assert!(
            !r.heartbeat(&node("b", "v2"), &said("v2", "127.0.0.1:2"))
                .unwrap()
        );
        let s = r.services();
        assert_eq!(s[&("default".into(), "echo".into())].len(), 2);
        assert_eq!(s[&("default".into(), "echo-v2".into())][0].instance_id, "b");
    }

    #[test]
    fn restored_instances_are_known_and_deregister_removes_them() {
        let mut r2 = Registry::default();
        r2.restore(vec![Instance {
            namespace: "default".into(),
            service: "echo".into(),
            version: "v1".into(),
            instance_id: "a".into(),
            address: "127.0.0.1:1".into(),
            ready: true,
            identity: String::new(),
            owner: String::new(),
            source: Source::Registered,
        }]);
        assert!(r2.knows("default", "echo-v1"));
        assert!(r2.deregister("default", "a"));
        assert!(!r2.knows("default", "echo-v1"));
        assert!(!r2.deregister("default", "a"), "gone already");
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut r = Registry::default();
        assert_eq!(
            r.heartbeat(&node("", "v1"), &said("v1", "127.0.0.1:1")),
            Err(Error::Missing("node.instance_id"))
        );
        assert!(matches!(
            r.heartbeat(&node("a", "v1"), &said("v1", "nowhere")),
            Err(Error::Address(_))
        ));
    }
}
