//! The release controller: automated canary releases of one service at a
//! time each. A release moves the canary's weight step by step while its
//! own traffic (what the canary's sidecars served, from the telemetry
//! window) passes the analysis, and returns every request to the stable in
//! one push when it fails. Every transition is persisted before its weight
//! is applied (to the state directory, or in Kubernetes mode to the
//! Release object's status, where only the Lease holder runs releases), so
//! a restart or a new leader resumes the release where it was and never
//! loses a rollback.

pub mod analysis;
mod book;
mod checks;
pub mod cluster;
mod error;
pub mod hook;
mod https;
mod leading;
pub mod machine;
mod reads;
pub mod spec;
mod turns;
pub mod views;
pub mod webhooks;

pub use book::key;
pub use error::Error;

use crate::state::State;
use crate::store::Store;
use crate::telemetry::Window;
use book::Book;
use machine::{Command, Record};
use mesh_proto::v1 as pb;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The file the book lives in (local mode).
pub const FILE: &str = "releases.json";
/// How often due checks and unapplied weights are looked at.
const TICK: Duration = Duration::from_millis(200);

/// Where the releases persist.
enum Keeper {
    /// The state directory.
    File(Store),
    /// The Release objects' status.
    Cluster(cluster::Objects),
}

/// The release controller.
pub struct Controller {
    state: Arc<State>,
    window: Arc<Window>,
    keeper: Keeper,
    /// Held across a transition (and its file save), never across a
    /// shift, a hook or a status write.
    book: Mutex<Book>,
    /// Kubernetes mode: one status write at a time, each of the latest
    /// record, so an older one never lands after a newer.
    writes: tokio::sync::Mutex<()>,
    /// Kubernetes mode: releases whose status write failed; their weight
    /// waits until it is written.
    unsaved: Mutex<BTreeSet<String>>,
    hooks: webhooks::Caller,
    metrics: crate::metrics::Releases,
    /// The releases whose tick is at work (`turns`).
    busy: Arc<Mutex<BTreeSet<String>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Controller {
    fn with(state: Arc<State>, window: Arc<Window>, keeper: Keeper, book: Book) -> Self {
        Controller {
            state,
            window,
            keeper,
            book: Mutex::new(book),
            writes: tokio::sync::Mutex::new(()),
            unsaved: Mutex::new(BTreeSet::new()),
            hooks: webhooks::Caller::default(),
            metrics: crate::metrics::Releases::default(),
            busy: Arc::default(),
        }
    }

    /// The controller over `store`'s releases, as a restart finds them.
    pub fn load(state: Arc<State>, window: Arc<Window>, store: Store) -> Result<Self, Error> {
        let book = store.load::<Book>(FILE)?.unwrap_or_default();
        Ok(Self::with(state, window, Keeper::File(store), book))
    }

    /// The controller over a cluster's Release objects.
    pub fn cluster(state: Arc<State>, window: Arc<Window>, objects: cluster::Objects) -> Self {
        Self::with(state, window, Keeper::Cluster(objects), Book::default())
    }

    /// Sets `metrics` as releases move.
    pub fn metered(mut self, metrics: crate::metrics::Releases) -> Self {
        self.metrics = metrics;
        self
    }

    /// Each service's latest release in the metrics.
    fn observe(&self) {
        let book = self.lock();
        let phases = machine::Phase::ALL.map(machine::Phase::as_str);
        let latest = book.history.iter().chain(book.active.values());
        for r in latest {
            let s = &r.spec;
            if book.latest(&key(&s.namespace, &s.service)).map(|l| l.id) == Some(r.id) {
                let phase = r.phase.as_str();
                self.metrics
                    .observe(&s.namespace, &s.service, phase, &phases, r.canary_weight);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unsaved(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.unsaved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves the book to its file (a no-op in Kubernetes mode, where
    /// `flush` writes the one status that changed); called under the lock,
    /// so saves never interleave.
    fn save(&self, book: &Book) -> Result<(), Error> {
        match &self.keeper {
            Keeper::File(store) => Ok(store.save(FILE, book)?),
            Keeper::Cluster(_) => Ok(()),
        }
    }

    /// Kubernetes mode: writes `k`'s object's status from the book.
    async fn flush(&self, k: &str) -> Result<(), Error> {
        let Keeper::Cluster(objects) = &self.keeper else {
            return Ok(());
        };
        let _turn = self.writes.lock().await;
        let Some(status) = self.lock().status(k) else {
            return Ok(());
        };
        let (namespace, name) = k.split_once('/').unwrap_or(("default", k));
        match objects.write(namespace, name, &status).await {
            Ok(()) => {
                self.unsaved().remove(k);
                Ok(())
            }
            Err(source) => {
                self.unsaved().insert(k.to_string());
                Err(Error::Status {
                    object: k.to_string(),
                    source,
                })
            }
        }
    }

    /// Starts a release (local mode).
    pub async fn start(self: &Arc<Self>, spec: spec::Spec) -> Result<pb::ReleaseResponse, Error> {
        if matches!(self.keeper, Keeper::Cluster(_)) {
            return Err(Error::Cluster("start"));
        }
        self.begin(spec, None).await
    }

    /// Checks the split carries both backends (and finds the stable when
    /// the spec names none), then applies the first step. `generation` is
    /// the Release object's, in Kubernetes mode.
    async fn begin(
        self: &Arc<Self>,
        spec: spec::Spec,
        generation: Option<i64>,
    ) -> Result<pb::ReleaseResponse, Error> {
        let spec = reads::resolve(&self.state, spec)?;
        let k = key(&spec.namespace, &spec.service);
        let under_way = |book: &Book| {
            book.active.get(&k).map(|r| Error::UnderWay {
                service: k.clone(),
                phase: r.phase.as_str(),
            })
        };
        let id = {
            let book = self.lock();
            if let Some(e) = under_way(&book) {
                return Err(e);
            }
            book.next_id + 1
        };
        let mut record = Record::new(id, spec, now_ms());
        record.generation = generation;
        self.hooks
            .all(&record, spec::Hook::PreRollout)
            .await
            .map_err(Error::Webhook)?;
        {
            let mut book = self.lock();
            // Another start may have won while the hooks ran.
            if let Some(e) = under_way(&book) {
                return Err(e);
            }
            book.next_id = book.next_id.max(id);
            book.active.insert(k.clone(), record);
            self.save(&book)?;
        }
        let begun = match self.flush(&k).await {
            Ok(()) => self.apply(&k).await,
            Err(e) => Err(e),
        };
        if let Err(e) = begun {
            // The first weight did not take: the release never began.
            let mut book = self.lock();
            book.active.remove(&k);
            book.next_id = id - 1;
            self.save(&book)?;
            return Err(e);
        }
        tracing::info!(release = %k, "release started");
        self.get(&k)
    }

    /// A command from `who` on the release under way (local mode).
    pub async fn command(
        self: &Arc<Self>,
        namespace: &str,
        service: &str,
        action: &str,
        who: &str,
    ) -> Result<pb::ReleaseResponse, Error> {
        if matches!(self.keeper, Keeper::Cluster(_)) {
            return Err(Error::Cluster("pause|resume|promote|abort|rollback"));
        }
        self.act(&key(namespace, service), action, who).await
    }

    async fn act(
        self: &Arc<Self>,
        k: &str,
        action: &str,
        who: &str,
    ) -> Result<pb::ReleaseResponse, Error> {
        let command = Command::parse(action).ok_or_else(|| Error::Action(action.into()))?;
        if command == Command::PromoteFull {
            // All traffic to the canary at once only on the evidence.
            let r = self.lock().active.get(k).cloned();
            let r = r.ok_or_else(|| Error::Missing(k.to_string()))?;
            let [c, s] = reads::samples(&self.state, &self.window, &r, r.window_ms(now_ms()));
            let (outcome, detail) = analysis::judge(&r.spec, &c, &s);
            if outcome != analysis::Outcome::Passed {
                return Err(Error::NotPassing(detail));
            }
        }
        {
            let mut book = self.lock();
            let r = book
                .active
                .get_mut(k)
                .ok_or_else(|| Error::Missing(k.to_string()))?;
            r.command(now_ms(), command, who)?;
            tracing::info!(release = %k, phase = r.phase.as_str(), reason = %r.reason, "release command");
            self.save(&book)?;
        }
        self.flush(k).await?;
        // The command stands, persisted, even when its weight cannot apply
        // yet: status says why, and every tick tries again.
        if let Err(e) = self.apply(k).await {
            self.blocked(k, &e).await;
        }
        self.get(k)
    }

    /// The release of `namespace/service` under way, else its last one.
    pub fn status(&self, namespace: &str, service: &str) -> Result<pb::ReleaseResponse, Error> {
        self.get(&key(namespace, service))
    }

    fn get(&self, k: &str) -> Result<pb::ReleaseResponse, Error> {
        let book = self.lock();
        let now = now_ms();
        if let Some(r) = book.active.get(k) {
            let current = (r.next_check_ms != 0).then(|| {
                let window = r.window_ms(now);
                let [c, s] = reads::samples(&self.state, &self.window, r, window);
                let (outcome, detail) = analysis::judge(&r.spec, &c, &s);
                views::check(&machine::Check {
                    at_ms: now,
                    canary_weight: r.canary_weight,
                    outcome,
                    detail,
                    canary: c,
                    stable: s,
                    window_ms: window,
                })
            });
            return Ok(views::response(r, current, now));
        }
        book.latest(k)
            .map(|r| views::response(r, None, now))
            .ok_or_else(|| Error::Never(k.into()))
    }

    /// Past releases of `namespace/service`, newest first.
    pub fn history(&self, namespace: &str, service: &str) -> pb::ReleaseHistoryResponse {
        let k = key(namespace, service);
        let book = self.lock();
        pb::ReleaseHistoryResponse {
            releases: book.of(&k).map(views::release).collect(),
        }
    }

    /// Puts the weight `k`'s record asks for into the rules (or the
    /// cluster's TrafficSplit), if it is not there yet, and files a
    /// finished release in the history.
    async fn apply(self: &Arc<Self>, k: &str) -> Result<(), Error> {
        if self.unsaved().contains(k) {
            // Persisted before applied, always.
            self.flush(k).await?;
        }
        let Some(r) = self.lock().active.get(k).filter(|r| r.pending).cloned() else {
            return Ok(());
        };
        let spec = r.spec.clone();
        let weight = r.canary_weight;
        match &self.keeper {
            Keeper::File(_) => {
                let state = self.state.clone();
                // The shield stands while the release does, and goes with its end.
                let pin = crate::state::Pin {
                    stable: spec.stable.clone(),
                    shield: spec.shield && !r.phase.finished(),
                };
                // A shift validates and fsyncs: off the async workers.
                let shifted = tokio::task::spawn_blocking(move || {
                    state.shift(
                        &spec.namespace,
                        &spec.service,
                        &spec.canary,
                        weight,
                        Some(&pin),
                    )
                })
                .await
                .map_err(|e| Error::Split(format!("the shift failed: {e}")))?;
                shifted?;
            }
            Keeper::Cluster(objects) => {
                use crate::kubernetes::weights::{self, Router};
                let rules = self.state.rules();
                let router = Router::of(&rules, &spec.namespace, &spec.service).ok_or_else(|| {
                    Error::Split(format!(
                        "no TrafficSplit or HTTPRoute routes {k}; a release moves the weights of one"
                    ))
                })?;
                weights::shift(
                    objects.client(),
                    &spec.namespace,
                    &router,
                    &spec.canary,
                    weight,
                    Some(&spec.stable),
                )
                .await?;
            }
        }
        {
            let mut book = self.lock();
            let Some(current) = book.active.get_mut(k) else {
                return Ok(());
            };
            // Only if nothing moved it meanwhile; else the newer weight applies next.
            if current.updated_ms != r.updated_ms || current.canary_weight != weight {
                return Ok(());
            }
            current.pending = false;
            current.blocked.clear();
            if current.phase.finished() {
                let done = book.finish(k).expect("present");
                tracing::info!(release = %k, phase = done.phase.as_str(), reason = %done.reason, "release finished");
                self.post_rollout(done);
            }
            self.save(&book)?;
        }
        self.flush(k).await
    }

    fn post_rollout(&self, done: Record) {
        if done.spec.hooks(spec::Hook::PostRollout).count() == 0 {
            return;
        }
        let hooks = self.hooks.clone();
        tokio::spawn(async move {
            match hooks.all(&done, spec::Hook::PostRollout).await {
                Ok(answers) => tracing::info!(?answers, "post-rollout webhooks"),
                Err(e) => tracing::warn!(error = %e, "post-rollout webhook"),
            }
        });
    }

    /// Runs due checks and applies unapplied weights until `stop` turns
    /// true; in Kubernetes mode only while `leading`, and follows the
    /// Release objects either way.
    pub async fn run(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        leading: watch::Receiver<bool>,
    ) {
        if let Keeper::Cluster(objects) = &self.keeper {
            tokio::select! {
                ready = objects.ready() => if !ready { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = Default::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Keeper::Cluster(objects) = &self.keeper {
                let leader = *leading.borrow();
                self.follow(objects, leader, &mut seen).await;
                if !leader {
                    self.observe();
                    continue;
                }
            }
            self.step_all();
            self.observe();
        }
    }
}

#[cfg(test)]
mod tests;
