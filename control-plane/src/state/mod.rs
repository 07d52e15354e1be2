//! The control plane's single writer of registry and rules. A rule change
//! (apply, delete, shift) is validated, persisted, then published as a new
//! snapshot on a watch channel that each discovery stream reads; one at a
//! time (`writer`), and doing its slow work (parsing, validation, fsync)
//! without the lock that heartbeats and reads take (`inner`), which it holds
//! only to swap in the result and publish. A heartbeat that changes nothing
//! only renews its lease (`leases`), so no apply can make leases expire.

use crate::index;
use crate::manifest;
use crate::proxies::Proxies;
use crate::registry::claim::{Claims, Refusal};
use crate::registry::lease::{Leases, Said};
use crate::registry::local::{self, Registry};
use crate::registry::{Catalog, ServiceKey, Source};
use crate::rules::{self, RuleSet, Split};
use crate::store::{self, Store};
use std::collections::BTreeSet;

mod batch;
mod cluster;
mod documents;
mod publish;
mod register;
mod snapshot;
use mesh_proto::v1 as pb;
pub use snapshot::Snapshot;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

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
    /// A caller that may not speak for the node it names.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Unknown service in a read.
    #[error(transparent)]
    Index(#[from] index::Error),
    /// The state directory could not be written; nothing was applied.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Rules live in the cluster: they change through the API server.
    #[error(
        "this control plane reads its rules from the Kubernetes cluster: change them there (kubectl apply -f, kubectl delete), not through its admin API"
    )]
    ClusterRules,
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
    /// How long it held the lock that reads and registry changes take (to
    /// swap the rules in and publish); its parsing, validation and fsync
    /// ran before, outside it.
    pub held: Duration,
}

/// Who may register, how many each, and where registrations are counted.
#[derive(Clone)]
pub struct Admission {
    /// This mesh's trust domain: callers must be its workloads.
    pub trust_domain: String,
    /// Most registered instances one identity may hold.
    pub max_per_identity: usize,
    /// Registrations held and refused.
    pub metrics: crate::metrics::Registrations,
    /// Instances come from the cluster (EndpointSlices): heartbeats are
    /// authenticated and seen, but register nothing.
    pub cluster: bool,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            trust_domain: "cluster.local".into(),
            max_per_identity: crate::config::DEFAULT_MAX_REGISTRATIONS as usize,
            metrics: Default::default(),
            cluster: false,
        }
    }
}

/// What a heartbeat says besides its node.
#[derive(Debug, Clone, Copy)]
pub struct Beat<'a> {
    /// "ip:port" of the inbound listener.
    pub address: &'a str,
    /// Whether the app is ready.
    pub ready: bool,
    /// SPIFFE ID the inbound presents; empty for a plaintext inbound.
    pub identity: &'a str,
    /// The sidecar's certificate expiry, Unix seconds (0: none).
    pub cert_not_after_unix: i64,
}

struct Inner {
    registry: Registry,
    rules: Arc<RuleSet>,
    version: u64,
    /// Registry changes taken so far (see `batch`).
    tickets: u64,
    /// The services whose endpoints changed since the last publication
    /// (None: what changed is unknown, and the whole view is rebuilt).
    dirty: Option<BTreeSet<ServiceKey>>,
    /// The rules the published view was built from.
    built_from: Arc<RuleSet>,
}

/// A release's hold on its split: where the rest of the traffic goes, and
/// whether its canary is shielded.
#[derive(Debug, Clone)]
pub struct Pin {
    /// The stable backend.
    pub stable: String,
    /// Shield the canary (while the release is under way).
    pub shield: bool,
}

