//! Keeps the cluster's registry current (`--registry kubernetes`):
//! reflectors (kube::runtime) over Services, EndpointSlices and Pods of
//! every namespace. Once all three have listed, each change rebuilds the
//! [`Cluster`] and sends it if it differs.
//!
//! A watch that breaks (410 Gone, a dropped connection, an API server
//! restart) relists with back-off. A reflector swaps its store only when
//! the relist is complete (`InitDone`), so a relist never shows an empty
//! or half-listed registry: the last complete one keeps serving meanwhile.

use crate::registry::cluster::{self, Cluster};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// Starts the watchers; the receiver holds None until the first complete
/// sync, then every registry that differs from the last.
pub fn start(client: kube::Client, trust_domain: String) -> watch::Receiver<Option<Arc<Cluster>>> {
    let (tx, rx) = watch::channel(None);
    let changed = Arc::new(Notify::new());
    let services = reflect(
        kube::Api::<Service>::all(client.clone()),
        (),
        "services",
        &changed,
    );
    let slices = reflect(
        kube::Api::<EndpointSlice>::all(client.clone()),
        (),
        "endpointslices",
        &changed,
    );
    let pods = reflect(kube::Api::<Pod>::all(client.clone()), (), "pods", &changed);
    tokio::spawn(async move {
        for (what, ready) in [
            ("services", services.wait_until_ready().await),
            ("endpointslices", slices.wait_until_ready().await),
            ("pods", pods.wait_until_ready().await),
        ] {
            if ready.is_err() {
                tracing::error!(what, "Kubernetes watcher ended before its first list");
                return;
            }
        }
        tracing::info!(
            "Kubernetes registry: first list of services, endpointslices and pods complete"
        );
        let mut said: HashSet<String> = HashSet::new();
        loop {
            let (services, slices, pods) = (services.state(), slices.state(), pods.state());
            let (next, problems) = cluster::convert(
                services.iter().map(|s| s.as_ref()),
                slices.iter().map(|s| s.as_ref()),
                pods.iter().map(|p| p.as_ref()),
                &trust_domain,
            );
            // Each problem once while it lasts, not on every rebuild.
            let now: HashSet<String> = problems.into_iter().collect();
            for p in now.difference(&said) {
                tracing::warn!(problem = %p, "Kubernetes registry");
            }
            said = now;
            tx.send_if_modified(|current| {
                if current.as_deref() == Some(&next) {
                    return false;
                }
                *current = Some(Arc::new(next));
                true
            });
            changed.notified().await;
        }
    });
    rx
}

/// A reflector over every object `api` reaches (of type `dyntype`),
/// driven in its own task; each change to its store wakes `changed`.
pub(crate) fn reflect<K>(
    api: kube::Api<K>,
    dyntype: K::DynamicType,
    what: &'static str,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(drive(stream.boxed(), what, changed.clone()));
    reader
}

pub(crate) async fn drive<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    what: &'static str,
    changed: Arc<Notify>,
) {
    futures::pin_mut!(stream);
    // A failure that repeats (a CRD not installed yet) is said once a
    // minute, not at every retry.
    let mut last: Option<(String, std::time::Instant)> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                if last.take().is_some() {
                    tracing::info!(what, "Kubernetes watch recovered");
                }
                changed.notify_one()
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(e) => {
                let text = e.to_string();
                let repeat = last.as_ref().is_some_and(|(t, at)| {
                    *t == text && at.elapsed() < std::time::Duration::from_secs(60)
                });
                if !repeat {
                    tracing::warn!(
                        what,
                        error = %text,
                        "Kubernetes watch failed; retrying with back-off, the last complete list keeps serving"
                    );
                    last = Some((text, std::time::Instant::now()));
                }
            }
        }
    }
}
