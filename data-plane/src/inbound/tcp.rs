//! Inbound opaque TCP. A redirected plaintext connection from an unmeshed
//! client that is not HTTP (detected, silent past the deadline as a
//! server-speaks-first protocol's client is, or to an opaque port) goes to
//! the app's port it dialled as it is, in permissive mode only. A peer
//! sidecar's mTLS connection that negotiated `mesh.tcp/1` carries an app's
//! bytes as they are. This service's
//! AuthorizationPolicy is enforced against the peer's verified identity
//! before a byte reaches the app; then the bytes are copied both ways to
//! the app, to the port the peer's header names (the port its app
//! dialled), half-closes passed on.

use super::Inbound;
use crate::config::Mode;
use crate::intercept::{Hello, Protocol};
use crate::telemetry::meter::Metered;
use crate::telemetry::metrics::DetectLabels;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

/// How long connecting to the app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Inbound {
    /// Whether the redirected connection on `stream` (dialled to `port`) is
    /// an unmeshed client's that is not HTTP: its protocol (`opaque`, or the
    /// app's own `tls`) and what decided it; none for a peer sidecar's mTLS
    /// and for HTTP, which the HTTP path serves.
    pub(super) async fn unmeshed(
        &self,
        stream: &TcpStream,
        port: u16,
    ) -> Option<(&'static str, &'static str)> {
        let mut first = [0u8; 1];
        match tokio::time::timeout(self.intercept.detect_timeout, stream.peek(&mut first)).await {
            Err(_) => Some(("opaque", "timeout")),
            // TLS: a peer sidecar's handshake, unless it is the app's own
            // (an unmeshed client's), whose bytes go to the app as they are.
            Ok(Ok(1)) if first[0] == 0x16 => self.app_tls(stream).await.then_some(("tls", "bytes")),
            Ok(Ok(1)) if self.intercept.opaque(port) => Some(("opaque", "port")),
            Ok(Ok(1)) => {
                match crate::intercept::detect(stream, self.intercept.detect_timeout).await {
                    Ok((Protocol::Opaque | Protocol::Tls, true)) => Some(("opaque", "timeout")),
                    Ok((Protocol::Opaque | Protocol::Tls, false)) => Some(("opaque", "bytes")),
                    _ => None,
                }
            }
            // Closed or failed: the HTTP path drops it.
            _ => None,
        }
    }

    /// Whether the redirected TLS connection on `stream` is an app's own
    /// (its ClientHello does not offer the sidecars' marker), read within
    /// the detection deadline; a hello still incomplete then is taken for
    /// a peer's, whose handshake decides.
    pub(super) async fn app_tls(&self, stream: &TcpStream) -> bool {
        let until = tokio::time::Instant::now() + self.intercept.detect_timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match tokio::time::timeout_at(until, stream.peek(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return false,
            };
            match crate::intercept::hello(&buf[..n]) {
                // A peer's handshake, or a broken one, which the mTLS
                // handshake then refuses.
                Hello::Mesh | Hello::Malformed => return false,
                Hello::App => return true,
                Hello::Incomplete if n == buf.len() => return false,
                Hello::Incomplete => {
                    if tokio::time::Instant::now() + Duration::from_millis(5) >= until {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// Serves a redirected connection from an unmeshed client that is not
    /// HTTP (`protocol` opaque, or the app's own `tls`, as detected `by`):
    /// to the app's port `dst` names, in permissive mode; refused in strict.
    pub(super) async fn plaintext(
        &self,
        stream: Metered<TcpStream>,
        dst: SocketAddr,
        protocol: &'static str,
        by: &'static str,
    ) {
        self.metrics
            .protocol_detections
            .get_or_create(&DetectLabels {
                direction: "inbound",
                protocol,
                by,
            })
            .inc();
        if self.mode == Mode::Strict {
            self.connection_outcome(false, "refused");
            tracing::info!(peer = ?stream.get_ref().peer_addr().ok(), %dst, "plaintext connection refused: inbound is strict mTLS");
            return;
        }
        self.connection_outcome(false, "accepted");
        self.to_app(
            stream,
            None,
            SocketAddr::new(self.app_addr.ip(), dst.port()),
        )
        .await;
    }

    /// Serves one opaque connection from `client` (dialled to `dst`).
    pub(super) async fn opaque<S>(
        &self,
        mut peer: S,
        client: Option<Arc<str>>,
        dst: Option<SocketAddr>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let allowed = {
            let state = self.state.load();
            match state
                .resolve(&self.own)
                .and_then(|s| s.authorization.as_ref())
            {
                None => Ok(()),
                Some(auth) => auth
                    .check(client.as_deref())
                    .map_err(|why| (auth.policy.clone(), why)),
            }
        };
        if let Err((policy, reason)) = allowed {
            self.connection_outcome(true, "forbidden");
            tracing::warn!(%policy, %reason, client = ?client, "opaque connection denied");
            return;
        }
        // The port first (the peer's header), within the handshake's time.
        let mut header = [0u8; 4];
        let read = tokio::time::timeout(CONNECT_TIMEOUT, peer.read_exact(&mut header)).await;
        let Some(port) = read
            .ok()
            .and_then(Result::ok)
            .and_then(|_| crate::intercept::parse_tcp_header(header))
        else {
            tracing::info!(client = ?client, ?dst, "opaque connection closed: no valid tcp header");
            return;
        };
        self.to_app(peer, client, SocketAddr::new(self.app_addr.ip(), port))
            .await;
    }

    /// Copies `peer`'s bytes to and from the app at `target`.
    async fn to_app<S>(&self, mut peer: S, client: Option<Arc<str>>, target: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut app = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%target, error = %e, "opaque connection: the app refused");
                return;
            }
            Err(_) => {
                tracing::info!(%target, "opaque connection: connecting to the app timed out");
                return;
            }
        };
        let _ = app.set_nodelay(true);
        let counted = self
            .metrics
            .opaque
            .opened("inbound", client.as_deref().unwrap_or(""));
        let copied = crate::intercept::splice(&mut peer, &mut app).await;
        let (from_peer, to_peer) = copied.as_ref().map_or((0, 0), |c| *c);
        counted.closed(to_peer, from_peer);
        match copied {
            Ok((from_peer, to_peer)) => {
                tracing::debug!(client = ?client, %target, from_peer, to_peer, "opaque connection closed")
            }
            Err(e) => {
                tracing::debug!(client = ?client, %target, error = %e, "opaque connection ended with error")
            }
        }
    }
}
