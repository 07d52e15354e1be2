//! Registry changes gathered into one push. A rollout changes endpoints
//! one pod at a time; rebuilt and pushed for each, every subscriber would
//! take a response per pod. Instead the first change of a burst opens a
//! window (10 ms by default), and everything taken meanwhile is published
//! together at its end, so a lone change waits no longer than the window.
//! Each change gets a ticket, which names the version that holds it once
//! published (a deregistration waits for that version to reach everyone).
//! Rule changes are not batched: `meshctl apply` answers with the version
//! that holds them.

use super::{Inner, State};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The window and its bookkeeping.
pub(super) struct Batch {
    /// Zero: every change is published at once.
    window: Duration,
    wake: Notify,
    /// The newest ticket whose change is published.
    flushed: watch::Sender<u64>,
}

impl Batch {
    pub(super) fn new(window: Duration) -> Self {
        Batch {
            window,
            wake: Notify::new(),
            flushed: watch::channel(0).0,
        }
    }
}

impl State {
    /// Sets how long registry changes are gathered (zero: not at all).
    pub fn with_batch_window(mut self, window: Duration) -> Self {
        self.batch = Batch::new(window);
        self
    }

    /// Publishes the registry change just made to `inner`, to the endpoints
    /// of the services `touched` names, by the end of the window (at once
    /// without one); its ticket.
    pub(super) fn publish_soon(
        &self,
        inner: &mut Inner,
        touched: impl IntoIterator<Item = crate::registry::ServiceKey>,
    ) -> u64 {
        if let Some(dirty) = &mut inner.dirty {
            dirty.extend(touched);
        }
        inner.tickets += 1;
        if self.batch.window.is_zero() {
            self.publish(inner);
        } else {
            self.batch.wake.notify_one();
        }
        inner.tickets
    }

    /// Notes, as a publication starts, that it holds every change taken.
    pub(super) fn flushing(&self, inner: &Inner) {
        self.batch.flushed.send_if_modified(|f| {
            let newer = *f < inner.tickets;
            *f = (*f).max(inner.tickets);
            newer
        });
    }

    /// The version that holds the change of `ticket`, once it is published.
    pub async fn published(&self, ticket: u64) -> u64 {
        let mut flushed = self.batch.flushed.subscribe();
        // The sender lives as long as this state.
        let _ = flushed.wait_for(|f| *f >= ticket).await;
        self.version()
    }

    /// Publishes each window's changes at its end, for as long as the
    /// state lives. Nothing to do without a window.
    pub async fn run_batches(self: Arc<Self>) {
        if self.batch.window.is_zero() {
            return;
        }
        loop {
            self.batch.wake.notified().await;
            tokio::time::sleep(self.batch.window).await;
            // Off the workers: publishing rebuilds the view.
            let done = self
                .off_runtime(|s| {
                    let mut inner = s.lock();
                    s.publish(&mut inner);
                })
                .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "publishing a batch of registry changes failed");
            }
        }
    }
}
