//! Inbound: peer sidecars → the local app, same protocol. A connection that
//! opens with a TLS handshake record is mTLS: it is terminated here with the
//! workload certificate and must present a client certificate from our CA.
//! Anything else is plaintext, which only permissive mode accepts (from
//! unmeshed clients); strict mode refuses and counts it. The verified client
//! identity reaches the app in [`CLIENT_ID_HEADER`]; a copy of that header
//! arriving from outside is always removed first. An mTLS connection that
//! negotiated `mesh.tcp/1` is opaque TCP instead (`tcp`).

mod tcp;

use crate::body::{BytesIn, ReqBody, Source};
use crate::config::Mode;
use crate::errors::{self, Body};
use crate::forward::Forwarder;
use crate::server::Drain;
use crate::state::State;
use crate::telemetry::meter::Metered;
use crate::telemetry::metrics::{ConnectionLabels, HandshakeLabels, Metrics, RequestLabels};
use crate::telemetry::observe::Observer;
use crate::tls::identity::Current;
use arc_swap::ArcSwap;
use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The verified caller identity set on `req` (see [`Inbound::handle`]).
fn client_id<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// Header carrying the verified SPIFFE ID of the calling workload.
pub const CLIENT_ID_HEADER: &str = "mesh-client-id";
/// First byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// A peer gets this long to start and finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The inbound side of the sidecar.
#[derive(Clone)]
pub struct Inbound {
    app: Authority,
    forwarder: Forwarder,
    identity: Option<Current>,
    mode: Mode,
    app_addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    obs: Arc<Observer>,
    /// Live config, for this service's authorization policy.
    state: Arc<ArcSwap<State>>,
    /// This service's own name, `<service>.<namespace>`, as the state resolves it.
    own: crate::name::Name,
    /// Detection's settings for redirected connections.
    intercept: crate::config::Intercept,
}

