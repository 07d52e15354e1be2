//! The control plane's single writer: registry and rules behind one lock.
//! Every change is validated, persisted, then published as a new snapshot on
//! a watch channel that each discovery stream reads. Also tracks which
//! version each subscribed proxy has ACKed.

use crate::index::{self, View};
use crate::manifest;
use crate::registry::Catalog;
use crate::registry::local::{self, NodeId, Registry};
use crate::rules::{self, RuleSet, Split};
use crate::store::{self, Store};
use mesh_proto::prebuilt::Prebuilt;
use mesh_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// One published version of the config.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// What every sidecar receives.
    pub view: View,
    /// The same, encoded once for every stream.
    pub encoded: Prebuilt,
}

impl Snapshot {
    fn new(version: u64, view: View) -> Self {
        let encoded = Prebuilt::new(&view.response(version));
        Snapshot {
            version,
            view,
            encoded,
        }
    }
}

/// Errors from changing state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Rule documents that do not validate; every problem is listed.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<manifest::Error>),
    /// A shift that cannot be done.
    #[error(transparent)]
    Shift(#[from] rules::ShiftError),
    /// A registration that cannot be accepted.
    #[error(transparent)]
    Registry(#[from] local::Error),
    /// Unknown service in a read.
    #[error(transparent)]
    Index(#[from] index::Error),
    /// The state directory could not be written; nothing was applied.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// What one apply did.
#[derive(Debug)]
pub struct Applied {
    /// Version in force afterwards.
    pub version: u64,
    /// Per split.
    pub outcomes: rules::Outcomes,
    /// Accepted-but-suspicious findings.
    pub warnings: Vec<String>,
}

struct Inner {
    registry: Registry,
    rules: RuleSet,
    version: u64,
}

/// A proxy subscribed over discovery.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Who it said it is.
    pub node: pb::Node,
    /// Last version it ACKed.
    pub acked: Option<u64>,
    /// Last version it NACKed, and why.
    pub nacked: Option<(u64, String)>,
    /// From publishing (or its stream opening, if later) to its ACK, for
    /// the last version it ACKed.
    pub last_push: Option<Duration>,
    /// Its last ACK, NACK, heartbeat or subscription.
    pub last_seen: Instant,
    connected: Instant,
}

/// Shared control-plane state.
pub struct State {
    inner: Mutex<Inner>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    proxies: Mutex<BTreeMap<u64, Proxy>>,
    /// When recent versions were published, for push latency.
    published: Mutex<BTreeMap<u64, Instant>>,
    /// Bumped on every ACK/NACK/disconnect so waiters re-check propagation.
    acks: watch::Sender<u64>,
    store: Store,
}

impl State {
    /// Builds state from seed documents and whatever the store holds. Rules
    /// saved in the store win over the seed: they are what operators applied.
    pub fn new(
        registry: Registry,
        seed_rules: RuleSet,
        store: Store,
    ) -> Result<Self, store::Error> {
        let rules = store.load_rules()?.unwrap_or(seed_rules);
        let mut registry = registry;
        if let Some(saved) = store.load_registry()? {
            registry.restore(saved, Instant::now());
        }
        // Seed versions from the wall clock so they keep rising across restarts.
        let version = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let view = index::build(&registry, &rules);
        let (snapshots, _) = watch::channel(Arc::new(Snapshot::new(version, view)));
        let (acks, _) = watch::channel(0);
        store.save_rules(&rules)?;
        Ok(State {
            inner: Mutex::new(Inner {
                registry,
                rules,
                version,
            }),
            snapshots,
            proxies: Mutex::new(BTreeMap::new()),
            published: Mutex::new(BTreeMap::new()),
            acks,
            store,
        })
    }

    /// A receiver that sees every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    /// The version in force.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner half-updated:
        // every mutation builds the new value first and then assigns it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the view and publishes it if anything changed.
    fn publish(&self, inner: &mut Inner) -> u64 {
        let view = index::build(&inner.registry, &inner.rules);
        if self.snapshots.borrow().view != view {
            inner.version += 1;
            let mut published = self.published.lock().expect("published lock");
            published.insert(inner.version, Instant::now());
            // A sidecar ACKs within seconds; older versions only matter as "unknown".
            while published.len() > 64 {
                published.pop_first();
            }
            drop(published);
            self.snapshots
                .send_replace(Arc::new(Snapshot::new(inner.version, view)));
        }
        inner.version
    }

    /// Validates and applies rule files, all or nothing.
    pub fn apply(&self, files: &[(String, String)]) -> Result<Applied, Error> {
        let docs = rule_documents(files)?;
        let incoming = rules::rules_from(&docs).map_err(Error::Invalid)?;
        let mut inner = self.lock();
        let (next, outcomes) = inner
            .rules
            .apply(&incoming, &docs)
            .map_err(Error::Invalid)?;
        rules::check_mirrors(&incoming.routing, &docs, |ns, svc| {
            inner.registry.knows(ns, svc)
        })
        .map_err(Error::Invalid)?;
        // Persist before publishing: a sidecar must never run rules a restart would lose.
        self.store.save_rules(&next)?;
        let warnings = incoming
            .splits
            .iter()
            .flat_map(|s| {
                let what = format!("TrafficSplit {}/{}", s.namespace, s.name);
                index::warnings(&inner.registry, &what, s)
            })
            .collect();
        inner.rules = next;
        let version = self.publish(&mut inner);
        Ok(Applied {
            version,
            outcomes,
            warnings,
        })
    }

    /// Deletes the rules `files` name, or `targets`, all or nothing.
    pub fn delete(
        &self,
        files: &[(String, String)],
        mut targets: Vec<rules::Target>,
    ) -> Result<Applied, Error> {
        let docs = if files.is_empty() {
            Vec::new()
        } else {
            rule_documents(files)?
        };
        targets.extend(docs.iter().map(|d| {
            let (kind, meta) = d.doc.kind_and_meta();
            rules::Target {
                kind: kind.to_string(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
            }
        }));
        let mut inner = self.lock();
        let (next, outcomes) = inner
            .rules
            .delete(&targets, &docs)
            .map_err(Error::Invalid)?;
        self.store.save_rules(&next)?;
        inner.rules = next;
        let version = self.publish(&mut inner);
        Ok(Applied {
            version,
            outcomes,
            warnings: Vec::new(),
        })
    }

    /// `release shift`.
    pub fn shift(
        &self,
        namespace: &str,
        service: &str,
        backend: &str,
        percent: u32,
    ) -> Result<(Split, u64, Vec<String>), Error> {
        let mut inner = self.lock();
        let (next, split, what) = inner.rules.shift(namespace, service, backend, percent)?;
        self.store.save_rules(&next)?;
        let warnings = index::warnings(&inner.registry, &what, &split);
        inner.rules = next;
        let version = self.publish(&mut inner);
        Ok((split, version, warnings))
    }

    /// The splits in force, optionally in one namespace, and the version
    /// they belong to.
    pub fn splits(&self, namespace: &str) -> (u64, Vec<Split>) {
        let inner = self.lock();
        let splits = inner
            .rules
            .splits
            .values()
            .filter(|s| namespace.is_empty() || s.namespace == namespace)
            .cloned()
            .collect();
        (inner.version, splits)
    }

    /// `meshctl get routes`: the service's config and the clusters it names,
    /// from the snapshot sidecars run.
    pub fn routes(&self, namespace: &str, service: &str) -> Result<pb::GetRoutesResponse, Error> {
        let snap = self.snapshots.borrow().clone();
        Ok(index::views::routes(
            &snap.view,
            snap.version,
            namespace,
            service,
        )?)
    }

    /// `release status`.
    pub fn status(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<pb::ReleaseStatusResponse, Error> {
        let inner = self.lock();
        let mut st = index::status(&inner.registry, &inner.rules, namespace, service)?;
        st.version = inner.version.to_string();
        Ok(st)
    }

    /// Records a heartbeat; publishes if the endpoint sets changed.
    pub fn heartbeat(
        &self,
        node: &NodeId,
        address: &str,
        ready: bool,
        identity: &str,
        cert_not_after_unix: i64,
    ) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner
            .registry
            .heartbeat(node, address, ready, identity, Instant::now())?
        {
            self.store.save_registry(&inner.registry)?;
            self.publish(&mut inner);
        }
        inner
            .registry
            .note_cert(&node.namespace, &node.instance_id, cert_not_after_unix);
        drop(inner);
        self.seen(&node.namespace, &node.instance_id);
        Ok(())
    }

    /// Marks a sidecar as alive now (a heartbeat, or a telemetry report from
    /// a sidecar that has no app to heartbeat for).
    pub fn seen(&self, namespace: &str, instance_id: &str) {
        let now = Instant::now();
        for p in self.proxies_lock().values_mut() {
            if p.node.instance_id == instance_id && p.node.namespace == namespace {
                p.last_seen = now;
            }
        }
    }

    /// Instances with their certificate expiry.
    pub fn identities(&self) -> Vec<pb::WorkloadIdentity> {
        index::views::identities(self.lock().registry.identities())
    }

    /// Removes an instance; returns the version that no longer contains it.
    pub fn deregister(&self, namespace: &str, instance_id: &str) -> Result<u64, Error> {
        let mut inner = self.lock();
        if inner.registry.deregister(namespace, instance_id) {
            self.store.save_registry(&inner.registry)?;
        }
        Ok(self.publish(&mut inner))
    }

    /// Drops instances whose heartbeats stopped.
    pub fn expire(&self, lease: Duration) -> Result<Vec<String>, Error> {
        let mut inner = self.lock();
        let dead = inner.registry.expire(Instant::now(), lease);
        if !dead.is_empty() {
            self.store.save_registry(&inner.registry)?;
            self.publish(&mut inner);
        }
        Ok(dead)
    }

    /// Tracks a new discovery stream; returns its id.
    pub fn add_proxy(&self, id: u64, node: pb::Node) {
        self.proxies_lock().insert(
            id,
            Proxy {
                node,
                acked: None,
                nacked: None,
                last_push: None,
                last_seen: Instant::now(),
                connected: Instant::now(),
            },
        );
    }

    /// Forgets a closed discovery stream.
    pub fn remove_proxy(&self, id: u64) {
        self.proxies_lock().remove(&id);
        self.acks.send_modify(|n| *n += 1);
    }

    /// Records an ACK (`error` is None) or NACK of `version`.
    pub fn record_reply(&self, id: u64, version: u64, error: Option<String>) {
        let now = Instant::now();
        let published = self
            .published
            .lock()
            .expect("published lock")
            .get(&version)
            .copied();
        if let Some(p) = self.proxies_lock().get_mut(&id) {
            p.last_seen = now;
            match error {
                None => {
                    // A version published before the stream opened was pushed
                    // when it opened.
                    if p.acked != Some(version) {
                        p.last_push = published.map(|at| now - at.max(p.connected));
                    }
                    p.acked = Some(version);
                    if p.nacked.as_ref().is_some_and(|(v, _)| *v <= version) {
                        p.nacked = None;
                    }
                }
                Some(reason) => p.nacked = Some((version, reason)),
            }
        }
        self.acks.send_modify(|n| *n += 1);
    }

    /// Subscribed proxies.
    pub fn proxies(&self) -> Vec<Proxy> {
        self.proxies_lock().values().cloned().collect()
    }

    fn proxies_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Proxy>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every subscribed proxy other than `except_instance` has
    /// answered `version` or later, or `timeout` passes. Returns whether
    /// every one of them ACKed such a version. A proxy that NACKed it still
    /// runs its older config, where the instance may be an endpoint, so it
    /// does not count as propagated; once only such proxies are left there
    /// is nothing more to wait for, and the answer is `false` at once.
    pub async fn wait_propagated(
        &self,
        version: u64,
        except_instance: &str,
        timeout: Duration,
    ) -> bool {
        let mut acks = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (mut answered, mut acked) = (true, true);
            for p in self.proxies_lock().values() {
                if p.node.instance_id == except_instance {
                    continue;
                }
                let ack = p.acked.is_some_and(|v| v >= version);
                let nack = p.nacked.as_ref().is_some_and(|(v, _)| *v >= version);
                answered &= ack || nack;
                acked &= ack;
            }
            if answered {
                return acked;
            }
            if tokio::time::timeout_at(deadline, acks.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

/// Parses rule files, every problem at once; Service and Workload
/// documents are refused (they belong in the mesh file).
fn rule_documents(files: &[(String, String)]) -> Result<Vec<manifest::Located>, Error> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (name, content) in files {
        match manifest::parse(name, content) {
            Ok(mut d) => docs.append(&mut d),
            Err(mut e) => errors.append(&mut e),
        }
    }
    for d in &docs {
        if matches!(
            d.doc,
            manifest::Document::Service(_) | manifest::Document::Workload(_)
        ) {
            errors.push(manifest::Error {
                file: d.file.clone(),
                line: d.line,
                object: None,
                field: Some("kind".into()),
                problem: "Service and Workload documents belong in the mesh file; apply takes rules (TrafficSplit, HTTPRouteGroup, HTTPRoute, TrafficPolicy, AuthorizationPolicy)".into(),
            });
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(Error::Invalid(errors))
    }
}
