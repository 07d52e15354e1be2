//! Every replica's window holds the whole mesh, though each sidecar reports
//! to one replica: once a second each pulls from the others (the ready
//! Pods behind the control plane's own Service) the reports they received
//! themselves since its last pull. The leader's release analysis, and
//! `stat` or `top` on any replica, then read every sidecar.

use super::Window;
use crate::identity::ca::Ca;
use crate::mtls::{Connector, Credentials, control_id};
use crate::state::State;
use mesh_proto::v1 as pb;
use mesh_proto::v1::telemetry_client::TelemetryClient;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// How often each peer is pulled: a report reaches every replica's window
/// at most this much after it reached one.
const EVERY: Duration = Duration::from_secs(1);
/// One pull's bound; a peer that does not answer is tried at the next.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A first pull carries a peer's whole window.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Where this control plane's replicas are, and which one this is.
#[derive(Debug, Clone)]
pub struct Peers {
    /// The namespace of the control plane's Service.
    pub namespace: String,
    /// The Service whose ready endpoints are the replicas.
    pub service: String,
    /// This replica's Pod name: never its own peer.
    pub me: String,
    /// The mesh's trust domain: a peer proves the control plane's ID in it.
    pub trust_domain: String,
}

/// One peer: its channel and where the last pull left off.
struct Peer {
    channel: Channel,
    /// The peer's numbering (its process) and the last report taken.
    epoch: u64,
    after: u64,
    /// Whether the last pull failed: said once, not every second.
    failing: bool,
}

/// Pulls from every peer until `stop` turns true.
pub fn start(
    peers: Peers,
    state: Arc<State>,
    window: Arc<Window>,
    ca: Arc<Ca>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut held: HashMap<SocketAddr, Peer> = HashMap::new();
        let mut tls: Option<(Instant, Arc<rustls::ClientConfig>)> = None;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let now = state.peers(&peers.namespace, &peers.service, &peers.me);
            held.retain(|addr, _| now.contains(addr));
            if now.is_empty() {
                continue;
            }
            // This replica's client certificate, renewed at half its life;
            // channels that handshook with the old one go with it.
            if tls
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= ca.lifetime() / 2)
            {
                match client_config(&ca, &peers.trust_domain) {
                    Ok(c) => {
                        tls = Some((Instant::now(), c));
                        held.clear();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no client certificate to pull peers' telemetry with");
                        continue;
                    }
                }
            }
            let Some((_, config)) = &tls else { continue };
            for addr in now {
                let peer = match held.entry(addr) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => match channel(addr, config) {
                        Ok(channel) => e.insert(Peer {
                            channel,
                            epoch: 0,
                            after: 0,
                            failing: false,
                        }),
                        Err(err) => {
                            tracing::warn!(%addr, error = %err, "peer address unusable");
                            continue;
                        }
                    },
                };
                pull(addr, peer, &window).await;
            }
        }
    });
}

/// A client config presenting the control plane's own ID, which accepts
/// only a server proving the same.
fn client_config(ca: &Ca, trust_domain: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let id = control_id(trust_domain);
    let (signed, key) = ca.issue(&id).map_err(|e| e.to_string())?;
    let creds = Credentials::from_signed(&signed, &key).map_err(|e| e.to_string())?;
    creds.client_config(&id).map_err(|e| e.to_string())
}

fn channel(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Result<Channel, String> {
    // tonic sees plain http; the connector does TLS itself.
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(TIMEOUT)
        .tcp_nodelay(true)
        .connect_with_connector_lazy(Connector(tls.clone())))
}

/// One pull: what `peer` received since the last, into `window`.
async fn pull(addr: SocketAddr, peer: &mut Peer, window: &Window) {
    let mut client =
        TelemetryClient::new(peer.channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    let req = pb::HeldRequest {
        epoch: peer.epoch,
        after: peer.after,
    };
    let problem = match tokio::time::timeout(TIMEOUT, client.held(req)).await {
        Ok(Ok(resp)) => {
            let resp = resp.into_inner();
            // Its own endpoint (a replica named otherwise than its Pod):
            // what it holds is already here.
            if resp.epoch == window.epoch() {
                if !peer.failing {
                    tracing::warn!(%addr, "a peer endpoint is this replica itself (is --identity its Pod's name?); not pulled");
                }
                peer.failing = true;
                return;
            }
            let refused = window.add_pulled(
                resp.reports
                    .into_iter()
                    .filter_map(|h| Some((Duration::from_millis(h.age_ms), h.report?))),
            );
            if let Some(e) = refused {
                tracing::warn!(%addr, error = %e, "a peer's telemetry report refused");
            }
            (peer.epoch, peer.after) = (resp.epoch, resp.last);
            if peer.failing {
                tracing::info!(%addr, "pulling telemetry from the peer again");
            }
            peer.failing = false;
            return;
        }
        Ok(Err(status)) => status.message().to_string(),
        Err(_) => format!("no answer within {TIMEOUT:?}"),
    };
    if !peer.failing {
        tracing::warn!(%addr, %problem, "pulling telemetry from a peer failed; trying again each second");
    }
    peer.failing = true;
}
