//! Wires mesh-control together: load the mesh file, restore state, bind the
//! listeners (reporting the addresses actually bound), and serve until told
//! to stop.

mod cluster;
mod credentials;
mod error;
mod seed;

pub use error::Error;
pub use seed::{load_documents, seed};

use crate::config::Config;
use crate::identity::{Identity, ca, tokens, tokens::Tokens};
use crate::release::{Controller, cluster::Objects};
use crate::state::State;
use crate::store::Store;
use crate::{admin::Admin, discovery::Discovery, http};
use mesh_proto::prebuilt::server::discovery_server::DiscoveryServer;
use mesh_proto::v1::admin_server::AdminServer;
use mesh_proto::v1::identity_server::IdentityServer;
use mesh_proto::v1::telemetry_server::TelemetryServer;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The bound control plane, ready to run.
pub struct Bound {
    /// gRPC address actually bound.
    pub grpc_addr: SocketAddr,
    /// HTTP address actually bound.
    pub http_addr: SocketAddr,
    /// mTLS admin address actually bound.
    pub admin_addr: SocketAddr,
    /// The admission webhook's HTTPS address actually bound, if served.
    pub webhook_addr: Option<SocketAddr>,
    /// Where the operator credentials were written (`admin/`, `viewer/`).
    pub credentials: std::path::PathBuf,
    /// The mesh's trust anchors, which sidecars verify the control plane
    /// against (`MESH_PROXY_CONTROL_ROOTS`).
    pub roots: std::path::PathBuf,
    grpc: TcpListener,
    http: TcpListener,
    admin: TcpListener,
    webhook: Option<(TcpListener, Arc<crate::mtls::ServerTls>)>,
    tls: Arc<crate::mtls::ServerTls>,
    grpc_tls: Arc<crate::mtls::ServerTls>,
    state: Arc<State>,
    window: Arc<crate::telemetry::Window>,
    releases: Arc<crate::release::Controller>,
    metrics: Arc<crate::metrics::Metrics>,
    identity: Identity,
    tokens: tokens::Shared,
    ca: Arc<ca::Ca>,
    kube: Option<kube::Client>,
    config: Config,
}

/// Loads config and state and binds every listener. Nothing is served yet.
pub async fn build(config: Config) -> Result<Bound, Error> {
    let (registry, rules) = seed(&config)?;
    let store = Store::open(&config.state_dir)?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let admission = crate::state::Admission {
        trust_domain: config.trust_domain.clone(),
        max_per_identity: config.max_registrations_per_identity as usize,
        metrics: metrics.registrations.clone(),
        cluster: config.registry == crate::config::RegistryKind::Kubernetes,
    };
    let kube = match config.registry {
        crate::config::RegistryKind::Kubernetes => {
            Some(crate::kubernetes::client(config.kubeconfig.as_deref()).await?)
        }
        crate::config::RegistryKind::Local => None,
    };
    let state = Arc::new(
        State::new(registry, rules, store.clone(), admission)?
            .with_batch_window(std::time::Duration::from_millis(config.batch_window_ms)),
    );
    tokio::spawn(state.clone().run_batches());
    let window = Arc::new(crate::telemetry::Window::default());
    let releases = match kube.clone() {
        Some(kube) => Controller::cluster(state.clone(), window.clone(), Objects::start(kube)),
        None => Controller::load(state.clone(), window.clone(), store)?,
    };
    let releases = Arc::new(releases.metered(metrics.releases.clone()));
    let provided = config
        .ca_cert
        .as_ref()
        .zip(config.ca_key.as_ref())
        .map(|(cert, key)| ca::Provided {
            cert: cert.clone(),
            key: key.clone(),
            roots: config.ca_roots.clone(),
        });
    let lifetime = std::time::Duration::from_secs(config.cert_lifetime_secs.max(1));
    let ca = match (&kube, &config.cluster.ca_secret) {
        // Every replica signs with the chain the Secret holds.
        (Some(client), Some(secret)) if provided.is_none() => {
            let ns = &config.cluster.namespace;
            let m =
                crate::kubernetes::ca_secret::load_or_create(client.clone(), ns, secret).await?;
            ca::Ca::from_material(&m, Path::new(&format!("Secret {ns}/{secret}")), lifetime)?
        }
        _ => ca::Ca::load_or_create(&config.state_dir.join("ca"), provided.as_ref(), lifetime)?,
    };
    let tokens = tokens::Shared::new(match &config.bootstrap_tokens {
        Some(path) => Tokens::load(path)?,
        None => Tokens::default(),
    });
    let ca = Arc::new(ca);
    // A cluster's workloads prove themselves with projected ServiceAccount
    // tokens; bootstrap tokens are local mode's.
    let proofs = match &kube {
        Some(client) => crate::identity::Proofs::Kubernetes(client.clone()),
        None => crate::identity::Proofs::Local(tokens.clone()),
    };
    let identity = Identity::new(ca.clone(), proofs, config.trust_domain.clone());
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })
    };
    use crate::mtls::{Clients, ServerTls};
    let tls = Arc::new(ServerTls::new(
        &ca,
        &config.trust_domain,
        Clients::Required,
        "admin",
    )?);
    let grpc_tls = Arc::new(ServerTls::new(
        &ca,
        &config.trust_domain,
        Clients::Optional,
        "grpc",
    )?);
    let credentials = config.state_dir.join("credentials");
    credentials::write(&ca, &config.trust_domain, &credentials)?;
    let grpc = bind(config.grpc_addr).await?;
    let http = bind(config.http_addr).await?;
    let admin = bind(config.admin_addr).await?;
    let (webhook, webhook_addr) = match &config.cluster.webhook {
        Some(w) => {
            let listener = bind(w.addr).await?;
            let addr = listener.local_addr().map_err(|source| Error::Bind {
                addr: w.addr,
                source,
            })?;
            let tls = Arc::new(ServerTls::webhook(&ca, &w.names)?);
            (Some((listener, tls)), Some(addr))
        }
        None => (None, None),
    };
    Ok(Bound {
        webhook_addr,
        webhook,
        admin_addr: admin.local_addr().map_err(|source| Error::Bind {
            addr: config.admin_addr,
            source,
        })?,
        roots: credentials.join("roots.pem"),
        credentials,
        admin,
        tls,
        grpc_tls,
        metrics,
        tokens,
        grpc_addr: grpc.local_addr().map_err(|source| Error::Bind {
            addr: config.grpc_addr,
            source,
        })?,
        http_addr: http.local_addr().map_err(|source| Error::Bind {
            addr: config.http_addr,
            source,
        })?,
        grpc,
        http,
        state,
        window,
        releases,
        identity,
        ca,
        kube,
        config,
    })
}

