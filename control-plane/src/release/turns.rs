//! Each release's tick on a task of its own, one at a time per release: a
//! release waiting on a slow webhook or an API server that does not answer
//! never holds up another, and one still at work is not started twice.

use super::{Controller, Error};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// The releases at work now.
type Busy = Arc<Mutex<BTreeSet<String>>>;

/// A release's turn: held by the task doing its work, given back when
/// that task ends, however it ends.
struct Turn {
    busy: Busy,
    key: String,
}

impl Turn {
    /// `key`'s turn, unless a task already has it.
    fn take(busy: &Busy, key: &str) -> Option<Turn> {
        let fresh = busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string());
        fresh.then(|| Turn {
            busy: busy.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Controller {
    /// Starts the tick's work of every release not at work already.
    pub(super) fn step_all(self: &Arc<Self>) {
        let keys: Vec<String> = self.lock().active.keys().cloned().collect();
        for k in keys {
            let Some(turn) = Turn::take(&self.busy, &k) else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.step(&turn.key).await;
                drop(turn);
            });
        }
    }

    /// One tick's work for `k`: its due check, then its weight; the
    /// metrics follow each at once, not at the next tick.
    async fn step(self: &Arc<Self>, k: &str) {
        let checked = self.check(k).await;
        self.observe();
        if let Err(e) = checked {
            tracing::error!(release = %k, error = %e, "release check");
            return;
        }
        if let Err(e) = self.apply(k).await {
            // Kept pending: the next tick tries again.
            self.blocked(k, &e).await;
        }
        self.observe();
    }

    /// Records why `k`'s weight did not apply, and says so once per reason
    /// rather than at every tick.
    pub(super) async fn blocked(&self, k: &str, e: &Error) {
        {
            let mut book = self.lock();
            let Some(r) = book.active.get_mut(k) else {
                return;
            };
            let why = e.to_string();
            if r.blocked == why {
                return;
            }
            tracing::error!(release = %k, error = %why, "applying a release's weight");
            r.blocked = why;
            if let Err(e) = self.save(&book) {
                tracing::error!(error = %e, "saving the releases");
            }
        }
        if let Err(e) = self.flush(k).await {
            tracing::error!(error = %e, "saving the releases");
        }
    }
}
