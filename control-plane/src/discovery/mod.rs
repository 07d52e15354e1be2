//! The Discovery gRPC service: streams snapshots to sidecars, records their
//! ACKs and NACKs, and takes heartbeats and deregistrations, each only from
//! a caller whose certificate proves it may speak for the node it names.

use crate::listen::Ending;
use crate::registry::local::NodeId;
use crate::state::{Beat, State};
use futures::Stream;
use mesh_proto::prebuilt::{Prebuilt, server::discovery_server};
use mesh_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Discovery service implementation.
pub struct Discovery {
    state: Arc<State>,
    next_stream: AtomicU64,
    heartbeat: Duration,
    propagation_timeout: Duration,
    ending: Ending,
}

impl Discovery {
    /// A discovery service over shared state; every stream ends (UNAVAILABLE,
    /// so the sidecar reconnects) once `ending` turns true.
    pub fn new(
        state: Arc<State>,
        heartbeat: Duration,
        propagation_timeout: Duration,
        ending: Ending,
    ) -> Self {
        Discovery {
            state,
            next_stream: AtomicU64::new(1),
            heartbeat,
            propagation_timeout,
            ending,
        }
    }
}

fn node_id(node: Option<pb::Node>) -> Result<(pb::Node, NodeId), Status> {
    let node = node.ok_or_else(|| Status::invalid_argument("node is required"))?;
    for (field, v) in [
        ("node.service", &node.service),
        ("node.namespace", &node.namespace),
        ("node.instance_id", &node.instance_id),
    ] {
        if v.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{field} must not be empty"
            )));
        }
    }
    let id = NodeId {
        namespace: node.namespace.clone(),
        service: node.service.clone(),
        version: node.version.clone(),
        instance_id: node.instance_id.clone(),
    };
    Ok((node, id))
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<Prebuilt, Status>> + Send>>;

#[tonic::async_trait]
impl discovery_server::Discovery for Discovery {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let caller = crate::mtls::identity_of(&request);
        // Refused before reading a byte of what an anonymous caller sends.
        if caller.is_none() {
            self.state
                .speaks_for("Subscribe", None, "", "")
                .map_err(Status::from)?;
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let incremental = first.incremental;
        let (node, _) = node_id(first.node)?;
        self.state
            .speaks_for(
                "Subscribe",
                caller.as_deref(),
                &node.namespace,
                &node.service,
            )
            .map_err(Status::from)?;
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream = id, service = %node.service, instance = %node.instance_id, "proxy subscribed");
        self.state.proxies().add(id, node);
        let state = self.state.clone();
        let mut ending = self.ending.clone();
        // Small buffer: a slow proxy should see the newest snapshot, not a queue of stale ones.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            // Nothing until the config is whole (cluster mode, just
            // started): the sidecar keeps running its last good one.
            let mut complete = state.completed();
            tokio::select! {
                whole = async { complete.wait_for(|c| *c).await.is_ok() } => if !whole { return },
                _ = ending.ended() => {
                    let _ = tx.send(Err(crate::listen::Ending::status())).await;
                    return;
                }
                _ = tx.closed() => return,
            }
            let mut snapshots = state.subscribe();
            // The version last sent, which the next change builds on when
            // the sidecar applies deltas; `full` once it refused one (it
            // runs something older than what was sent).
            let (mut sent, mut full) = (None, !incremental);
            'send: loop {
                // A refcount bump: both forms were encoded once for all streams.
                let snapshot = snapshots.borrow_and_update().clone();
                let message = match &snapshot.delta {
                    Some((base, delta)) if !full && sent == Some(*base) => Some(delta.clone()),
                    _ => None,
                };
                let sent_delta = message.is_some();
                let message = message.unwrap_or_else(|| snapshot.full());
                (sent, full) = (Some(snapshot.version), !incremental);
                if tx.send(Ok(message)).await.is_err() {
                    break;
                }
                loop {
                    tokio::select! {
                        _ = ending.ended() => {
                            let _ = tx.send(Err(crate::listen::Ending::status())).await;
                            break 'send;
                        }
                        changed = snapshots.changed() => {
                            if changed.is_err() { break 'send; }
                            continue 'send;
                        }
                        msg = inbound.message() => match msg {
                            Ok(Some(req)) => {
                                // The nonce names the version a reply answers, even
                                // if newer ones were sent meanwhile.
                                let Some((v, delta)) = crate::index::parse_nonce(&req.response_nonce) else { continue };
                                let error = req.error_detail.map(|e| e.message);
                                match &error {
                                    // Not the config's verdict: the full snapshot
                                    // (sent now, unless the last message was one)
                                    // gets the sidecar's.
                                    Some(reason) if delta => {
                                        tracing::info!(stream = id, version = v, %reason, "proxy refused a delta; sending the full snapshot");
                                        full = true;
                                        if sent_delta {
                                            continue 'send;
                                        }
                                        continue;
                                    }
                                    Some(reason) => {
                                        tracing::warn!(stream = id, version = v, %reason, "proxy rejected config");
                                        full = true;
                                    }
                                    None => {}
                                }
                                state.proxies().record_reply(id, v, error);
                            }
                            Ok(None) | Err(_) => break 'send,
                        }
                    }
                }
            }
            tracing::info!(stream = id, "proxy unsubscribed");
            state.proxies().remove(id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = crate::mtls::identity_of(&request);
        let req = request.into_inner();
        let (_, node) = node_id(req.node)?;
        // Most beats only renew a lease, but one that registers publishes.
        self.state
            .off_runtime(move |s| {
                s.heartbeat(
                    caller.as_deref(),
                    &node,
                    Beat {
                        address: &req.address,
                        ready: req.ready,
                        identity: &req.identity,
                        cert_not_after_unix: req.cert_not_after_unix,
                    },
                )
            })
            .await
            .map_err(|e| Status::internal(format!("heartbeat failed: {e}")))??;
        Ok(Response::new(pb::HeartbeatResponse {
            interval_ms: self.heartbeat.as_millis() as u64,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let caller = crate::mtls::identity_of(&request);
        let (_, node) = node_id(request.into_inner().node)?;
        let version = {
            let node = node.clone();
            self.state
                .off_runtime(move |s| s.deregister(caller.as_deref(), &node))
                .await
                .map_err(|e| Status::internal(format!("deregistration failed: {e}")))??
        };
        let propagated = self
            .state
            .proxies()
            .wait_propagated(version, &node.instance_id, self.propagation_timeout)
            .await;
        tracing::info!(instance = %node.instance_id, version, propagated, "instance deregistered");
        Ok(Response::new(pb::DeregisterResponse { propagated }))
    }
}
