//! Registrations as the state keeps them: who may speak for a node, the
//! heartbeats that renew leases (and only the owner's), deregistrations,
//! and the expiry of leases nobody renews.

use super::{Beat, Error, State, unpoisoned};
use crate::index;
use crate::registry::Catalog;
use crate::registry::claim::Refusal;
use crate::registry::lease::Said;
use crate::registry::local::{self, NodeId};
use mesh_proto::v1 as pb;
use std::time::{Duration, Instant};

impl State {
    /// Whether `caller` may make `call` for `namespace/service`.
    pub fn speaks_for<'c>(
        &self,
        call: &'static str,
        caller: Option<&'c str>,
        namespace: &str,
        service: &str,
    ) -> Result<&'c str, Error> {
        self.claims
            .speaks_for(call, caller, namespace, service)
            .map_err(|r| self.refused(r))
    }

    fn refused(&self, refusal: Refusal) -> Error {
        self.metrics.refused(refusal.reason());
        tracing::warn!(reason = %refusal, "registration call refused");
        Error::Refused(refusal)
    }

    /// Records a heartbeat from `caller` (its verified SPIFFE ID). One that
    /// says what the last one said only renews the instance's lease; a new
    /// instance or a change (address, readiness, identity) goes to the
    /// registry and is published. Only the identity that registered an
    /// instance renews it.
    pub fn heartbeat(
        &self,
        caller: Option<&str>,
        node: &NodeId,
        beat: Beat<'_>,
    ) -> Result<(), Error> {
        local::check(node, beat.address)?;
        if self.cluster {
            // The cluster says which instances exist; a heartbeat only
            // shows its sidecar is alive, and only with a certificate.
            if caller.is_none() {
                return Err(self.refused(Refusal::Anonymous { call: "Heartbeat" }));
            }
            self.proxies.seen(&node.namespace, &node.instance_id);
            return Ok(());
        }
        let key = (node.namespace.clone(), node.instance_id.clone());
        let caller =
            match self
                .claims
                .speaks_for("Heartbeat", caller, &node.namespace, &node.service)
            {
                Ok(caller) => caller,
                // Speaking for another's instance: say whose it is.
                Err(r @ Refusal::Account { .. }) => {
                    let owned =
                        caller.and_then(|c| unpoisoned(&self.leases).may_end(&key, c).err());
                    return Err(self.refused(owned.unwrap_or(r)));
                }
                Err(r) => return Err(self.refused(r)),
            };
        self.claims
            .may_register(caller, &key, beat.identity)
            .map_err(|r| self.refused(r))?;
        let said = Said {
            service: node.service.clone(),
            version: node.version.clone(),
            address: beat.address.to_string(),
            ready: beat.ready,
            identity: beat.identity.to_string(),
            owner: caller.to_string(),
        };
        let news = {
            let mut leases = unpoisoned(&self.leases);
            let news = leases.renew(
                key.clone(),
                said,
                beat.cert_not_after_unix,
                Instant::now(),
                self.claims.max_per_identity,
            );
            self.metrics.held.set(leases.len() as i64);
            news
        }
        .map_err(|r| self.refused(r))?;
        if news {
            let mut inner = self.lock();
            // What the lease holds now, not what this heartbeat said: a
            // later one may have overtaken it on the way to this lock.
            let latest = unpoisoned(&self.leases).said(&key).cloned();
            let before = inner
                .registry
                .services_of(&node.namespace, &node.instance_id);
            if let Some(said) = latest
                && inner.registry.heartbeat(node, &said)?
            {
                self.store.save_registry(&inner.registry)?;
                let after = inner
                    .registry
                    .services_of(&node.namespace, &node.instance_id);
                self.publish_soon(&mut inner, before.into_iter().chain(after));
            }
        }
        self.proxies.seen(&node.namespace, &node.instance_id);
        Ok(())
    }

    /// Instances with their certificate expiry.
    pub fn identities(&self) -> Vec<pb::WorkloadIdentity> {
        let inner = self.lock();
        let leases = unpoisoned(&self.leases);
        index::views::identities(inner.registry.instances().map(|i| {
            let key = (i.namespace.clone(), i.instance_id.clone());
            (i, leases.cert_not_after(&key))
        }))
    }

    /// Removes an instance `caller` registered; returns the ticket of the
    /// change (see [`State::published`] for the version without it).
    pub fn deregister(&self, caller: Option<&str>, node: &NodeId) -> Result<u64, Error> {
        if self.cluster {
            if caller.is_none() {
                return Err(self.refused(Refusal::Anonymous { call: "Deregister" }));
            }
            // Nothing was registered: the cluster removes the endpoint.
            return Ok(self.lock().tickets);
        }
        let caller = self.speaks_for("Deregister", caller, &node.namespace, &node.service)?;
        let (namespace, instance_id) = (&node.namespace, &node.instance_id);
        let key = (namespace.clone(), instance_id.clone());
        {
            let mut leases = unpoisoned(&self.leases);
            leases.may_end(&key, caller).map_err(|r| self.refused(r))?;
            leases.end(&key);
            self.metrics.held.set(leases.len() as i64);
        }
        let mut inner = self.lock();
        let gone = inner.registry.services_of(namespace, instance_id);
        if inner.registry.deregister(namespace, instance_id) {
            self.store.save_registry(&inner.registry)?;
        }
        Ok(self.publish_soon(&mut inner, gone))
    }

    /// Drops instances whose heartbeats stopped.
    pub fn expire(&self, lease: Duration) -> Result<Vec<String>, Error> {
        if self.stopped() {
            return Ok(Vec::new());
        }
        let dead = {
            let mut leases = unpoisoned(&self.leases);
            let dead = leases.expire(Instant::now(), lease);
            self.metrics.held.set(leases.len() as i64);
            dead
        };
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.lock();
        let mut gone = Vec::new();
        for (ns, id) in &dead {
            gone.extend(inner.registry.services_of(ns, id));
            inner.registry.deregister(ns, id);
        }
        self.store.save_registry(&inner.registry)?;
        self.publish_soon(&mut inner, gone);
        Ok(dead
            .into_iter()
            .map(|(ns, id)| format!("{ns}/{id}"))
            .collect())
    }
}
