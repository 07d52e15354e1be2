//! Wires the sidecar together: bind every listener first (reporting the
//! addresses actually bound, so tests use port 0), then run until shutdown,
//! then shut down in the order that loses no request: deregister, stop
//! accepting, drain in-flight requests.

use crate::config::Config;
use crate::connect::TlsContext;
use crate::discovery::{self, Registration};
use crate::forward::Forwarder;
use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::server::Drain;
use crate::state::State;
use crate::tls::identity;
use crate::{admin, health};
use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Startup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The trace exporter could not be set up.
    #[error("{0}")]
    Trace(crate::telemetry::trace::Error),
    /// The control plane's channels could not be made.
    #[error(transparent)]
    Control(#[from] crate::control::Error),
}

/// A sidecar with its listeners bound.
pub struct Bound {
    /// Outbound listener address.
    pub outbound_addr: SocketAddr,
    /// Inbound listener address, when there is a local app.
    pub inbound_addr: Option<SocketAddr>,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    outbound: TcpListener,
    inbound: Option<TcpListener>,
    admin: TcpListener,
    bootstrap: tonic::transport::Channel,
    config: Config,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = l
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    Ok((l, local))
}

/// Binds the listeners; serves nothing yet.
pub async fn build(config: Config) -> Result<Bound, Error> {
    // First, so an unusable roots file is reported before anything binds.
    let bootstrap = crate::control::bootstrap(&config.control)?;
    let (outbound, outbound_addr) = bind(config.outbound_addr).await?;
    let (admin, admin_addr) = bind(config.admin_addr).await?;
    let (inbound, inbound_addr) = match config.app_addr {
        Some(_) => {
            let (l, a) = bind(config.inbound_addr).await?;
            (Some(l), Some(a))
        }
        None => (None, None),
    };
    Ok(Bound {
        outbound_addr,
        inbound_addr,
        admin_addr,
        outbound,
        inbound,
        admin,
        bootstrap,
        config,
    })
}

impl Bound {
    /// Serves until `shutdown` resolves, then drains. Returns whether every
    /// in-flight request finished within the drain timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<bool, Error> {
        let Bound {
            outbound,
            inbound,
            admin,
            config,
            inbound_addr,
            bootstrap,
            ..
        } = self;
        let state = Arc::new(ArcSwap::from_pointee(State::for_sidecar(
            config.regex_limit,
            true,
        )));
        let node = discovery::node(&config.identity);
        let agent = identity::Agent::new(
            bootstrap,
            config.tls.proof.clone(),
            config.tls.spiffe_id.clone(),
        );
        let channel =
            crate::control::workload(&config.control, agent.current(), agent.certified())?;
        let certificate = Some(agent.current());
        let identity_status: Option<admin::IdentityStatus> =
            Some(Arc::new(agent.status_fn()) as admin::IdentityStatus);
        let identity_task = Some(tokio::spawn(agent.run()));
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new(
            config.telemetry.enabled,
            config.identity.version.clone(),
        ));
        let report_task = config.telemetry.enabled.then(|| {
            tokio::spawn(crate::telemetry::report::report(
                channel.clone(),
                node.clone(),
                metrics.aggregates.clone(),
                config.telemetry.report_interval,
            ))
        });
        let admin_task = tokio::spawn(admin::serve(
            admin,
            state.clone(),
            identity_status,
            metrics.clone(),
            config.idle_timeout,
        ));
        let sub_task = tokio::spawn(discovery::subscribe(
            channel.clone(),
            node.clone(),
            state.clone(),
            config.reconnect_max,
            metrics.clone(),
        ));
        let tls = certificate.clone().map(|identity| TlsContext {
            state: state.clone(),
            identity,
        });
        // One pool per direction, so TCP metrics tell app-bound connections
        // from sidecar-bound ones.
        let forwarder = Forwarder::new(tls.clone(), state.clone(), metrics.tcp("outbound", "dst"));
        let app_forwarder =
            Forwarder::new(tls.clone(), state.clone(), metrics.tcp("inbound", "dst"));
        let tracing = match (&config.telemetry.trace, config.telemetry.enabled) {
            (Some(t), true) => Some(Arc::new(
                crate::telemetry::trace::Tracing::start(t, &config.identity)
                    .map_err(Error::Trace)?,
            )),
            _ => None,
        };
        let log = match (&config.telemetry.access_log, config.telemetry.enabled) {
            (Some(l), true) => Some(crate::telemetry::access_log::AccessLog::start(
                l,
                metrics.access_log_dropped.clone(),
            )),
            _ => None,
        };
        let obs = Arc::new(crate::telemetry::observe::Observer::new(
            metrics.clone(),
            tracing,
            log,
        ));
        let drain = Drain::new(config.idle_timeout, config.max_connections);
        let inbound_state = state.clone();
        let opaque = crate::outbound::Tcp::new(
            tls.clone(),
            state.clone(),
            metrics.tcp("outbound", "dst"),
            metrics.clone(),
        );
        let listener = crate::outbound::Listener {
            http: Outbound::new(
                state.clone(),
                forwarder.clone(),
                certificate.is_some(),
                obs.clone(),
            ),
            tcp: opaque,
            state,
            intercept: config.intercept.clone(),
            metrics: metrics.clone(),
        };
        listener.serve(&drain, outbound, metrics.tcp("outbound", "src"));
        let registration = match (inbound, config.app_addr, inbound_addr) {
            (Some(listener), Some(app), Some(bound)) => {
                let own = format!("{}.{}", config.identity.service, config.identity.namespace);
                Inbound::new(
                    app,
                    app_forwarder,
                    certificate.clone(),
                    config.inbound_mode,
                    obs.clone(),
                    inbound_state,
                    own,
                )
                .with_intercept(config.intercept.clone())
                .serve(&drain, listener);
                let health = health::spawn(config.health.clone(), app);
                let advertise = config.advertise_addr.unwrap_or(bound);
                // A plaintext inbound registers no identity: meshed peers
                // reach it only where a policy allows plaintext.
                let spiffe_id = (config.inbound_mode != crate::config::Mode::Plaintext)
                    .then(|| config.tls.spiffe_id.clone());
                Some(Registration::start(
                    channel,
                    node,
                    advertise,
                    health,
                    spiffe_id,
                    certificate,
                ))
            }
            _ => None,
        };

        shutdown.await;
        // 1. Leave every endpoint set first, while still serving, so peers stop
        //    picking this instance before its listeners close.
        if let Some(reg) = &registration {
            let propagated = reg.deregister(Duration::from_secs(5)).await;
            tracing::info!(propagated, "deregistered");
        }
        // 2 and 3. Stop accepting, then let in-flight requests finish.
        let drained = drain.shutdown(config.drain_timeout).await;
        tracing::info!(drained, "drain complete");
        obs.shutdown().await;
        sub_task.abort();
        admin_task.abort();
        if let Some(t) = report_task {
            t.abort();
        }
        if let Some(t) = identity_task {
            t.abort();
        }
        Ok(drained)
    }
}