/// Shared control-plane state.
pub struct State {
    inner: Mutex<Inner>,
    /// One rule change at a time, held through its validation and fsync.
    writer: Mutex<()>,
    leases: Mutex<Leases>,
    claims: Claims,
    /// Whether instances come from the cluster, not from heartbeats.
    cluster: bool,
    metrics: crate::metrics::Registrations,
    snapshots: watch::Sender<Arc<Snapshot>>,
    proxies: Proxies,
    store: Store,
    /// Whether the config is whole: always in local mode; in cluster mode
    /// once the registry and the rules have each been listed. Discovery
    /// sends nothing before, so a restarted control plane never hands a
    /// sidecar a config without the cluster's endpoints or rules.
    complete: watch::Sender<bool>,
    /// Set on SIGTERM: nothing more is published and no lease expires, so
    /// a stopping control plane never pushes a registry it can no longer
    /// keep alive (heartbeats cannot reach it).
    stopped: std::sync::atomic::AtomicBool,
    /// How registry changes are gathered into one push.
    batch: batch::Batch,
}

/// A poisoned lock's data is still whole: every mutation builds the new
/// value first and then assigns it.
fn unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    /// Builds state from seed documents and whatever the store holds. Rules
    /// saved in the store win over the seed: they are what operators applied.
    pub fn new(
        registry: Registry,
        seed_rules: RuleSet,
        store: Store,
        admission: Admission,
    ) -> Result<Self, store::Error> {
        // A cluster holds its own registry and rules: what a local run left
        // in the state directory must never be served in its place.
        let rules = match admission.cluster {
            true => seed_rules,
            false => store.load_rules()?.unwrap_or(seed_rules),
        };
        let mut registry = registry;
        let mut leases = Leases::default();
        let saved = match admission.cluster {
            true => None,
            false => store.load_registry()?,
        };
        if let Some(saved) = saved {
            leases.restore(
                saved
                    .iter()
                    .filter(|i| i.source == Source::Registered)
                    .map(|i| {
                        let said = Said {
                            service: i.service.clone(),
                            version: i.version.clone(),
                            address: i.address.clone(),
                            ready: i.ready,
                            identity: i.identity.clone(),
                            owner: i.owner.clone(),
                        };
                        ((i.namespace.clone(), i.instance_id.clone()), said)
                    }),
                Instant::now(),
            );
            registry.restore(saved);
        }
        // Seed versions from the wall clock so they keep rising across restarts.
        let version = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let rules = Arc::new(rules);
        let view = index::build(&registry, &rules);
        let (snapshots, _) = watch::channel(Arc::new(Snapshot::new(version, view, None)));
        if !admission.cluster {
            store.save_rules(&rules)?;
        }
        let claims = Claims::new(
            &registry,
            registry.accounts().clone(),
            &admission.trust_domain,
            admission.max_per_identity,
        );
        admission.metrics.held.set(leases.len() as i64);
        Ok(State {
            inner: Mutex::new(Inner {
                registry,
                built_from: rules.clone(),
                rules,
                version,
                tickets: 0,
                dirty: Some(BTreeSet::new()),
            }),
            writer: Mutex::new(()),
            leases: Mutex::new(leases),
            claims,
            cluster: admission.cluster,
            metrics: admission.metrics,
            snapshots,
            proxies: Proxies::default(),
            store,
            complete: watch::channel(!admission.cluster).0,
            stopped: Default::default(),
            batch: batch::Batch::new(std::time::Duration::ZERO),
        })
    }

    /// Runs `change` on a blocking thread. Anything that may publish
    /// (a rule change, a registration, an expiry) rebuilds the view, which
    /// for a large mesh is much CPU; on an async worker it would stall the
    /// heartbeats and streams sharing the runtime, and leases would lapse
    /// for want of a worker to read their renewals.
    pub async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || change(&state)).await
    }

    /// A receiver that sees every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    /// The subscribed sidecars.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
    }

    /// The version in force.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        unpoisoned(&self.inner)
    }

    /// Stops publication and lease expiry for good (graceful stop).
    pub fn stop_publishing(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes the writer's turn and the rules in force to change.
    fn begin_change(&self) -> (std::sync::MutexGuard<'_, ()>, Arc<RuleSet>) {
        let turn = unpoisoned(&self.writer);
        let rules = self.lock().rules.clone();
        (turn, rules)
    }

    /// Persists `next` (before anyone can see it: a sidecar must never run
    /// rules a restart would lose), then swaps it in and publishes.
    fn commit(
        &self,
        next: RuleSet,
        warn: impl FnOnce(&Registry) -> Vec<String>,
    ) -> Result<(u64, Vec<String>, Duration), Error> {
        self.store.save_rules(&next)?;
        let next = Arc::new(next);
        let mut inner = self.lock();
        let held = Instant::now();
        let warnings = warn(&inner.registry);
        inner.rules = next;
        let version = self.publish(&mut inner);
        Ok((version, warnings, held.elapsed()))
    }

    /// Validates and applies rule files, all or nothing.
    pub fn apply(&self, files: &[(String, String)]) -> Result<Applied, Error> {
        if self.cluster {
            return Err(Error::ClusterRules);
        }
        let docs = documents::rules(files)?;
        let incoming = rules::rules_from(&docs).map_err(Error::Invalid)?;
        let (_turn, current) = self.begin_change();
        let (next, outcomes) = current.apply(&incoming, &docs).map_err(Error::Invalid)?;
        {
            let inner = self.lock();
            rules::check_named_services(&incoming.routing, &docs, |ns, svc| {
                inner.registry.knows(ns, svc)
            })
            .map_err(Error::Invalid)?;
        }
        let (version, warnings, held) = self.commit(next, |registry| {
            incoming
                .splits
                .iter()
                .flat_map(|s| {
                    let what = format!("TrafficSplit {}/{}", s.namespace, s.name);
                    index::warnings(registry, &what, s)
                })
                .collect()
        })?;
        Ok(Applied {
            version,
            outcomes,
            warnings,
            held,
        })
    }

    /// Deletes the rules `files` name, or `targets`, all or nothing.
    pub fn delete(
        &self,
        files: &[(String, String)],
        mut targets: Vec<rules::Target>,
    ) -> Result<Applied, Error> {
        if self.cluster {
            return Err(Error::ClusterRules);
        }
        let docs = if files.is_empty() {
            Vec::new()
        } else {
            documents::rules(files)?
        };
        targets.extend(docs.iter().map(|d| {
            let (kind, meta) = d.doc.kind_and_meta();
            rules::Target {
                kind: kind.to_string(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
            }
        }));
        let (_turn, current) = self.begin_change();
        let (next, outcomes) = current.delete(&targets, &docs).map_err(Error::Invalid)?;
        let (version, _, held) = self.commit(next, |_| Vec::new())?;
        Ok(Applied {
            version,
            outcomes,
            warnings: Vec::new(),
            held,
        })
    }

    /// `release shift`; with a `pin` (a release's), the rest of the
    /// traffic goes to its stable alone, and its shield is set or lifted in
    /// the same version.
    pub fn shift(
        &self,
        namespace: &str,
        service: &str,
        backend: &str,
        percent: u32,
        pin: Option<&Pin>,
    ) -> Result<(Split, u64, Vec<String>), Error> {
        if self.cluster {
            return Err(Error::ClusterRules);
        }
        let (_turn, current) = self.begin_change();
        let rest_to = pin.map(|p| p.stable.as_str());
        let (mut next, split, what) =
            current.shift(namespace, service, backend, percent, rest_to)?;
        if let Some(pin) = pin {
            let key = (namespace.to_string(), service.to_string());
            if pin.shield {
                next.shields.insert(
                    key,
                    rules::Shield {
                        namespace: namespace.into(),
                        service: service.into(),
                        canary: backend.into(),
                        stable: pin.stable.clone(),
                    },
                );
            } else {
                next.shields.remove(&key);
            }
        }
        let (version, warnings, _) =
            self.commit(next, |registry| index::warnings(registry, &what, &split))?;
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

    /// Where `backend`'s own traffic shows in telemetry (`Catalog::origin`).
    pub fn origin(&self, namespace: &str, backend: &str) -> Option<(String, String)> {
        self.lock().registry.origin(namespace, backend)
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
}
