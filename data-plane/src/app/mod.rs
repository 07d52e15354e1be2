//! Wires the sidecar together: bind every listener first (reporting the
//! addresses actually bound, so tests use port 0), then run until shutdown,
//! then shut down in the order that loses no request: deregister, stop
//! accepting, drain in-flight requests. The control-plane tasks run on the
//! main runtime, beside worker 0; `worker` owns the request path.

mod worker;

use crate::config::Config;
use crate::discovery::{self, Registration};
use crate::server::Drain;
use crate::state::State;
use crate::tls::identity;
use crate::{admin, health};
use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use worker::{Listeners, Worker};

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
    /// A worker thread could not be started.
    #[error("starting worker {n}: {source}")]
    Worker {
        /// Which worker.
        n: usize,
        /// Cause.
        source: std::io::Error,
    },
}

/// A sidecar with its listeners bound.
pub struct Bound {
    /// Outbound listener address.
    pub outbound_addr: SocketAddr,
    /// Inbound listener address, when there is a local app.
    pub inbound_addr: Option<SocketAddr>,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Each worker's listeners, worker 0's first.
    workers: Vec<Listeners>,
    admin: TcpListener,
    bootstrap: tonic::transport::Channel,
    config: Config,
}

/// Binds `addr`; `shared` lets the other workers bind the same address
/// (SO_REUSEPORT: the kernel spreads new connections over the listeners).
fn bind(addr: SocketAddr, shared: bool) -> Result<(TcpListener, SocketAddr), Error> {
    let failed = |source| Error::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed)?;
    // As TcpListener::bind does: a restarted sidecar can rebind at once.
    socket.set_reuseaddr(true).map_err(failed)?;
    if shared {
        socket.set_reuseport(true).map_err(failed)?;
    }
    socket.bind(addr).map_err(failed)?;
    let l = socket.listen(1024).map_err(failed)?;
    let local = l.local_addr().map_err(failed)?;
    Ok((l, local))
}

/// `n` listeners on `addr` (port 0 picks one port for all of them).
fn bind_all(addr: SocketAddr, n: usize) -> Result<(Vec<TcpListener>, SocketAddr), Error> {
    let shared = n > 1;
    let (first, local) = bind(addr, shared)?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind(local, shared)?.0);
    }
    Ok((all, local))
}

/// Binds the listeners; serves nothing yet.
pub async fn build(config: Config) -> Result<Bound, Error> {
    // First, so an unusable roots file is reported before anything binds.
    let bootstrap = crate::control::bootstrap(&config.control)?;
    let n = config.workers.max(1);
    let (outbound, outbound_addr) = bind_all(config.outbound_addr, n)?;
    let (admin, admin_addr) = bind(config.admin_addr, false)?;
    let (inbound, inbound_addr) = match config.app_addr {
        Some(_) => {
            let (l, a) = bind_all(config.inbound_addr, n)?;
            (l.into_iter().map(Some).collect::<Vec<_>>(), Some(a))
        }
        None => ((0..n).map(|_| None).collect(), None),
    };
    let workers = outbound
        .into_iter()
        .zip(inbound)
        .map(|(outbound, inbound)| Listeners { outbound, inbound })
        .collect();
    Ok(Bound {
        outbound_addr,
        inbound_addr,
        admin_addr,
        workers,
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
            workers,
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
        let demand = Arc::new(crate::demand::Demand::new(config.demand.clone()));
        let sub_task = tokio::spawn(discovery::subscribe(
            channel.clone(),
            node.clone(),
            state.clone(),
            config.reconnect_max,
            metrics.clone(),
            demand.clone(),
        ));
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
        let worker = Worker {
            state,
            demand,
            certificate: certificate.clone(),
            metrics: metrics.clone(),
            obs: obs.clone(),
            drain: drain.clone(),
            intercept: config.intercept.clone(),
            app: config.app_addr.map(|app| (app, config.inbound_mode)),
            own: format!("{}.{}", config.identity.service, config.identity.namespace),
        };
        let (done, workers_done) = tokio::sync::watch::channel(false);
        let mut workers = workers.into_iter();
        let first = workers.next().expect("one worker at least");
        for (i, listeners) in workers.enumerate() {
            let n = i + 1;
            let unbound = listeners
                .unbind()
                .map_err(|source| Error::Worker { n, source })?;
            worker
                .spawn(n, unbound, workers_done.clone())
                .map_err(|source| Error::Worker { n, source })?;
        }
        worker.serve(first);
        let registration = match (config.app_addr, inbound_addr) {
            (Some(app), Some(bound)) => {
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
        done.send_replace(true);
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
