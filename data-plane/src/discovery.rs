//! The single writer of the sidecar's `State`: subscribes to the control
//! plane, applies each snapshot atomically, ACKs or NACKs it, and reconnects
//! with backoff, serving the last good config meanwhile. It owns the
//! endpoint statistics store each conversion draws on. Also registers the
//! instance with heartbeats and deregisters it on shutdown.

use crate::config::Identity;
use crate::demand::Demand;
use crate::state::{EndpointStats, Rejected, State};
use arc_swap::ArcSwap;
use mesh_proto::v1 as pb;
use mesh_proto::v1::discovery_client::DiscoveryClient;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Snapshots for 10,000 endpoints exceed tonic's 4 MiB default.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The proto form of an identity.
pub fn node(id: &Identity) -> pb::Node {
    pb::Node {
        service: id.service.clone(),
        version: id.version.clone(),
        namespace: id.namespace.clone(),
        instance_id: id.instance_id.clone(),
    }
}

/// Keeps a subscription open forever.
pub async fn subscribe(
    channel: Channel,
    node: pb::Node,
    state: Arc<ArcSwap<State>>,
    reconnect_max: Duration,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    demand: Arc<Demand>,
) {
    let mut backoff = FIRST_BACKOFF;
    // Owned here, by the single writer, so what was learned about each
    // endpoint survives snapshots and reconnects alike.
    let mut stats = EndpointStats::default();
    // The last full snapshot applied: what a delta builds on, on this
    // stream and the next (a reconnect says what it holds, and gets only
    // what changed meanwhile).
    let mut applied: Option<pb::DiscoveryResponse> = None;
    loop {
        let mut delivered = false;
        let mut held = Held {
            applied: &mut applied,
            stats: &mut stats,
            delivered: &mut delivered,
        };
        match subscribe_once(&channel, &node, &state, &metrics, &demand, &mut held).await {
            Ok(()) => tracing::warn!("control plane closed the discovery stream"),
            Err(e) => {
                tracing::warn!(error = %e, "discovery stream failed; serving last good config")
            }
        }
        // A stream that delivered config was healthy: start the backoff over.
        if delivered {
            backoff = FIRST_BACKOFF;
        }
        // Jitter keeps a fleet of sidecars from reconnecting in lockstep.
        let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(reconnect_max);
    }
}

/// What one stream leaves to the next.
struct Held<'a> {
    applied: &'a mut Option<pb::DiscoveryResponse>,
    stats: &'a mut EndpointStats,
    /// The stream delivered config.
    delivered: &'a mut bool,
}

/// The first request of a stream: who this is, what it subscribes to, and
/// what it holds.
fn first_request(
    node: &pb::Node,
    state: &State,
    applied: Option<&pb::DiscoveryResponse>,
    demand: &Demand,
) -> pb::DiscoveryRequest {
    let mut subscribe = demand.subscription();
    if subscribe.is_empty() {
        // No name would mean every service: name its own, which it
        // receives anyway.
        subscribe.push(format!("{}.{}", node.service, node.namespace));
    }
    let mut first = pb::DiscoveryRequest {
        node: Some(node.clone()),
        version_info: state.version.clone(),
        incremental: true,
        subscribe,
        ..Default::default()
    };
    if let Some(a) = applied.filter(|a| a.version_info == state.version) {
        first.service_versions = a
            .services
            .iter()
            .map(|s| {
                (
                    mesh_proto::incremental::service_key(s),
                    s.resource_version.clone(),
                )
            })
            .collect();
        first.cluster_versions = a
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.resource_version.clone()))
            .collect();
    }
    first
}

