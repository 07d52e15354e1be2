//! Outbound opaque TCP: a redirected connection to a service's virtual IP
//! that is not HTTP (or whose port is opaque) goes to one of the service's
//! endpoints, a backend picked by the split's weights and an endpoint by
//! the balancer, over mTLS with ALPN `mesh.tcp/1` to the peer sidecar,
//! which hands the bytes to its app; a redirected connection to an
//! address that is no service goes out unchanged. Both copy bytes each
//! way, half-closes passed on.

use crate::connect::Connector;
use crate::state::Service;
use crate::state::State;
use crate::telemetry::meter::Metered;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long connecting upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The outbound TCP side.
#[derive(Clone)]
pub struct Tcp {
    connector: Connector,
    state: Arc<ArcSwap<State>>,
}

impl Tcp {
    /// Opaque connections through `connector` (ALPN `mesh.tcp/1`).
    pub fn new(connector: Connector, state: Arc<ArcSwap<State>>) -> Self {
        Tcp { connector, state }
    }

    /// Sends `app`'s connection to `dst` as it is (no service has that
    /// address), from the sidecar's uid, which the redirect rules let out.
    pub async fn passthrough(&self, mut app: Metered<TcpStream>, dst: SocketAddr) {
        let mut up = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%dst, error = %e, "passthrough connection failed");
                return;
            }
            Err(_) => {
                tracing::info!(%dst, "passthrough connection timed out");
                return;
            }
        };
        let _ = up.set_nodelay(true);
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
        let Some((endpoint, secure)) = self.endpoint(service) else {
            tracing::warn!(service = %name, %dst, "opaque connection closed: the service has no ready endpoint");
            return;
        };
        let scheme = if secure { "https" } else { "http" };
        let uri: http::Uri = match format!("{scheme}://{endpoint}/").parse() {
            Ok(u) => u,
            Err(_) => return,
        };
        let mut connector = self.connector.clone();
        let up = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            tower_service::Service::call(&mut connector, uri),
        )
        .await;
        let mut up = match up {
            Ok(Ok(io)) => io.into_inner(),
            Ok(Err(e)) => {
                tracing::warn!(service = %name, %endpoint, error = %e, "opaque connection to the endpoint failed");
                return;
            }
            Err(_) => {
                tracing::warn!(service = %name, %endpoint, "opaque connection to the endpoint timed out");
                return;
            }
        };
        match crate::intercept::splice(&mut app, &mut up).await {
            Ok((sent, received)) => {
                tracing::debug!(service = %name, %endpoint, sent, received, "opaque connection closed")
            }
            Err(e) => {
                tracing::debug!(service = %name, %endpoint, error = %e, "opaque connection ended with error")
            }
        }
    }

    /// An endpoint of `service` for one connection: the first route that
    /// matches every request (a connection has no request to match), a
    /// backend by weight, an endpoint by the balancer; and whether it
    /// speaks mTLS.
    fn endpoint(&self, service: &Service) -> Option<(SocketAddr, bool)> {
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
                return Some((addr, state.identity_of(&addr).is_some()));
            }
        }
        None
    }
}
