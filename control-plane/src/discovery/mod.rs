//! The Discovery gRPC service: streams each sidecar its part of every
//! snapshot, records their ACKs and NACKs, and takes heartbeats and
//! deregistrations, each only from a caller whose certificate proves it
//! may speak for the node it names. What a stream sends is `stream`'s.

mod stream;

use crate::listen::Ending;
use crate::registry::local::NodeId;
use crate::state::{Beat, State};
use mesh_proto::prebuilt::{Prebuilt, server::discovery_server};
use mesh_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stream::{Reply, Stream};
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

type SubscribeStream = Pin<Box<dyn futures::Stream<Item = Result<Prebuilt, Status>> + Send>>;

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
        let (node, _) = node_id(first.node.clone())?;
        self.state
            .speaks_for(
                "Subscribe",
                caller.as_deref(),
                &node.namespace,
                &node.service,
            )
            .map_err(Status::from)?;
        let mut stream =
            Stream::new(&node, &first).map_err(|e| Status::invalid_argument(e.to_string()))?;
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
            'send: loop {
                // A refcount bump; what is sent was encoded once for all streams.
                let snapshot = snapshots.borrow_and_update().clone();
                let evaluated = snapshot.version;
                match stream.next(&snapshot) {
                    Some(message) => {
                        if tx.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    // Nothing it receives changed: it is as current as it was.
                    None => {
                        if stream.answered() {
                            state.proxies().record_current(id, evaluated);
                        }
                    }
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
                                let resubscribed = match stream.subscribe(&req) {
                                    Ok(changed) => changed,
                                    Err(e) => {
                                        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                                        break 'send;
                                    }
                                };
                                match stream.reply(&req, evaluated) {
                                    Reply::None => {}
                                    Reply::Ack { version, current } => {
                                        state.proxies().record_reply(id, version, None);
                                        if let Some(c) = current {
                                            state.proxies().record_current(id, c);
                                        }
                                    }
                                    Reply::Nack { version, reason } => {
                                        tracing::warn!(stream = id, version, %reason, "proxy rejected config");
                                        state.proxies().record_reply(id, version, Some(reason));
                                    }
                                    // Not the config's verdict: the whole
                                    // response, sent now, gets the sidecar's.
                                    Reply::Resend { version, reason } => {
                                        tracing::info!(stream = id, version, %reason, "proxy refused a delta; sending it whole");
                                        continue 'send;
                                    }
                                }
                                if resubscribed {
                                    continue 'send;
                                }
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
        let ticket = {
            let node = node.clone();
            self.state
                .off_runtime(move |s| s.deregister(caller.as_deref(), &node))
                .await
                .map_err(|e| Status::internal(format!("deregistration failed: {e}")))??
        };
        let version = self.state.published(ticket).await;
        let propagated = self
            .state
            .proxies()
            .wait_propagated(version, &node.instance_id, self.propagation_timeout)
            .await;
        tracing::info!(instance = %node.instance_id, version, propagated, "instance deregistered");
        Ok(Response::new(pb::DeregisterResponse { propagated }))
    }
}