async fn subscribe_once(
    channel: &Channel,
    node: &pb::Node,
    state: &ArcSwap<State>,
    metrics: &crate::telemetry::metrics::Metrics,
    demand: &Demand,
    held: &mut Held<'_>,
) -> Result<(), tonic::Status> {
    let mut client = DiscoveryClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(4);
    let first = first_request(node, &state.load(), held.applied.as_ref(), demand);
    tx.send(first).await.expect("receiver is alive");
    let mut stream = client
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut sweep = tokio::time::interval(demand.sweep_every());
    sweep.reset();
    loop {
        let resp = tokio::select! {
            resp = stream.message() => match resp? {
                Some(resp) => resp,
                None => break,
            },
            // A request asked for a name this sidecar holds nothing for.
            () = demand.asked() => {
                let subscribe = demand.added();
                if !subscribe.is_empty() {
                    let req = pb::DiscoveryRequest { subscribe, ..Default::default() };
                    if tx.send(req).await.is_err() { break }
                }
                continue;
            }
            _ = sweep.tick() => {
                let now = state.load();
                let unsubscribe = demand.sweep(|n| now.take_used(n));
                if !unsubscribe.is_empty() {
                    tracing::debug!(?unsubscribe, "dropping services no request used");
                    let req = pb::DiscoveryRequest { unsubscribe, ..Default::default() };
                    if tx.send(req).await.is_err() { break }
                }
                continue;
            }
        };
        *held.delivered = true;
        let reply = apply(resp, node, state, metrics, held).await?;
        demand.applied();
        if tx.send(reply).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Applies one response, atomically or not at all, and says so: the reply.
async fn apply(
    resp: pb::DiscoveryResponse,
    node: &pb::Node,
    state: &ArcSwap<State>,
    metrics: &crate::telemetry::metrics::Metrics,
    held: &mut Held<'_>,
) -> Result<pb::DiscoveryRequest, tonic::Status> {
    let now = std::time::Instant::now();
    let (version, nonce) = (resp.version_info.clone(), resp.nonce.clone());
    // Converting a large snapshot takes a while (10,000 splits: most of
    // a second in a debug build), and a sidecar runs one worker: done
    // there it would hold up every request and the heartbeats, whose
    // lease would lapse. So it runs on a blocking thread, and the worker
    // only swaps the result in.
    let (base, prev, namespace) = (
        held.applied.take(),
        state.load_full(),
        node.namespace.clone(),
    );
    let mut lent = std::mem::take(held.stats);
    let (base, lent, converted) = tokio::task::spawn_blocking(move || {
        let converted = whole(base.as_ref(), resp).and_then(|full| {
            let next = State::from_proto(&full, &namespace, &prev, &mut lent, now)?;
            Ok((full, next))
        });
        (base, lent, converted)
    })
    .await
    .map_err(|e| tonic::Status::internal(format!("converting a snapshot failed: {e}")))?;
    (*held.applied, *held.stats) = (base, lent);
    Ok(match converted {
        Ok((full, next)) => {
            // One atomic swap: requests already running keep the Arc they loaded.
            state.store(Arc::new(next));
            *held.applied = Some(full);
            metrics.config_applied(&version);
            tracing::info!(%version, "config applied");
            pb::DiscoveryRequest {
                version_info: version,
                response_nonce: nonce,
                ..Default::default()
            }
        }
        Err(rejected) => {
            tracing::warn!(%version, reason = %rejected, "config rejected; keeping the previous one");
            pb::DiscoveryRequest {
                version_info: state.load().version.clone(),
                response_nonce: nonce,
                error_detail: Some(pb::ErrorDetail {
                    message: rejected.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
    })
}

/// The full snapshot a response gives: itself, or a delta applied to the
/// last one applied on this stream (refused when it builds on another).
fn whole(
    applied: Option<&pb::DiscoveryResponse>,
    resp: pb::DiscoveryResponse,
) -> Result<pb::DiscoveryResponse, Rejected> {
    if resp.base_version.is_empty() {
        return Ok(resp);
    }
    let Some(base) = applied else {
        return Err(Rejected(vec![format!(
            "incremental response {} builds on version {}, but none was applied on this stream",
            resp.version_info, resp.base_version
        )]));
    };
    mesh_proto::incremental::apply(base, &resp).map_err(|e| Rejected(vec![e]))
}

/// Registration: heartbeats carry readiness; `stopped` is set under the lock
/// at deregistration so no heartbeat can re-register the instance afterwards.
pub struct Registration {
    channel: Channel,
    node: pb::Node,
    stopped: Arc<Mutex<bool>>,
}

impl Registration {
    /// Starts heartbeating `address` with readiness from `health`.
    /// `identity` is the SPIFFE ID the inbound presents (None: plaintext);
    /// with one, the instance reports ready only once `certificate` exists,
    /// so no peer dials mTLS to an instance that cannot terminate it yet.
    pub fn start(
        channel: Channel,
        node: pb::Node,
        address: SocketAddr,
        mut health: watch::Receiver<bool>,
        identity: Option<String>,
        certificate: Option<crate::tls::identity::Current>,
    ) -> Self {
        let stopped = Arc::new(Mutex::new(false));
        let reg = Registration {
            channel: channel.clone(),
            node: node.clone(),
            stopped: stopped.clone(),
        };
        tokio::spawn(async move {
            let mut client = DiscoveryClient::new(channel);
            let mut interval = Duration::from_secs(1);
            let mut health_open = true;
            let mut waiting_for_cert;
            loop {
                {
                    let stopped = stopped.lock().await;
                    if *stopped {
                        return;
                    }
                    let certified = certificate.as_ref().is_none_or(|c| c.load().is_some());
                    waiting_for_cert = !certified;
                    let req = pb::HeartbeatRequest {
                        node: Some(node.clone()),
                        address: address.to_string(),
                        ready: *health.borrow_and_update() && certified,
                        identity: identity.clone().unwrap_or_default(),
                        cert_not_after_unix: certificate
                            .as_ref()
                            .and_then(|c| c.load().as_ref().map(|c| c.not_after_unix))
                            .unwrap_or(0),
                    };
                    match tokio::time::timeout(Duration::from_secs(2), client.heartbeat(req)).await
                    {
                        Ok(Ok(resp)) => {
                            interval = Duration::from_millis(resp.into_inner().interval_ms.max(10));
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
                        Err(_) => tracing::debug!("heartbeat timed out"),
                    }
                }
                // A readiness change is reported at once, not at the next beat.
                // A closed channel means readiness is final (no health check):
                // keep beating on the interval.
                // Until the first certificate arrives, check back quickly.
                let pause = if waiting_for_cert {
                    interval.min(Duration::from_millis(50))
                } else {
                    interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    changed = health.changed(), if health_open => health_open = changed.is_ok(),
                }
            }
        });
        reg
    }

    /// Stops heartbeats and removes the instance from every endpoint set.
    /// Returns whether the control plane confirmed every sidecar has the change.
    pub async fn deregister(&self, timeout: Duration) -> bool {
        *self.stopped.lock().await = true;
        let mut client = DiscoveryClient::new(self.channel.clone());
        let req = pb::DeregisterRequest {
            node: Some(self.node.clone()),
        };
        match tokio::time::timeout(timeout, client.deregister(req)).await {
            Ok(Ok(resp)) => resp.into_inner().propagated,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "deregistration failed; the lease will expire instead");
                false
            }
            Err(_) => {
                tracing::warn!("deregistration timed out; the lease will expire instead");
                false
            }
        }
    }
}
