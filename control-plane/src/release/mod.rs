//! The release controller: automated canary releases of one service at a
//! time each. A release moves the canary's weight step by step while its
//! own traffic (what the canary's sidecars served, from the telemetry
//! window) passes the analysis, and returns every request to the stable in
//! one push when it fails. Every transition is persisted to the state
//! directory before its weight is applied, so a restart resumes the
//! release where it was and never loses a rollback.

pub mod analysis;
pub mod hook;
pub mod machine;
pub mod spec;
mod views;
pub mod webhooks;

use crate::manifest;
use crate::state::State;
use crate::store::{self, Store};
use crate::telemetry::Window;
use analysis::{Outcome, Sample};
use machine::{Command, Record};
use mesh_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a release call was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec has problems (every one named).
    #[error("the release spec has {} problem(s)", .0.len())]
    Invalid(Vec<manifest::Error>),
    /// One release per service at a time.
    #[error("a release of {service} is already {phase}; abort or finish it first")]
    UnderWay {
        /// Whose.
        service: String,
        /// Its phase.
        phase: &'static str,
    },
    /// Nothing under way to act on.
    #[error("no release of {0} under way")]
    Missing(String),
    /// Nothing to show.
    #[error("{0} has never had a release")]
    Never(String),
    /// The service's split cannot carry the release.
    #[error("{0}")]
    Split(String),
    /// A command the release's phase does not allow.
    #[error(transparent)]
    Refused(#[from] machine::Refused),
    /// An action name nobody knows.
    #[error(
        "unknown release action {0:?}; expected pause, resume, promote, promote-full, abort or rollback"
    )]
    Action(String),
    /// A pre-rollout hook did not pass.
    #[error("the release did not start: {0}")]
    Webhook(String),
    /// The rules refused the weight (Kubernetes mode: the objects are kubectl's).
    #[error(transparent)]
    State(#[from] crate::state::Error),
    /// The state directory failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Every release this control plane runs or ran, as persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    next_id: u64,
    /// Under way, by `namespace/service`.
    active: BTreeMap<String, Record>,
    /// Finished, oldest first.
    history: Vec<Record>,
}

/// The file the book lives in.
pub const FILE: &str = "releases.json";
/// Finished releases kept.
const HISTORY: usize = 100;
/// How often due checks and unapplied weights are looked at.
const TICK: Duration = Duration::from_millis(200);

