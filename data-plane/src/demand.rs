//! On-demand discovery in the sidecar: the names its app calls that it
//! holds no config for are asked of the control plane (the discovery
//! stream sends them), a request waits a bounded time for the answer, and
//! a name asked on demand that goes unused is dropped again. Names listed
//! at startup stay for good; with `*` every service is held and nothing is
//! asked.

use crate::config;
use crate::errors::Error;
use crate::state::State;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};

/// The most names asked on demand: past it, a request to yet another
/// unknown name fails at once instead of growing the subscription.
pub const MAX_ASKED: usize = 4_096;

/// One subscribed name.
#[derive(Debug)]
struct Name {
    /// Listed at startup: never dropped.
    fixed: bool,
    /// A request asked for it since the last sweep.
    asked: bool,
}

/// The sidecar's subscription.
#[derive(Debug)]
pub struct Demand {
    settings: config::Demand,
    names: Mutex<Names>,
    /// Wakes the discovery stream: names to send.
    asks: Notify,
    /// Bumped each time a config is applied, for waiting requests.
    applied: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Names {
    all: BTreeMap<String, Name>,
    /// Added since the stream last sent them.
    added: Vec<String>,
}

impl Default for Demand {
    /// Every service, as before on-demand discovery.
    fn default() -> Self {
        Demand::new(config::Demand::default())
    }
}

impl Demand {
    /// The subscription `settings` describe.
    pub fn new(settings: config::Demand) -> Self {
        let all = settings
            .services
            .iter()
            .map(|n| {
                let name = Name {
                    fixed: true,
                    asked: false,
                };
                (n.clone(), name)
            })
            .collect();
        Demand {
            settings,
            names: Mutex::new(Names {
                all,
                added: Vec::new(),
            }),
            asks: Notify::new(),
            applied: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a new discovery stream subscribes to: every name held (`*` for
    /// every service). Sent names are no longer new.
    pub fn subscription(&self) -> Vec<String> {
        let mut names = self.lock();
        names.added.clear();
        if self.settings.all {
            return vec!["*".to_string()];
        }
        names.all.keys().cloned().collect()
    }

    /// Names asked since the stream last sent any.
    pub fn added(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().added)
    }

    /// Resolves once a request has asked for a name not yet sent.
    pub async fn asked(&self) {
        self.asks.notified().await
    }

    /// Called by the discovery stream each time it applies a config.
    pub fn applied(&self) {
        self.applied.send_modify(|n| *n += 1);
    }

    /// Waits for a config in which `found` holds, asking the control plane
    /// for `names` (what the request called the service, its virtual IP)
    /// unless the sidecar holds every service already. Fails at once when
    /// the control plane answered that it knows none of them, and with
    /// [`Error::DiscoveryTimeout`] once the wait is over.
    pub async fn wait(
        &self,
        state: &ArcSwap<State>,
        names: &[String],
        found: impl Fn(&State) -> bool,
    ) -> Result<Arc<State>, Error> {
        let first = names.first().cloned().unwrap_or_default();
        if self.settings.all {
            return Err(Error::UnknownService(first));
        }
        // Watched before looking, so an apply between the look and the
        // wait is not missed.
        let mut applied = self.applied.subscribe();
        self.ask(names)?;
        let deadline = tokio::time::Instant::now() + self.settings.wait;
        loop {
            let s = state.load_full();
            if found(&s) {
                return Ok(s);
            }
            if names.iter().all(|n| s.is_unknown(n)) {
                return Err(Error::UnknownService(first));
            }
            if tokio::time::timeout_at(deadline, applied.changed())
                .await
                .is_err()
            {
                return Err(Error::DiscoveryTimeout {
                    name: first,
                    waited: self.settings.wait,
                });
            }
        }
    }

    /// Marks `names` asked, adding those not yet subscribed.
    fn ask(&self, names: &[String]) -> Result<(), Error> {
        let mut held = self.lock();
        let mut added = false;
        for n in names {
            if let Some(name) = held.all.get_mut(n) {
                name.asked = true;
                continue;
            }
            if held.all.len() >= MAX_ASKED + self.settings.services.len() {
                return Err(Error::UnknownService(n.clone()));
            }
            let name = Name {
                fixed: false,
                asked: true,
            };
            held.all.insert(n.clone(), name);
            held.added.push(n.clone());
            added = true;
        }
        drop(held);
        if added {
            self.asks.notify_one();
        }
        Ok(())
    }

    /// How often [`Demand::sweep`] should run.
    pub fn sweep_every(&self) -> std::time::Duration {
        self.settings.unsubscribe_after
    }

    /// Drops the names asked on demand that no request used since the last
    /// sweep (`used`: whether config `state` holds for a name had requests),
    /// and returns them, for the stream to unsubscribe.
    pub fn sweep(&self, used: impl Fn(&str) -> bool) -> Vec<String> {
        let mut held = self.lock();
        let mut dropped = Vec::new();
        held.all.retain(|n, name| {
            let keep = name.fixed || name.asked || used(n);
            name.asked = false;
            if !keep {
                dropped.push(n.clone());
            }
            keep
        });
        dropped
    }
}
