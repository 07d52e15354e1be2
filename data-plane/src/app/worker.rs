//! One worker's share of the traffic: its own outbound and inbound
//! listeners (SO_REUSEPORT siblings of the other workers' when there are
//! several), its own upstream pools, and the routing snapshot, metrics and
//! drain shared read-only with the rest. Extra workers are threads of their
//! own, each with a single-threaded runtime, so a request is accepted,
//! routed, forwarded and answered on one thread (no work stealing, no
//! cross-thread wake-ups on the request path).

use crate::config::{Intercept, Mode};
use crate::connect::TlsContext;
use crate::demand::Demand;
use crate::forward::Forwarder;
use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::server::Drain;
use crate::state::State;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::observe::Observer;
use crate::tls::identity::Current;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What every worker shares.
#[derive(Clone)]
pub(super) struct Worker {
    pub(super) state: Arc<ArcSwap<State>>,
    /// What the sidecar subscribes to, and the wait for what it does not.
    pub(super) demand: Arc<Demand>,
    pub(super) certificate: Option<Current>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) obs: Arc<Observer>,
    pub(super) drain: Arc<Drain>,
    pub(super) intercept: Intercept,
    /// The local app and how the inbound listener takes callers, when
    /// there is an app.
    pub(super) app: Option<(SocketAddr, Mode)>,
    /// This workload's own service, `name.namespace`.
    pub(super) own: String,
}

/// One worker's listeners.
pub(super) struct Listeners {
    pub(super) outbound: TcpListener,
    pub(super) inbound: Option<TcpListener>,
}

/// Listeners on their way to another thread's runtime.
pub(super) struct Unbound {
    outbound: std::net::TcpListener,
    inbound: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Detaches the listeners from this runtime, for another's.
    pub(super) fn unbind(self) -> std::io::Result<Unbound> {
        Ok(Unbound {
            outbound: self.outbound.into_std()?,
            inbound: self.inbound.map(TcpListener::into_std).transpose()?,
        })
    }

    /// Registers detached listeners with the current runtime.
    fn rebind(u: Unbound) -> std::io::Result<Listeners> {
        Ok(Listeners {
            outbound: TcpListener::from_std(u.outbound)?,
            inbound: u.inbound.map(TcpListener::from_std).transpose()?,
        })
    }
}

impl Worker {
    /// Starts serving `listeners` on the current runtime: its own pools,
    /// one per direction, so TCP metrics tell app-bound connections from
    /// sidecar-bound ones.
    pub(super) fn serve(&self, listeners: Listeners) {
        let tls = self.certificate.clone().map(|identity| TlsContext {
            state: self.state.clone(),
            identity,
            handshakes: self.metrics.tls_handshakes.clone(),
        });
        let m = &self.metrics;
        let forwarder = Forwarder::new(tls.clone(), self.state.clone(), m.tcp("outbound", "dst"));
        let outbound = crate::outbound::Listener {
            http: Outbound::new(
                self.state.clone(),
                self.demand.clone(),
                forwarder,
                self.certificate.is_some(),
                self.obs.clone(),
            ),
            tcp: crate::outbound::Tcp::new(
                tls.clone(),
                self.state.clone(),
                m.tcp("outbound", "dst"),
                m.clone(),
            ),
            state: self.state.clone(),
            demand: self.demand.clone(),
            intercept: self.intercept.clone(),
            metrics: m.clone(),
        };
        outbound.serve(&self.drain, listeners.outbound, m.tcp("outbound", "src"));
        if let (Some(listener), Some((app, mode))) = (listeners.inbound, self.app) {
            let app_forwarder = Forwarder::new(tls, self.state.clone(), m.tcp("inbound", "dst"));
            Inbound::new(
                app,
                app_forwarder,
                self.certificate.clone(),
                mode,
                self.obs.clone(),
                self.state.clone(),
                self.own.clone(),
            )
            .with_intercept(self.intercept.clone())
            .serve(&self.drain, listener);
        }
    }

    /// Starts worker `n` on a thread of its own, serving until `done`
    /// says the sidecar has drained.
    pub(super) fn spawn(
        &self,
        n: usize,
        listeners: Unbound,
        mut done: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let this = self.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("mesh-worker-{n}"))
            .spawn(move || {
                rt.block_on(async move {
                    let listeners = match Listeners::rebind(listeners) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(worker = n, error = %e, "worker cannot take its listeners");
                            return;
                        }
                    };
                    this.serve(listeners);
                    let _ = done.wait_for(|d| *d).await;
                });
            })?;
        Ok(())
    }
}
