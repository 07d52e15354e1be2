//! Inbound opaque TCP: a peer sidecar's mTLS connection that negotiated
//! `mesh.tcp/1` carries an app's bytes as they are. This service's
//! AuthorizationPolicy is enforced against the peer's verified identity
//! before a byte reaches the app; then the bytes are copied both ways to
//! the app, to the port the peer's header names (the port its app
//! dialled), half-closes passed on.

use super::Inbound;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

/// How long connecting to the app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Inbound {
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
        let target = SocketAddr::new(self.app_addr.ip(), port);
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
        match crate::intercept::splice(&mut peer, &mut app).await {
            Ok((from_peer, to_peer)) => {
                tracing::debug!(client = ?client, %target, from_peer, to_peer, "opaque connection closed")
            }
            Err(e) => {
                tracing::debug!(client = ?client, %target, error = %e, "opaque connection ended with error")
            }
        }
    }
}
