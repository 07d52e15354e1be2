//! Shadow traffic: a copy of a request (its buffered body) goes to the
//! mirror backend in a spawned task, and the answer is read and dropped.
//! At most `IN_FLIGHT` copies are under way per sidecar, each abandoned
//! after `TIMEOUT`; beyond that copies are dropped and counted, so a
//! stalled shadow can never pile up connections and work in the sidecar.

use crate::body::{Replay, ReqBody};
use crate::forward::Forwarder;
use crate::http::copy_head;
use crate::state::Mirror;
use crate::telemetry::metrics::{Metrics, MirrorLabels};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Most mirrored requests in flight at once (a healthy 5 ms shadow at
/// 10k rps needs about 50).
pub(super) const IN_FLIGHT: usize = 64;
/// A mirrored request is abandoned after this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends shadow copies.
pub(super) struct Mirrors {
    /// Whether this sidecar can speak mTLS.
    mtls: bool,
    in_flight: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Mirrors {
    pub(super) fn new(mtls: bool, metrics: Arc<Metrics>) -> Self {
        Mirrors {
            mtls,
            in_flight: Arc::default(),
            metrics,
        }
    }

    /// Sends a copy to the shadow backend over `forwarder` and forgets it.
    pub(super) fn send(
        &self,
        forwarder: &Forwarder,
        m: &Mirror,
        head: &http::request::Parts,
        body: Replay,
    ) {
        let cluster = Arc::clone(&m.cluster);
        let Ok(i) = cluster.pick(None) else {
            return;
        };
        let count = |result| {
            self.metrics
                .mirrors
                .get_or_create(&MirrorLabels {
                    backend: cluster.name.clone(),
                    result,
                })
                .inc();
        };
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            count("dropped");
            tracing::debug!(cluster = %cluster.name, "mirror dropped: too many in flight");
            return;
        }
        count("sent");
        let req = copy_head(head, ReqBody::Replay(body));
        let endpoint = cluster.endpoints[i].clone();
        let secure = self.mtls && endpoint.identity.is_some();
        let (forwarder, in_flight) = (forwarder.clone(), Arc::clone(&self.in_flight));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, async {
                // Read the answer to the end so the connection can be reused.
                if let Ok(resp) = forwarder.forward(req, &endpoint.authority, secure).await {
                    let _ = resp.into_body().collect().await;
                }
            })
            .await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
