//! Rules as Kubernetes objects: TrafficSplit, HTTPRouteGroup, TrafficPolicy
//! and AuthorizationPolicy, watched through their CRDs (install/crds).
//! Each object becomes the document `meshctl apply` would send and is
//! validated alone by the same code. One that does not validate (stored
//! while the admission webhook was down, say) never replaces the last
//! valid version of that object, which keeps serving; it is logged once
//! per generation. Each object's `Accepted` condition says which, and
//! its `ResolvedRefs` whether the services it names exist (see `status`).
//! The documents in force go out together, sorted, each time one changes.

use crate::manifest::{self, Located};
use crate::registry::{Catalog, cluster::Cluster};
use crate::rules;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// `(group, version, kind, plural)` of every rule kind watched.
pub const KINDS: [(&str, &str, &str, &str); 4] = [
    (
        "split.smi-spec.io",
        "v1alpha4",
        "TrafficSplit",
        "trafficsplits",
    ),
    (
        "specs.smi-spec.io",
        "v1alpha4",
        "HTTPRouteGroup",
        "httproutegroups",
    ),
    ("mesh.dev", "v1alpha1", "TrafficPolicy", "trafficpolicies"),
    (
        "mesh.dev",
        "v1alpha1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
];

/// `(kind, namespace, name)` of one object.
type Key = (String, String, String);

/// The document of one object, as its file would read: what is not
/// apiVersion, kind, name, namespace or spec (status, server fields) is
/// left out, so the rules see only what the user wrote.
pub fn document(
    ar: &ApiResource,
    obj: &DynamicObject,
) -> (Key, Result<Vec<Located>, Vec<manifest::Error>>) {
    let namespace = obj
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = obj.metadata.name.clone().unwrap_or_default();
    let text = serde_json::json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": obj.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
    })
    .to_string();
    let file = format!("{} {namespace}/{name}", ar.kind);
    let parsed = manifest::parse(&file, &text).and_then(|docs| {
        rules::rules_from(&docs)?;
        Ok(docs)
    });
    ((ar.kind.clone(), namespace, name), parsed)
}

/// Starts the watchers; the receiver holds None until every kind has
/// listed once, then the documents in force after each change. `clusters`
/// is the registry, which each object's ResolvedRefs is judged against
/// (statuses wait for its first list). Only the leader (`leading`) writes
/// statuses (as field manager `manager`); one that becomes leader writes
/// whatever is out of date.
pub fn start(
    client: kube::Client,
    mut clusters: watch::Receiver<Option<Arc<Cluster>>>,
    mut leading: watch::Receiver<bool>,
    manager: String,
) -> watch::Receiver<Option<Arc<Vec<Located>>>> {
    let (tx, rx) = watch::channel(None);
    let changed = Arc::new(Notify::new());
    let stores: Vec<(ApiResource, Store<DynamicObject>)> = KINDS
        .iter()
        .map(|(group, version, kind, plural)| {
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                plural,
            );
            let writer = reflector::store::Writer::new(ar.clone());
            let reader = writer.as_reader();
            let api = kube::Api::<DynamicObject>::all_with(client.clone(), &ar);
            let stream = reflector::reflector(
                writer,
                watcher::watcher(api, watcher::Config::default()).default_backoff(),
            );
            tokio::spawn(crate::kubernetes::registry::drive(
                stream.boxed(),
                plural,
                changed.clone(),
            ));
            (ar, reader)
        })
        .collect();
    tokio::spawn(async move {
        for (ar, store) in &stores {
            if store.wait_until_ready().await.is_err() {
                tracing::error!(kind = %ar.kind, "Kubernetes rule watcher ended before its first list");
                return;
            }
        }
        tracing::info!("Kubernetes rules: first list of every rule kind complete");
        // The last valid version of each object, and the generation last
        // refused, so each refusal is logged once.
        let mut good: BTreeMap<Key, Vec<Located>> = BTreeMap::new();
        let mut refused: HashMap<Key, Option<i64>> = HashMap::new();
        let (mut registry_open, mut election_open) = (true, true);
        loop {
            let cluster = clusters.borrow_and_update().clone();
            let leader = *leading.borrow_and_update();
            let mut seen = std::collections::BTreeSet::new();
            for (ar, store) in &stores {
                for obj in store.state() {
                    let generation = obj.metadata.generation;
                    let (key, parsed) = document(ar, &obj);
                    seen.insert(key.clone());
                    let mut want = vec![super::status::accepted(
                        generation,
                        parsed.as_ref().err().map(Vec::as_slice).unwrap_or_default(),
                    )];
                    if let (Ok(docs), Some(cluster)) = (&parsed, &cluster) {
                        want.push(super::status::resolved(generation, docs, |ns, svc| {
                            cluster.knows(ns, svc)
                        }));
                    }
                    if leader && cluster.is_some() && !super::status::carries(&obj, &want) {
                        let (client, ar, obj) = (client.clone(), ar.clone(), obj.clone());
                        let manager = manager.clone();
                        tokio::spawn(async move {
                            super::status::write(&client, &ar, &obj, want, &manager).await
                        });
                    }
                    match parsed {
                        Ok(docs) => {
                            refused.remove(&key);
                            good.insert(key, docs);
                        }
                        Err(problems) => {
                            if refused.get(&key) != Some(&generation) {
                                let keeps = if good.contains_key(&key) {
                                    "its last valid version keeps serving"
                                } else {
                                    "not applied"
                                };
                                for p in &problems {
                                    tracing::warn!(object = %format!("{} {}/{}", key.0, key.1, key.2), problem = %p, "Kubernetes rule refused; {keeps}");
                                }
                                refused.insert(key, generation);
                            }
                        }
                    }
                }
            }
            good.retain(|k, _| seen.contains(k));
            refused.retain(|k, _| seen.contains(k));
            let docs: Vec<Located> = good.values().flatten().cloned().collect();
            tx.send_if_modified(|current| {
                if current.as_deref() == Some(&docs) {
                    return false;
                }
                *current = Some(Arc::new(docs));
                true
            });
            // A change of rules or of the registry (ResolvedRefs) runs
            // the loop again; a registry that has ended is waited on no
            // more.
            tokio::select! {
                () = changed.notified() => {}
                r = clusters.changed(), if registry_open => registry_open = r.is_ok(),
                r = leading.changed(), if election_open => election_open = r.is_ok(),
            }
        }
    });
    rx
}
