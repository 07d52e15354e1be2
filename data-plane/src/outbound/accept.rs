//! The outbound listener's connections. One addressed to the listener
//! itself is the app's HTTP, routed by its authority as always. One the
//! pod's redirect rules brought is read for where it was going: to no
//! service's virtual IP, it passes through unchanged; to a service's, its
//! protocol is detected (or its port is opaque) and HTTP is routed as that
//! service's while anything else goes to the service as opaque TCP.

use super::handle::Outbound;
use super::tcp::Tcp;
use crate::config::Intercept;
use crate::errors::Error;
use crate::intercept::{self, Protocol};
use crate::server::Drain;
use crate::state::{Service, State};
use crate::telemetry::meter::{Meter, Metered};
use crate::telemetry::metrics::{DetectLabels, Metrics};
use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Everything the outbound listener's connections need.
#[derive(Clone)]
pub struct Listener {
    /// The HTTP handler.
    pub http: Outbound,
    /// Opaque and passthrough connections.
    pub tcp: Tcp,
    /// Live config, for virtual IPs.
    pub state: Arc<ArcSwap<State>>,
    /// For virtual IPs the sidecar holds no config for yet.
    pub demand: Arc<crate::demand::Demand>,
    /// Detection's settings.
    pub intercept: Intercept,
    /// For detection counts.
    pub metrics: Arc<Metrics>,
}

impl Listener {
    /// Accepts on `listener` until the drain stops it.
    pub fn serve(
        self,
        drain: &Arc<Drain>,
        listener: TcpListener,
        meter: Option<Arc<Meter>>,
    ) -> tokio::task::JoinHandle<()> {
        let d = drain.clone();
        drain.accept(listener, meter, move |stream, slot| {
            let (this, drain) = (self.clone(), d.clone());
            tokio::spawn(async move {
                this.connection(&drain, stream).await;
                drop(slot);
            });
        })
    }

    async fn connection(&self, drain: &Drain, stream: Metered<TcpStream>) {
        let dst = match intercept::original_dst(stream.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(peer = ?stream.get_ref().peer_addr().ok(), error = %e, "connection closed: its original destination cannot be read");
                return;
            }
        };
        let Some(dst) = dst else {
            if crate::server::first_byte(stream.get_ref(), drain.idle()).await {
                self.http(drain, stream, None).await;
            }
            return;
        };
        let service = self.state.load().by_virtual_ip(dst.ip()).cloned();
        let service = match service {
            Some(s) => s,
            None => match self.ask(dst.ip()).await {
                Ok(Some(s)) => s,
                // No service of the mesh: not ours to secure.
                Ok(None) => return self.tcp.passthrough(stream, dst).await,
                // It may be one the control plane is slow to name: passing
                // it through could send plaintext to a meshed endpoint.
                Err(e) => {
                    tracing::warn!(%dst, error = %e, "connection closed: its destination is not known yet");
                    return;
                }
            },
        };
        let (protocol, by) = if self.intercept.opaque(dst.port()) {
            (Protocol::Opaque, "port")
        } else {
            match intercept::detect(stream.get_ref(), self.intercept.detect_timeout).await {
                Ok((p, timed_out)) => (p, if timed_out { "timeout" } else { "bytes" }),
                // Gone before its first byte: nothing to proxy.
                Err(_) => return,
            }
        };
        let name = match protocol {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
        };
        self.metrics
            .protocol_detections
            .get_or_create(&DetectLabels {
                direction: "outbound",
                protocol: name,
                by,
            })
            .inc();
        match protocol {
            Protocol::Http1 | Protocol::H2 => self.http(drain, stream, Some(dst)).await,
            Protocol::Tls | Protocol::Opaque => self.tcp.to_service(stream, &service, dst).await,
        }
    }

    /// The service of virtual IP `ip` once the control plane says whether
    /// there is one (None: none), asking for it on demand.
    async fn ask(&self, ip: std::net::IpAddr) -> Result<Option<Arc<Service>>, Error> {
        let names = [ip.to_string()];
        match Box::pin(
            self.demand
                .wait(&self.state, &names, |s| s.by_virtual_ip(ip).is_some()),
        )
        .await
        {
            Ok(state) => Ok(state.by_virtual_ip(ip).cloned()),
            Err(Error::UnknownService(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn http(
        &self,
        drain: &Drain,
        stream: Metered<TcpStream>,
        dst: Option<std::net::SocketAddr>,
    ) {
        let out = self.http.clone();
        drain
            .serve_conn(TokioIo::new(stream), move |req| {
                let out = out.clone();
                async move { out.handle(req, dst).await }
            })
            .await;
    }
}
