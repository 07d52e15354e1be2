//! Leader election among the control plane's replicas: a
//! `coordination.k8s.io/v1` Lease (`<namespace>/mesh-control`) held
//! through kube-lease-manager, whose server-side apply makes two replicas
//! taking a free Lease at once conflict rather than both win. Every
//! replica serves discovery, identity and telemetry from its own watches;
//! only the holder writes (rule statuses now, releases later). A holder
//! that dies is replaced once its Lease expires (a follower sleeps until
//! the expiry it last read, then takes the Lease); one that stops gives
//! the Lease up on its way out.

use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The Lease's name.
pub const LEASE: &str = "mesh-control";

/// Who competes, where, and for how long a Lease lasts.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's name (the Lease's holderIdentity while it leads).
    pub identity: String,
    /// How long the Lease lasts unrenewed.
    pub duration_secs: u64,
}

/// Whether this replica leads, as it learns it.
pub struct Leadership {
    /// True while this replica holds the Lease.
    pub leading: watch::Receiver<bool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Gives the Lease up (if held) and stops competing.
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Competes for the Lease until released. A Lease that cannot be read or
/// created (its namespace missing, the API server away) is retried, and
/// said once until it works.
pub fn start(client: kube::Client, election: Election) -> Leadership {
    let (tx, leading) = watch::channel(false);
    let (stop, mut stopped) = oneshot::channel::<()>();
    let lease = format!("{}/{LEASE}", election.namespace);
    // Renewed when a third of the Lease is left.
    let grace = (election.duration_secs / 3).max(1);
    let task = tokio::spawn(async move {
        let mut failing = false;
        loop {
            let built = LeaseManagerBuilder::new(client.clone(), LEASE)
                .with_namespace(&election.namespace)
                .with_identity(&election.identity)
                .with_duration(election.duration_secs)
                .with_grace(grace)
                .with_create_mode(LeaseCreateMode::AutoCreate)
                .build()
                .await;
            let manager = match built {
                Ok(m) => m,
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%lease, error = %e, "leader election: the Lease cannot be used; retrying");
                    }
                    tokio::select! {
                        _ = &mut stopped => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            failing = false;
            let (mut held, handle) = manager.watch().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => {
                        // Dropping the receiver makes the manager release
                        // the Lease and end.
                        drop(held);
                        let _ = handle.await;
                        tx.send_replace(false);
                        tracing::info!(%lease, identity = %election.identity, "leader election: stopped, the Lease released");
                        return;
                    }
                    changed = held.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let now = *held.borrow_and_update();
                        tx.send_replace(now);
                        let role = if now { "leading" } else { "following" };
                        tracing::info!(%lease, identity = %election.identity, "leader election: {role}");
                    }
                }
            }
            // The manager ended on an error: follow, and compete afresh.
            tx.send_replace(false);
            if let Ok(Err(e)) = handle.await {
                tracing::warn!(%lease, error = %e, "leader election: the Lease manager ended; competing again");
            }
        }
    });
    Leadership {
        leading,
        stop,
        task,
    }
}
