//! Outbound opaque TCP: a redirected connection to a service's virtual IP
//! that is not HTTP (or whose port is opaque) goes to one of the service's
//! endpoints, a backend picked by the split's weights and an endpoint by
//! the balancer, over mTLS with ALPN `mesh.tcp/1` to the peer sidecar
//! (which must prove the identity the control plane published for it),
//! the port the app dialled sent first so the peer hands the bytes to that
//! port of its app. A redirected connection to an address that is no
//! service goes out unchanged. Both copy bytes each way, half-closes
//! passed on.

use crate::connect::TlsContext;
use crate::state::{Service, State};
use crate::telemetry::meter::{Meter, Metered};
use crate::telemetry::metrics::Metrics;
use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long connecting upstream may take, and separately the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The outbound TCP side.
#[derive(Clone)]
pub struct Tcp {
    tls: Option<TlsContext>,
    state: Arc<ArcSwap<State>>,
    /// Counts the connections it opens to endpoints.
    meter: Option<Arc<Meter>>,
    metrics: Arc<Metrics>,
}

/// Why an opaque connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("no ready endpoint")]
    NoEndpoint,
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    #[error("{0} publishes an identity but this sidecar has no certificate yet")]
    NoCertificate(SocketAddr),
    #[error("mTLS with {0}: {1}")]
    Tls(SocketAddr, String),
}

impl Tcp {
    /// Opaque connections with `tls` (none: this sidecar has no identity).
    pub fn new(
        tls: Option<TlsContext>,
        state: Arc<ArcSwap<State>>,
        meter: Option<Arc<Meter>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Tcp {
            tls,
            state,
            meter,
            metrics,
        }
    }

    /// Sends `app`'s connection to `dst` as it is (no service has that
    /// address), from the sidecar's uid, which the redirect rules let out.
    pub async fn passthrough(&self, mut app: Metered<TcpStream>, dst: SocketAddr) {
        let mut up = match connect(dst).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%dst, error = %e, "passthrough connection failed");
                return;
            }
        };
        match crate::intercept::splice(&mut app, &mut up).await {
            Ok((sent, received)) => tracing::debug!(%dst, sent, received, "passthrough closed"),
            Err(e) => tracing::debug!(%dst, error = %e, "passthrough ended with error"),
        }
    }

    /// Sends `app`'s connection (to `dst`, `service`'s virtual IP) to one of
    /// the service's endpoints.
    pub async fn to_service(
        &self,
        mut app: Metered<TcpStream>,
        service: &Service,
        dst: SocketAddr,
    ) {
        let name = format!("{}.{}", service.name, service.namespace);
        let (result, peer) = match self.endpoint(service) {
            None => (Err(Error::NoEndpoint), String::new()),
            Some((endpoint, identity)) => {
                let peer = identity.clone().unwrap_or_default();
                (self.open(endpoint, identity, dst.port()).await, peer)
            }
        };
        let counted = result
            .is_ok()
            .then(|| self.metrics.opaque.opened("outbound", &peer));
        let copied = match result {
            Ok(Upstream::Tls(mut up)) => crate::intercept::splice(&mut app, up.as_mut()).await,
            Ok(Upstream::Plain(mut up)) => crate::intercept::splice(&mut app, &mut up).await,
            Err(e) => {
                tracing::warn!(service = %name, %dst, error = %e, "opaque connection closed");
                return;
            }
        };
        let (sent, received) = copied.as_ref().map_or((0, 0), |c| *c);
        if let Some(c) = counted {
            c.closed(sent, received);
        }
        match copied {
            Ok((sent, received)) => {
                tracing::debug!(service = %name, %dst, sent, received, "opaque connection closed")
            }
            Err(e) => {
                tracing::debug!(service = %name, %dst, error = %e, "opaque connection ended with error")
            }
        }
    }

    /// An endpoint of `service` for one connection, and the identity it
    /// must prove if it speaks mTLS: the first route that matches every
    /// request (a connection has no request to match), a backend by weight,
    /// an endpoint by the balancer.
    fn endpoint(&self, service: &Service) -> Option<(SocketAddr, Option<String>)> {
        let state = self.state.load();
        let route = service
            .routes
            .iter()
            .find(|r| r.matches.is_empty() && r.hostnames.is_empty())
            .or(service.routes.last())?;
        let first = route.pick_backend()?;
        for backend in std::iter::once(first).chain(route.other_live_backends(first)) {
            let cluster = &backend.cluster;
            if let Ok(i) = cluster.pick(None) {
                let addr = cluster.endpoints[i].addr;
                return Some((addr, state.identity_of(&addr).map(String::from)));
            }
        }
        None
    }

    /// Opens the connection to `endpoint`: mTLS with the tcp header when it
    /// publishes an identity, else plain TCP to the port the app dialled.
    async fn open(
        &self,
        endpoint: SocketAddr,
        identity: Option<String>,
        port: u16,
    ) -> Result<Upstream, Error> {
        let Some(expected) = identity else {
            let to = SocketAddr::new(endpoint.ip(), port);
            return Ok(Upstream::Plain(connect(to).await?));
        };
        let cert = self
            .tls
            .as_ref()
            .and_then(|t| t.identity.load_full())
            .ok_or(Error::NoCertificate(endpoint))?;
        let config = cert
            .tls
            .client(&expected, crate::tls::TCP)
            .map_err(|e| Error::Tls(endpoint, e.to_string()))?;
        let tcp = Metered::new(connect(endpoint).await?, self.meter.as_ref());
        let handshake = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(endpoint.ip().into()), tcp);
        let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| Error::Timeout(endpoint))?
            .map_err(|e| Error::Tls(endpoint, e.to_string()))?;
        tls.write_all(&crate::intercept::tcp_header(port))
            .await
            .map_err(|e| Error::Connect(endpoint, e))?;
        Ok(Upstream::Tls(Box::new(tls)))
    }
}

/// An opened opaque upstream.
enum Upstream {
    Tls(Box<tokio_rustls::client::TlsStream<Metered<TcpStream>>>),
    Plain(TcpStream),
}

async fn connect(to: SocketAddr) -> Result<TcpStream, Error> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| Error::Timeout(to))?
        .map_err(|e| Error::Connect(to, e))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}
