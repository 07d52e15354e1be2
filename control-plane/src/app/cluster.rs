//! What mesh-control runs when a Kubernetes cluster is its registry: the
//! watches that feed the state, leader election, and the admission
//! webhook with the caBundle it needs.

use crate::registry::cluster::Cluster;
use crate::state::State;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The admission webhook, bound, and what it needs to serve.
pub(super) struct Webhook {
    pub listener: TcpListener,
    pub tls: Arc<crate::mtls::ServerTls>,
    pub limit: crate::listen::Limit,
    pub idle: Duration,
    /// The ValidatingWebhookConfiguration whose caBundle is kept.
    pub configuration: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept.
    pub injector: String,
    pub roots_pem: String,
    /// What injected sidecars are given.
    pub template: Arc<crate::inject::Template>,
}

/// Starts leader election, the rule and registry watches, and the
/// webhook if bound; returns the leadership, to release on shutdown.
pub(super) fn start(
    state: Arc<State>,
    client: kube::Client,
    trust_domain: String,
    election: crate::kubernetes::leader::Election,
    webhook: Option<Webhook>,
) -> crate::kubernetes::leader::Leadership {
    let manager = format!("mesh-control-{}", election.identity);
    let leadership = crate::kubernetes::leader::start(client.clone(), election);
    let clusters = crate::kubernetes::registry::start(client.clone(), trust_domain);
    let objects = crate::kubernetes::rules::start(
        client.clone(),
        clusters.clone(),
        leadership.leading.clone(),
        manager,
    );
    if let Some(w) = webhook {
        tokio::spawn(crate::webhook::serve(
            w.listener,
            w.tls,
            w.limit,
            w.idle,
            objects.clone(),
            w.template,
        ));
        use crate::kubernetes::ca_bundle::{Kind, keep};
        tokio::spawn(keep(
            client.clone(),
            Kind::Validating,
            w.configuration,
            w.roots_pem.clone(),
        ));
        tokio::spawn(keep(
            client.clone(),
            Kind::Mutating,
            w.injector,
            w.roots_pem,
        ));
    }
    feed(state, clusters, objects);
    leadership
}

/// Feeds the Kubernetes registry and rules into the state, and marks it
/// whole once each has been listed (until then `/ready` says what it
/// waits for, and discovery sends nothing).
fn feed(
    state: Arc<State>,
    mut clusters: watch::Receiver<Option<Arc<Cluster>>>,
    mut objects: crate::webhook::InForce,
) {
    tokio::spawn(async move {
        let (mut registry, mut rules) = (false, false);
        loop {
            tokio::select! {
                changed = clusters.changed() => {
                    if changed.is_err() { break; }
                    let next = clusters.borrow_and_update().clone();
                    if let Some(cluster) = next {
                        // Off the workers: a large cluster's view is much CPU.
                        match state.off_runtime(move |s| s.sync_cluster(cluster)).await {
                            Ok(version) => tracing::debug!(version, "Kubernetes registry synced"),
                            Err(e) => tracing::error!(error = %e, "syncing the Kubernetes registry failed"),
                        }
                        registry = true;
                    }
                }
                changed = objects.changed() => {
                    if changed.is_err() { break; }
                    let next = objects.borrow_and_update().clone();
                    let Some(docs) = next else { continue };
                    let count = docs.len();
                    match state.off_runtime(move |s| s.sync_rules(&docs)).await {
                        Ok(Ok(version)) => tracing::info!(version, objects = count, "Kubernetes rules in force"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "Kubernetes rules refused as a set; the rules in force keep serving"),
                        Err(e) => tracing::error!(error = %e, "syncing the Kubernetes rules failed"),
                    }
                    rules = true;
                }
            }
            if registry && rules {
                state.mark_complete();
            }
        }
    });
}
