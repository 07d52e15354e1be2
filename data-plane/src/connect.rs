//! Connects the pooled upstream clients: plain TCP for `http://` URIs, and
//! mTLS for `https://` ones, requiring the SPIFFE ID the control plane
//! published for that endpoint. Runs once per new connection, never per
//! request.

use crate::state::State;
use crate::telemetry::meter::{Meter, Metered};
use crate::telemetry::metrics::HandshakeLabels;
use crate::tls;
use crate::tls::identity::Current;
use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What mTLS needs: the routing snapshot (for expected identities) and our certificate.
#[derive(Clone)]
pub struct TlsContext {
    /// Live routing state.
    pub state: Arc<ArcSwap<State>>,
    /// Our workload certificate.
    pub identity: Current,
    /// Counts each handshake, full or resumed.
    pub handshakes: Family<HandshakeLabels, Counter>,
}

/// A connector for one ALPN protocol.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<TlsContext>,
    alpn: &'static [u8],
    /// For per-endpoint connection-attempt limits.
    state: Arc<ArcSwap<State>>,
    /// TCP counters of the connections it opens.
    meter: Option<Arc<Meter>>,
}

/// How long a TCP connect, and separately a TLS handshake, may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A connection attempt refused because the endpoint's backend already has
/// its limit of attempts under way.
#[derive(Debug, thiserror::Error)]
#[error("{0} connection attempts already pending")]
pub struct PendingLimit(pub u32);

impl Connector {
    /// Plain TCP with no delay; mTLS with `alpn` when `tls` is set.
    pub fn new(
        tls: Option<TlsContext>,
        alpn: &'static [u8],
        state: Arc<ArcSwap<State>>,
        meter: Option<Arc<Meter>>,
    ) -> Self {
        let mut http = HttpConnector::new();
        // Loopback and LAN hops: Nagle only adds latency to small requests.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // We wrap TLS ourselves after the TCP connect.
        http.enforce_http(false);
        Connector {
            http,
            tls,
            alpn,
            state,
            meter,
        }
    }
}

/// A plain or mTLS upstream connection.
/// The TCP stream is metered under TLS, so the bytes counted are the bytes
/// on the wire, as the inbound (which meters before it terminates TLS)
/// counts them: both ends of a hop agree.
pub enum Stream {
    /// Plaintext.
    Plain(Metered<TcpStream>),
    /// mTLS.
    Tls(Box<tokio_rustls::client::TlsStream<Metered<TcpStream>>>),
}

impl Connector {
    /// Opens one connection to `endpoint`, over mTLS when `secure`.
    pub async fn open(
        &self,
        endpoint: &http::uri::Authority,
        secure: bool,
    ) -> Result<TokioIo<Stream>, BoxError> {
        let uri = Uri::builder()
            .scheme(if secure {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            })
            .authority(endpoint.clone())
            .path_and_query("/")
            .build()
            .expect("scheme, authority and path are all set");
        tower_service::Service::call(&mut self.clone(), uri).await
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let (tls, alpn, meter) = (self.tls.clone(), self.alpn, self.meter.clone());
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        // Held until the connection is up or has failed.
        let slot = authority
            .parse::<std::net::SocketAddr>()
            .ok()
            .and_then(|addr| {
                let state = self.state.load();
                let (stats, limit) = state.pending_limit(&addr)?;
                Some(stats.connect_slot(*limit).map_err(|_| PendingLimit(*limit)))
            })
            .transpose();
        Box::pin(async move {
            let _slot = slot?;
            let secure = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let tcp = tower_service::Service::call(&mut http, uri)
                .await?
                .into_inner();
            let tcp = Metered::new(tcp, meter.as_ref());
            if !secure {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            let ctx = tls.ok_or("mTLS requested but this sidecar has no workload identity")?;
            let addr: std::net::SocketAddr = authority.parse()?;
            let expected = ctx
                .state
                .load()
                .identity_of(&addr)
                .ok_or_else(|| format!("no published identity for endpoint {addr}"))?
                .to_string();
            let cert = ctx
                .identity
                .load_full()
                .ok_or("no workload certificate yet")?;
            let config = cert.tls.client(&expected, alpn)?;
            let handshake = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(addr.ip().into()), tcp);
            // A peer that accepts TCP but never answers TLS must not hold the
            // attempt (and its slot) forever.
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| format!("TLS handshake with {addr} timed out"))??;
            let kind = tls::handshake_kind(stream.get_ref().1)
                .map_err(|why| format!("TLS with {addr}: {why}"))?;
            ctx.handshakes
                .get_or_create(&HandshakeLabels {
                    direction: "outbound",
                    kind,
                })
                .inc();
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => {
                let (tcp, session) = s.get_ref();
                let c = tcp.connected();
                if session.alpn_protocol() == Some(tls::H2) {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