impl Bound {
    /// Serves until `shutdown` resolves, then stops gracefully: publication
    /// and lease expiry stop first (heartbeats can no longer arrive, and a
    /// registry nobody can renew must never reach the sidecars), the gRPC
    /// listener closes and every connection gets GOAWAY, and the streams
    /// sidecars hold are ended after the drain (`--drain-timeout-ms`), so
    /// they reconnect elsewhere while keeping their last good config.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let Bound {
            grpc,
            http,
            admin,
            webhook,
            tls,
            grpc_tls,
            credentials,
            state,
            window,
            releases,
            metrics,
            identity,
            tokens,
            ca,
            kube,
            config,
            ..
        } = self;
        let limit = |what| metrics.limit(what, config.max_connections as usize);
        let webhook_tls = webhook.as_ref().map(|(_, tls)| tls.clone());
        let mut leadership = None;
        let clustered = kube.is_some();
        if let Some(client) = kube {
            let webhook =
                webhook
                    .zip(config.cluster.webhook.as_ref())
                    .map(|((listener, tls), w)| cluster::Webhook {
                        listener,
                        tls,
                        limit: limit("webhook"),
                        idle: config.idle(),
                        configuration: w.configuration.clone(),
                        injector: w.injector.configuration.clone(),
                        roots_pem: ca.roots_pem().concat(),
                        template: Arc::new(crate::inject::Template {
                            image: w.injector.image.clone(),
                            pull_policy: w.injector.pull_policy.clone(),
                            control_addr: w.injector.control_addr.clone(),
                            roots_pem: ca.roots_pem().concat(),
                            trust_domain: config.trust_domain.clone(),
                        }),
                    });
            let election = crate::kubernetes::leader::Election {
                namespace: config.cluster.namespace.clone(),
                identity: config.cluster.identity.clone(),
                duration_secs: config.cluster.lease_duration_secs,
            };
            leadership = Some(cluster::start(
                state.clone(),
                client,
                config.trust_domain.clone(),
                election,
                webhook,
            ));
        }
        let synced = state.completed();
        if let Some(path) = config.bootstrap_tokens.clone() {
            tokio::spawn(tokens::follow(
                path,
                tokens,
                std::time::Duration::from_secs(1),
            ));
        }
        let (stopping_tx, stopping) = watch::channel(false);
        let (ending_tx, ending) = watch::channel(false);
        tokio::spawn(http::serve(
            http,
            stopping.clone(),
            synced,
            config.idle(),
            limit("http"),
            metrics.clone(),
        ));
        if clustered && !config.cluster.peers_service.is_empty() {
            let peers = crate::telemetry::peers::Peers {
                namespace: config.cluster.namespace.clone(),
                service: config.cluster.peers_service.clone(),
                me: config.cluster.identity.clone(),
                trust_domain: config.trust_domain.clone(),
            };
            crate::telemetry::peers::start(
                peers,
                state.clone(),
                window.clone(),
                ca.clone(),
                stopping.clone(),
            );
        }
        let lease = config.lease();
        let expiry_state = state.clone();
        let mut expiry_stop = stopping.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 6);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = expiry_stop.wait_for(|s| *s) => break,
                }
                match expiry_state.off_runtime(move |s| s.expire(lease)).await {
                    Ok(Ok(dead)) if !dead.is_empty() => tracing::info!(?dead, "leases expired"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "expiring leases"),
                    Err(e) => tracing::error!(error = %e, "expiring leases failed"),
                }
            }
        });
        let discovery = Discovery::new(
            state.clone(),
            config.heartbeat(),
            std::time::Duration::from_millis(config.propagation_timeout_ms),
            crate::listen::Ending(ending.clone()),
        );
        // Releases move only while this control plane serves (and, in a
        // cluster, leads); a stopping one leaves each where it was,
        // persisted, for the next to resume.
        let leading = leadership
            .as_ref()
            .map_or_else(|| watch::channel(true).1, |l| l.leading.clone());
        tokio::spawn(releases.clone().run(stopping.clone(), leading));
        let drain = config.drain();
        let stop_state = state.clone();
        let stop = async move {
            shutdown.await;
            stop_state.stop_publishing();
            // A successor need not wait out the Lease. Bounded: an API
            // server that is away must not hold the stop up.
            if let Some(l) = leadership {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), l.release()).await;
            }
            let _ = stopping_tx.send(true);
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "stopping: publication and lease expiry stopped, listener closed; streams end after the drain"
            );
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                let _ = ending_tx.send(true);
            });
        };
        // Certificates a quarter of the way before expiry: the listeners'
        // own, and the operators' credentials on disk.
        let renew_every = (ca.lifetime() / 4).max(std::time::Duration::from_secs(1));
        let (renew_ca, td) = (ca.clone(), config.trust_domain.clone());
        let (renew_tls, renew_grpc) = (tls.clone(), grpc_tls.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(renew_every).await;
                let renewed = renew_tls
                    .renew(&renew_ca)
                    .and_then(|()| renew_grpc.renew(&renew_ca))
                    .and_then(|()| match &webhook_tls {
                        Some(tls) => tls.renew(&renew_ca),
                        None => Ok(()),
                    })
                    .and_then(|()| credentials::write(&renew_ca, &td, &credentials));
                if let Err(e) = renewed {
                    tracing::error!(error = %e, "renewing the control plane's certificates");
                }
            }
        });
        let mut admin_stop = stopping.clone();
        let admin_server = tonic::transport::Server::builder()
            .add_service(crate::authz::Authorized::new(
                AdminServer::new(Admin::new(
                    state.clone(),
                    ca,
                    config.trust_domain.clone(),
                    window.clone(),
                    releases,
                ))
                // The rule text of one apply, plus its framing.
                .max_decoding_message_size(mesh_proto::MAX_APPLY_BYTES + (1 << 20)),
                &config.trust_domain,
            ))
            .serve_with_incoming_shutdown(
                crate::mtls::incoming(admin, tls, limit("admin"), config.idle()),
                async move {
                    let _ = admin_stop.wait_for(|s| *s).await;
                },
            );
        tokio::spawn(async move {
            if let Err(e) = admin_server.await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        let serve = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(DiscoveryServer::new(discovery))
            .add_service(TelemetryServer::new(crate::telemetry::Service {
                window,
                state: state.clone(),
                peer: crate::mtls::control_id(&config.trust_domain),
                ending: crate::listen::Ending(ending.clone()),
            }))
            .add_service(IdentityServer::new(identity))
            .serve_with_incoming_shutdown(
                crate::mtls::incoming(grpc, grpc_tls, limit("grpc"), config.idle()),
                stop,
            );
        tokio::pin!(serve);
        let mut ended = ending;
        tokio::select! {
            served = &mut serve => served,
            // A call that outlives its stream's end (a deregistration waiting
            // on propagation) gets a short grace, then the process goes.
            _ = async {
                let _ = ended.wait_for(|e| *e).await;
                tokio::time::sleep(END_GRACE).await;
            } => {
                tracing::warn!("calls still open {END_GRACE:?} after the drain; exiting anyway");
                Ok(())
            }
        }
    }
}

/// How long calls may outlast the end of the drain.
const END_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
