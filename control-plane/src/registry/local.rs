//! The local registry, mesh's embedded default: instances listed in Service
//! documents (static, never expire) and instances their sidecars register
//! with heartbeats (leased: three missed beats and they are gone), saved
//! across restarts by the single writer.

use super::{Catalog, Instance, ServiceKey, Source, subset};
use crate::manifest::{Document, Located};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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
    /// When each registered instance last heartbeated.
    seen: BTreeMap<(String, String), Instant>,
    /// Services known from documents even before any instance exists.
    declared: BTreeSet<ServiceKey>,
    /// Certificate expiry each instance last reported. Informational: it
    /// changes no endpoint set, so it is neither persisted nor published.
    cert_expiry: BTreeMap<(String, String), i64>,
}

impl Catalog for Registry {
    fn instances(&self) -> Box<dyn Iterator<Item = &Instance> + '_> {
        Box::new(self.instances.values())
    }

    fn declared(&self) -> Box<dyn Iterator<Item = &ServiceKey> + '_> {
        Box::new(self.declared.iter())
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
                                source: Source::Static,
                            },
                        );
                    }
                }
                Document::Workload(w) => {
                    let ns = &w.metadata.namespace;
                    reg.declared.insert((ns.clone(), w.spec.service.clone()));
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

    /// Restores registered instances saved before a restart. They get a fresh
    /// lease from `now`: a sidecar that is still alive renews it, a dead one
    /// expires one lease later instead of vanishing at once (which would push
    /// empty endpoint sets to every sidecar while heartbeats catch up).
    pub fn restore(&mut self, saved: Vec<Instance>, now: Instant) {
        for inst in saved {
            if inst.source == Source::Registered {
                let key = (inst.namespace.clone(), inst.instance_id.clone());
                self.seen.insert(key.clone(), now);
                self.instances.entry(key).or_insert(inst);
            }
        }
    }

    /// Registered instances, for persisting.
    pub fn registered(&self) -> Vec<Instance> {
        self.instances
            .values()
            .filter(|i| i.source == Source::Registered)
            .cloned()
            .collect()
    }

    /// Records a heartbeat. Returns whether the endpoint sets changed.
    pub fn heartbeat(
        &mut self,
        node: &NodeId,
        address: &str,
        ready: bool,
        identity: &str,
        now: Instant,
    ) -> Result<bool, Error> {
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
        let key = (node.namespace.clone(), node.instance_id.clone());
        self.seen.insert(key.clone(), now);
        let inst = Instance {
            namespace: node.namespace.clone(),
            service: node.service.clone(),
            version: node.version.clone(),
            instance_id: node.instance_id.clone(),
            address: address.to_string(),
            ready,
            identity: identity.to_string(),
            source: Source::Registered,
        };
        let changed = self.instances.get(&key) != Some(&inst);
        self.instances.insert(key, inst);
        Ok(changed)
    }

    /// Records the expiry of an instance's certificate (0: none).
    pub fn note_cert(&mut self, namespace: &str, instance_id: &str, not_after_unix: i64) {
        self.cert_expiry.insert(
            (namespace.to_string(), instance_id.to_string()),
            not_after_unix,
        );
    }

    /// Every instance with the expiry of its certificate (0 when unknown).
    pub fn identities(&self) -> Vec<(&Instance, i64)> {
        self.instances
            .iter()
            .map(|(k, i)| (i, self.cert_expiry.get(k).copied().unwrap_or(0)))
            .collect()
    }

    /// Removes a registered instance. Returns whether it was present.
    pub fn deregister(&mut self, namespace: &str, instance_id: &str) -> bool {
        let key = (namespace.to_string(), instance_id.to_string());
        self.seen.remove(&key);
        self.cert_expiry.remove(&key);
        match self.instances.get(&key) {
            Some(i) if i.source == Source::Registered => self.instances.remove(&key).is_some(),
            _ => false,
        }
    }

    /// Drops registered instances whose lease ran out. Returns the dropped ids.
    pub fn expire(&mut self, now: Instant, lease: Duration) -> Vec<String> {
        let dead: Vec<(String, String)> = self
            .seen
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > lease)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.seen.remove(k);
            self.instances.remove(k);
        }
        dead.into_iter()
            .map(|(ns, id)| format!("{ns}/{id}"))
            .collect()
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

    #[test]
    fn instances_join_root_and_subset_services() {
        let mut r = Registry::default();
        let now = Instant::now();
        assert!(
            r.heartbeat(&node("a", "v1"), "127.0.0.1:1", true, "", now)
                .unwrap()
        );
        assert!(
            r.heartbeat(&node("b", "v2"), "127.0.0.1:2", true, "", now)
                .unwrap()
        );
        assert!(
            !r.heartbeat(&node("b", "v2"), "127.0.0.1:2", true, "", now)
                .unwrap()
        );
        let s = r.services();
        assert_eq!(s[&("default".into(), "echo".into())].len(), 2);
        assert_eq!(s[&("default".into(), "echo-v2".into())][0].instance_id, "b");
    }

    #[test]
    fn leases_expire_and_restore_refreshes_them() {
        let mut r = Registry::default();
        let t0 = Instant::now();
        r.heartbeat(&node("a", "v1"), "127.0.0.1:1", true, "", t0)
            .unwrap();
        assert!(
            r.expire(t0 + Duration::from_secs(1), Duration::from_secs(3))
                .is_empty()
        );
        assert_eq!(
            r.expire(t0 + Duration::from_secs(4), Duration::from_secs(3)),
            vec!["default/a"]
        );
        let mut r2 = Registry::default();
        r2.restore(
            vec![Instance {
                namespace: "default".into(),
                service: "echo".into(),
                version: "v1".into(),
                instance_id: "a".into(),
                address: "127.0.0.1:1".into(),
                ready: true,
                identity: String::new(),
                source: Source::Registered,
            }],
            t0,
        );
        assert!(r2.knows("default", "echo-v1"));
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut r = Registry::default();
        let now = Instant::now();
        assert_eq!(
            r.heartbeat(&node("", "v1"), "127.0.0.1:1", true, "", now),
            Err(Error::Missing("node.instance_id"))
        );
        assert!(matches!(
            r.heartbeat(&node("a", "v1"), "nowhere", true, "", now),
            Err(Error::Address(_))
        ));
    }
}
