//! What the state takes from a Kubernetes cluster: its registry and its
//! rule objects, each replacing what the state held, the shields of the
//! releases under way, the control plane's own replicas among its
//! endpoints, and the mark that the
//! config is whole (both listed once), before which discovery sends
//! nothing.

use super::{Error, State};
use crate::manifest;
use crate::rules::{self, RuleSet};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

impl State {
    /// The rules in force (what routes a service, for a cluster's shift).
    pub fn rules(&self) -> Arc<RuleSet> {
        self.lock().rules.clone()
    }

    /// The control plane's other replicas: the ready endpoints of
    /// `namespace/service` but the Pod `me`, by address.
    pub fn peers(&self, namespace: &str, service: &str, me: &str) -> Vec<std::net::SocketAddr> {
        use crate::registry::Catalog;
        let inner = self.lock();
        inner
            .registry
            .instances()
            .filter(|i| i.namespace == namespace && i.service == service)
            .filter(|i| i.ready && i.instance_id != me)
            .filter_map(|i| i.address.parse().ok())
            .collect()
    }

    /// Turns true once the config is whole (see `complete`).
    pub fn completed(&self) -> watch::Receiver<bool> {
        self.complete.subscribe()
    }

    /// Marks the config whole: the registry and the rules have each been
    /// listed from the cluster.
    pub fn mark_complete(&self) {
        self.complete
            .send_if_modified(|c| !std::mem::replace(c, true));
    }

    /// Takes in what the Kubernetes registry synced, and publishes it if it
    /// changes the config: at once until the config is whole (so the first
    /// config any sidecar sees has the cluster's endpoints), batched with
    /// the changes near it after.
    pub fn sync_cluster(&self, cluster: Arc<crate::registry::cluster::Cluster>) -> u64 {
        let mut inner = self.lock();
        if inner.registry.set_cluster(cluster) {
            // Which services changed is the whole build's to find.
            inner.dirty = None;
            if !*self.complete.borrow() {
                return self.publish(&mut inner);
            }
            self.publish_soon(&mut inner, []);
        }
        inner.version
    }

    /// Replaces the rules with the rule objects of the cluster, validated as
    /// one set, and publishes them. A set that does not validate together
    /// changes nothing: the rules in force keep serving.
    pub fn sync_rules(&self, docs: &[manifest::Located]) -> Result<u64, Error> {
        let incoming = rules::rules_from(docs).map_err(Error::Invalid)?;
        let (_turn, _) = self.begin_change();
        let (next, _) = RuleSet::default()
            .apply(&incoming, docs)
            .map_err(Error::Invalid)?;
        let mut next = next;
        let mut inner = self.lock();
        // The releases' shields are not rule objects: they stay.
        next.shields = inner.rules.shields.clone();
        inner.rules = Arc::new(next);
        Ok(self.publish(&mut inner))
    }

    /// Replaces the shields with those of the releases under way (the
    /// Release objects'), and publishes them if they changed.
    pub fn set_shields(&self, shields: BTreeMap<(String, String), rules::Shield>) -> Option<u64> {
        let mut inner = self.lock();
        if inner.rules.shields == shields {
            return None;
        }
        let mut next = (*inner.rules).clone();
        next.shields = shields;
        inner.rules = Arc::new(next);
        Some(self.publish(&mut inner))
    }
}