impl Inbound {
    /// Forwards to the app at `app`; terminates mTLS with `identity`'s certificate.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        app: std::net::SocketAddr,
        forwarder: Forwarder,
        identity: Option<Current>,
        mode: Mode,
        obs: Arc<Observer>,
        state: Arc<ArcSwap<State>>,
        own: String,
    ) -> Self {
        let app_addr = app;
        let app = app
            .to_string()
            .parse()
            .expect("a socket address is a valid authority");
        Inbound {
            app,
            forwarder,
            identity,
            mode,
            app_addr,
            metrics: obs.metrics.clone(),
            obs,
            state,
            own: own.into(),
            intercept: crate::config::Intercept {
                detect_timeout: Duration::from_millis(100),
                opaque_ports: Vec::new(),
            },
        }
    }

    /// Detects redirected connections with `intercept`'s settings.
    pub fn with_intercept(mut self, intercept: crate::config::Intercept) -> Self {
        self.intercept = intercept;
        self
    }

    /// Accepts on `listener` until the drain stops it.
    pub fn serve(self, drain: &Arc<Drain>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let d = drain.clone();
        let meter = self.metrics.tcp("inbound", "src");
        drain.accept(listener, meter, move |stream, slot| {
            let (inbound, drain) = (self.clone(), d.clone());
            tokio::spawn(async move {
                inbound.connection(&drain, stream).await;
                drop(slot);
            });
        })
    }

    fn connection_outcome(&self, tls: bool, outcome: &'static str) {
        self.metrics
            .inbound_connections
            .get_or_create(&ConnectionLabels { tls, outcome })
            .inc();
    }

    async fn connection(self, drain: &Drain, stream: Metered<TcpStream>) {
        // Where the peer dialled, when the pod's redirect rules brought it.
        let dst = match crate::intercept::original_dst(stream.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(peer = ?stream.get_ref().peer_addr().ok(), error = %e, "connection closed: its original destination cannot be read");
                return;
            }
        };
        if let Some(dst) = dst
            && let Some((protocol, by)) = self.unmeshed(stream.get_ref(), dst.port()).await
        {
            return self.plaintext(stream, dst, protocol, by).await;
        }
        let mut first = [0u8; 1];
        // A peer that sends nothing within the idle timeout, or closes, is
        // dropped: it is neither TLS nor plaintext yet.
        let peeked = tokio::time::timeout(drain.idle(), stream.get_ref().peek(&mut first)).await;
        if !matches!(peeked, Ok(Ok(1))) {
            return;
        }
        let is_tls = first[0] == TLS_HANDSHAKE_RECORD;
        if !is_tls && !crate::server::first_byte(stream.get_ref(), drain.idle()).await {
            return;
        }
        if !is_tls {
            if self.mode == Mode::Strict {
                self.connection_outcome(false, "refused");
                tracing::info!(peer = ?stream.get_ref().peer_addr().ok(), "plaintext connection refused: inbound is strict mTLS");
                return;
            }
            self.connection_outcome(false, "accepted");
            tracing::debug!(tls = false, peer = ?stream.get_ref().peer_addr().ok(), "plaintext connection accepted (permissive)");
            let inbound = self.clone();
            drain
                .serve_conn(TokioIo::new(stream), move |req| {
                    let inbound = inbound.clone();
                    async move { inbound.handle(req, None, dst).await }
                })
                .await;
            return;
        }
        let Some(cert) = self.identity.as_ref().and_then(|c| c.load_full()) else {
            self.connection_outcome(true, "handshake_failed");
            tracing::warn!("TLS connection refused: no workload certificate yet");
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.tls.server.clone());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.connection_outcome(true, "handshake_failed");
                tracing::warn!(error = %e, "mTLS handshake failed");
                return;
            }
            Err(_) => {
                self.connection_outcome(true, "handshake_failed");
                tracing::warn!("mTLS handshake timed out");
                return;
            }
        };
        let client: Option<Arc<str>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(crate::tls::spiffe_id)
            .map(Arc::from);
        let kind = match crate::tls::handshake_kind(tls.get_ref().1) {
            Ok(kind) => kind,
            Err(why) => {
                self.connection_outcome(true, "handshake_failed");
                tracing::warn!("mTLS connection closed: {why}");
                return;
            }
        };
        self.connection_outcome(true, "accepted");
        self.metrics
            .tls_handshakes
            .get_or_create(&HandshakeLabels {
                direction: "inbound",
                kind,
            })
            .inc();
        if tls.get_ref().1.alpn_protocol() == Some(crate::tls::TCP) {
            return self.opaque(tls, client, dst).await;
        }
        let inbound = self.clone();
        drain
            .serve_conn(TokioIo::new(tls), move |req| {
                let (inbound, client) = (inbound.clone(), client.clone());
                async move { inbound.handle(req, client, dst).await }
            })
            .await;
    }

    /// Applies this service's authorization policy, if it has one. Sync on
    /// purpose: the snapshot guard is borrowed, never held across an await,
    /// and the policy is never copied per request.
    fn authorize<B>(&self, req: &Request<B>) -> Result<(), errors::Error> {
        let state = self.state.load();
        let Some(auth) = state
            .resolve(&self.own)
            .and_then(|s| s.authorization.as_ref())
        else {
            return Ok(());
        };
        match auth.check(client_id(req)) {
            Ok(()) => {
                tracing::debug!(policy = %auth.policy, client = ?client_id(req), "request allowed");
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(policy = %auth.policy, %reason, path = req.uri().path(), "request denied");
                Err(errors::Error::Forbidden(reason))
            }
        }
    }

    /// Forwards one request to the app, with the verified client identity
    /// (if any): to the app's port the connection was dialled to when the
    /// pod's redirect rules brought it (`dst`), else to the app's address.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        client: Option<Arc<str>>,
        dst: Option<std::net::SocketAddr>,
    ) -> Response<Body> {
        let dialled = dst
            .filter(|d| d.port() != self.app_addr.port())
            .and_then(|d| {
                std::net::SocketAddr::new(self.app_addr.ip(), d.port())
                    .to_string()
                    .parse::<Authority>()
                    .ok()
            });
        let app = dialled.as_ref().unwrap_or(&self.app);
        let peer = client.as_deref().map(str::to_owned);
        // Never let an outside copy pass for a verified identity.
        req.headers_mut().remove(CLIENT_ID_HEADER);
        if let Some(id) = client.and_then(|c| HeaderValue::from_str(&c).ok()) {
            req.headers_mut().insert(CLIENT_ID_HEADER, id);
        }
        let grpc = crate::http::is_grpc(&req);
        let watch = self.obs.begin("inbound", &mut req);
        // The app must not read an authority two ways either; one without
        // any is its business (HTTP/1.0 has no Host).
        let refused = match crate::http::checked_authority(&req) {
            Ok(_) | Err(crate::http::BadAuthority::Missing) => self.authorize(&req),
            Err(bad) => Err(bad.into()),
        };
        let resp = match refused {
            Err(e) => errors::respond(&e, grpc),
            Ok(()) => match self
                .forwarder
                .forward(
                    {
                        let counted = req.extensions().get::<BytesIn>().cloned();
                        req.map(|b| ReqBody::Stream(Source::new(b, counted)))
                    },
                    app,
                    false,
                )
                .await
            {
                Ok(resp) => resp.map(Body::stream),
                Err(e) => {
                    tracing::debug!(error = %e, "inbound request failed");
                    if matches!(e, errors::Error::ClientBody(_)) {
                        self.obs
                            .metrics
                            .client_body_errors
                            .get_or_create(&crate::telemetry::metrics::DirectionLabels {
                                direction: "inbound",
                            })
                            .inc();
                    }
                    errors::respond(&e, grpc)
                }
            },
        };
        let labels = RequestLabels {
            direction: "inbound",
            service: self.own.clone(),
            status_code: resp.status().as_u16(),
            grpc_status: crate::http::grpc_status(resp.headers())
                .map(|c| c.to_string())
                .unwrap_or_default(),
            tls: peer.is_some(),
            peer_identity: peer.unwrap_or_default().into(),
            ..Default::default()
        };
        self.obs.finish(watch, labels, Some(self.app_addr), resp)
    }
}
