//! Rules as Kubernetes objects: TrafficSplit, HTTPRouteGroup, TrafficPolicy
//! and AuthorizationPolicy, watched through their CRDs (install/crds), and
//! Gateway API HTTPRoutes with a Service parent once the cluster serves
//! them (`gateway`).
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
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::Store;
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

/// What an object's document is: the documents `meshctl apply` would send,
/// or every problem with them.
type Parsed = Result<Vec<Located>, Vec<manifest::Error>>;

/// The key of `obj` (an object without a namespace is `default`'s).
fn key_of(ar: &ApiResource, obj: &DynamicObject) -> Key {
    let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    (ar.kind.clone(), namespace.to_string(), name.to_string())
}

/// The API resource of a `(group, version, kind, plural)`.
pub fn resource((group, version, kind, plural): &(&str, &str, &str, &str)) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The `(group, version, kind, plural)` of a rule kind by its group,
/// version and kind: one of `KINDS`, or HTTPRoute.
pub fn rule_kind(
    group: &str,
    version: &str,
    kind: &str,
) -> Option<(&'static str, &'static str, &'static str, &'static str)> {
    KINDS
        .iter()
        .chain([&super::gateway::HTTP_ROUTE])
        .find(|(g, v, k, _)| *g == group && *v == version && *k == kind)
        .copied()
}

/// Whether a rule object is mesh's to judge: every object of `KINDS`, and
/// an HTTPRoute with a Service parent.
pub fn ours(ar: &ApiResource, obj: &DynamicObject) -> bool {
    ar.kind != super::gateway::HTTP_ROUTE.2 || super::gateway::ours(obj)
}

/// A reflector over every object of `kind`; each change wakes `changed`.
pub(super) fn reflect(
    client: &kube::Client,
    kind: &(&str, &str, &str, &'static str),
    changed: &Arc<Notify>,
) -> Store<DynamicObject> {
    let ar = resource(kind);
    let api = kube::Api::<DynamicObject>::all_with(client.clone(), &ar);
    super::registry::reflect(api, ar, kind.3, changed)
}

/// The document of one object, as its file would read: what is not
/// apiVersion, kind, name, namespace or spec (status, server fields) is
/// left out, so the rules see only what the user wrote.
pub fn document(ar: &ApiResource, obj: &DynamicObject) -> (Key, Parsed) {
    let key = key_of(ar, obj);
    let (namespace, name) = (&key.1, &key.2);
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
    (key, parsed)
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
        .map(|kind| (resource(kind), reflect(&client, kind, &changed)))
        .collect();
    let mut gateway = super::gateway::start(client.clone(), changed.clone());
    let route = super::gateway::resource();
    tokio::spawn(async move {
        for (ar, store) in &stores {
            if store.wait_until_ready().await.is_err() {
                tracing::error!(kind = %ar.kind, "Kubernetes rule watcher ended before its first list");
                return;
            }
        }
        // Whether HTTPRoutes are served decides whether the rules are whole.
        let known = gateway.wait_for(|r| !matches!(r, super::gateway::Routes::Unknown));
        if known.await.is_err() {
            return;
        }
        tracing::info!("Kubernetes rules: first list of every rule kind complete");
        // The last valid version of each object, and the generation last
        // refused, so each refusal is logged once.
        let mut good: BTreeMap<Key, Vec<Located>> = BTreeMap::new();
        let mut refused: HashMap<Key, Option<i64>> = HashMap::new();
        // Each object parsed once per resourceVersion: a registry change
        // (every EndpointSlice event) re-judges ResolvedRefs, which needs
        // the documents but not a fresh parse of every rule object.
        let mut parsed_at: HashMap<Key, (String, Parsed)> = HashMap::new();
        let (mut registry_open, mut election_open, mut gateway_open) = (true, true, true);
        loop {
            let cluster = clusters.borrow_and_update().clone();
            let leader = *leading.borrow_and_update();
            let mut seen = std::collections::BTreeSet::new();
            let mut objects: Vec<(&ApiResource, Arc<DynamicObject>)> = stores
                .iter()
                .flat_map(|(ar, store)| store.state().into_iter().map(move |o| (ar, o)))
                .collect();
            if let super::gateway::Routes::Present(store) = &*gateway.borrow_and_update() {
                let mine = store
                    .state()
                    .into_iter()
                    .filter(|o| super::gateway::ours(o));
                objects.extend(mine.map(|o| (&route, o)));
            }
            for (ar, obj) in objects {
                let generation = obj.metadata.generation;
                let version = obj.metadata.resource_version.clone().unwrap_or_default();
                let key = key_of(ar, &obj);
                let parsed = match parsed_at.get(&key) {
                    Some((at, parsed)) if *at == version && !version.is_empty() => parsed.clone(),
                    _ => {
                        let parsed = document(ar, &obj).1;
                        parsed_at.insert(key.clone(), (version, parsed.clone()));
                        parsed
                    }
                };
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
                if leader && cluster.is_some() && !super::status::carries(ar, &obj, &want) {
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
            good.retain(|k, _| seen.contains(k));
            parsed_at.retain(|k, _| seen.contains(k));
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
                r = gateway.changed(), if gateway_open => gateway_open = r.is_ok(),
            }
        }
    });
    rx
}