/// The release controller.
pub struct Controller {
    state: Arc<State>,
    window: Arc<Window>,
    store: Store,
    /// Held across a transition and its persisting, never across a shift
    /// or a hook.
    book: Mutex<Book>,
    hooks: webhooks::Caller,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn key(namespace: &str, service: &str) -> String {
    format!("{namespace}/{service}")
}

impl Controller {
    /// The controller over `store`'s releases, as a restart finds them.
    pub fn load(state: Arc<State>, window: Arc<Window>, store: Store) -> Result<Self, Error> {
        let book = store.load::<Book>(FILE)?.unwrap_or_default();
        Ok(Controller {
            state,
            window,
            store,
            book: Mutex::new(book),
            hooks: webhooks::Caller::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a release. Checks the split carries both backends (and finds
    /// the stable when the spec names none), then applies the first step.
    pub async fn start(self: &Arc<Self>, spec: spec::Spec) -> Result<pb::ReleaseResponse, Error> {
        let spec = self.resolve(spec)?;
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
        let record = Record::new(id, spec, now_ms());
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
            self.store.save(FILE, &*book)?;
        }
        tracing::info!(release = %k, "release started");
        if let Err(e) = self.apply(&k).await {
            // The first weight did not take: the release never began.
            let mut book = self.lock();
            book.active.remove(&k);
            self.store.save(FILE, &*book)?;
            return Err(e);
        }
        self.get(&k)
    }

    /// The stable and canary against the split in force.
    fn resolve(&self, mut spec: spec::Spec) -> Result<spec::Spec, Error> {
        let st = self.state.status(&spec.namespace, &spec.service)?;
        let service = key(&spec.namespace, &spec.service);
        if !st.has_split {
            return Err(Error::Split(format!(
                "nothing splits {service}: apply a TrafficSplit (or HTTPRoute) with the stable and the canary as backends first"
            )));
        }
        let names: Vec<&str> = st.backends.iter().map(|b| b.service.as_str()).collect();
        if !names.contains(&spec.canary.as_str()) {
            return Err(Error::Split(format!(
                "{} routes to {}, not to the canary {:?}",
                st.routed_by,
                names.join(", "),
                spec.canary
            )));
        }
        if spec.stable.is_empty() {
            let others: Vec<&&str> = names.iter().filter(|n| **n != spec.canary).collect();
            match others.as_slice() {
                [one] => spec.stable = (**one).to_string(),
                _ => {
                    return Err(Error::Split(format!(
                        "{} has {} backends besides the canary; name the stable",
                        st.routed_by,
                        others.len()
                    )));
                }
            }
        } else if !names.contains(&spec.stable.as_str()) {
            return Err(Error::Split(format!(
                "{} routes to {}, not to the stable {:?}",
                st.routed_by,
                names.join(", "),
                spec.stable
            )));
        }
        Ok(spec)
    }

    /// A command from `who` on the release under way.
    pub async fn command(
        self: &Arc<Self>,
        namespace: &str,
        service: &str,
        action: &str,
        who: &str,
    ) -> Result<pb::ReleaseResponse, Error> {
        let command = Command::parse(action).ok_or_else(|| Error::Action(action.into()))?;
        let k = key(namespace, service);
        {
            let mut book = self.lock();
            let r = book
                .active
                .get_mut(&k)
                .ok_or_else(|| Error::Missing(k.clone()))?;
            r.command(now_ms(), command, who)?;
            tracing::info!(release = %k, phase = r.phase.as_str(), reason = %r.reason, "release command");
            self.store.save(FILE, &*book)?;
        }
        // The command stands, persisted, even when its weight cannot apply
        // yet: status says why, and every tick tries again.
        if let Err(e) = self.apply(&k).await {
            self.blocked(&k, &e);
        }
        self.get(&k)
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
                let [c, s] = self.samples(r, window);
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
        book.history
            .iter()
            .rev()
            .find(|r| key(&r.spec.namespace, &r.spec.service) == k)
            .map(|r| views::response(r, None, now))
            .ok_or_else(|| Error::Never(k.into()))
    }

    /// Past releases of `namespace/service`, newest first.
    pub fn history(&self, namespace: &str, service: &str) -> pb::ReleaseHistoryResponse {
        let k = key(namespace, service);
        let book = self.lock();
        pb::ReleaseHistoryResponse {
            releases: book
                .active
                .get(&k)
                .into_iter()
                .chain(
                    book.history
                        .iter()
                        .rev()
                        .filter(|r| key(&r.spec.namespace, &r.spec.service) == k),
                )
                .map(views::release)
                .collect(),
        }
    }

    /// The canary's and the stable's own traffic over the last `window_ms`.
    fn samples(&self, r: &Record, window_ms: u64) -> [Sample; 2] {
        let window = Duration::from_millis(window_ms);
        [&r.spec.canary, &r.spec.stable].map(|backend| {
            let Some((service, version)) = self.state.origin(&r.spec.namespace, backend) else {
                return Sample::default();
            };
            self.window
                .stats_within(Some(&service), window, "inbound")
                .into_iter()
                .find(|row| row.version == version)
                .map(|row| Sample {
                    requests: row.requests,
                    failures: row.failures,
                    success_rate: row.success_rate.map(|s| s * 100.0),
                    p99_ms: row.p99_ms,
                })
                .unwrap_or_default()
        })
    }

    /// Puts the weight `k`'s record asks for into the rules, if it is not
    /// there yet, and files a finished release in the history.
    async fn apply(self: &Arc<Self>, k: &str) -> Result<(), Error> {
        let Some(r) = self.lock().active.get(k).filter(|r| r.pending).cloned() else {
            return Ok(());
        };
        let state = self.state.clone();
        let spec = r.spec.clone();
        let weight = r.canary_weight;
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
        let mut book = self.lock();
        let Some(current) = book.active.get_mut(k) else {
            return Ok(());
        };
        // Only if nothing moved it meanwhile; else the newer weight applies next.
        if current.updated_ms == r.updated_ms && current.canary_weight == weight {
            current.pending = false;
            current.blocked.clear();
            if current.phase.finished() {
                let done = book.active.remove(k).expect("present");
                tracing::info!(release = %k, phase = done.phase.as_str(), reason = %done.reason, "release finished");
                if done.spec.hooks(spec::Hook::PostRollout).count() > 0 {
                    let (hooks, record) = (self.hooks.clone(), done.clone());
                    tokio::spawn(async move {
                        match hooks.all(&record, spec::Hook::PostRollout).await {
                            Ok(answers) => tracing::info!(?answers, "post-rollout webhooks"),
                            Err(e) => tracing::warn!(error = %e, "post-rollout webhook"),
                        }
                    });
                }
                book.history.push(done);
                let excess = book.history.len().saturating_sub(HISTORY);
                book.history.drain(..excess);
            }
            self.store.save(FILE, &*book)?;
        }
        Ok(())
    }

    /// Runs due checks and applies unapplied weights until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let keys: Vec<String> = self.lock().active.keys().cloned().collect();
            for k in keys {
                if let Err(e) = self.check(&k).await {
                    tracing::error!(release = %k, error = %e, "release check");
                }
                if let Err(e) = self.apply(&k).await {
                    // Kept pending: the next tick tries again.
                    self.blocked(&k, &e);
                }
            }
        }
    }

    /// Records why `k`'s weight did not apply, and says so once per reason
    /// rather than at every tick.
    fn blocked(&self, k: &str, e: &Error) {
        let mut book = self.lock();
        let Some(r) = book.active.get_mut(k) else {
            return;
        };
        let why = e.to_string();
        if r.blocked != why {
            tracing::error!(release = %k, error = %why, "applying a release's weight");
            r.blocked = why;
            if let Err(e) = self.store.save(FILE, &*book) {
                tracing::error!(error = %e, "saving the releases");
            }
        }
    }

    /// `k`'s check, if one is due: the analysis, then the hooks (outside
    /// the lock), then the transition, unless a command moved it meanwhile.
    async fn check(&self, k: &str) -> Result<(), Error> {
        let now = now_ms();
        let r = match self.lock().active.get(k) {
            Some(r) if r.due(now) && !r.pending => r.clone(),
            _ => return Ok(()),
        };
        let samples = self.samples(&r, r.window_ms(now));
        let (mut outcome, mut detail) = analysis::judge(&r.spec, &samples[0], &samples[1]);
        if outcome != Outcome::NoData
            && let Err(e) = self.hooks.all(&r, spec::Hook::Rollout).await
        {
            outcome = Outcome::Failed;
            detail = format!("{e}; {detail}");
        }
        let mut verdict = None;
        for hook in r.spec.hooks(spec::Hook::Rollback) {
            if self.hooks.call(&r, hook).await.is_ok() {
                verdict = Some((
                    Command::Rollback,
                    format!("the rollback webhook {}", hook.name),
                ));
                break;
            }
        }
        let last = r.step + 1 == r.spec.steps.len();
        if verdict.is_none()
            && last
            && outcome == Outcome::Passed
            && !r.spec.manual_promotion
            && r.spec.hooks(spec::Hook::ConfirmPromotion).count() > 0
            && self
                .hooks
                .all(&r, spec::Hook::ConfirmPromotion)
                .await
                .is_ok()
        {
            verdict = Some((
                Command::Promote,
                "the confirm-promotion webhook".to_string(),
            ));
        }
        let mut book = self.lock();
        let Some(current) = book.active.get_mut(k) else {
            return Ok(());
        };
        if current.updated_ms != r.updated_ms || current.phase != r.phase {
            // A command moved it while the hooks ran; the next tick judges anew.
            return Ok(());
        }
        match verdict {
            Some((Command::Rollback, who)) => {
                current.command(now, Command::Rollback, &who)?;
            }
            other => {
                current.on_check(now, outcome, detail, samples);
                if let Some((command, who)) = other
                    && current.phase == machine::Phase::WaitingForPromotion
                {
                    current.command(now, command, &who)?;
                }
            }
        }
        tracing::info!(release = %k, phase = current.phase.as_str(), weight = current.canary_weight, reason = %current.reason, "release check");
        self.store.save(FILE, &*book)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
