//! Gateway API HTTPRoutes (gateway.networking.k8s.io/v1, GAMMA: a Service
//! parent), watched once their CRD is in the cluster. Gateway API is
//! installed by the cluster's owner, not by mesh, and may come before or
//! after mesh-control, so the CRD `httproutes.gateway.networking.k8s.io`
//! is watched and the HTTPRoute reflector starts when it is Established
//! and serves v1. A cluster without it, or a control plane not allowed to
//! see CRDs, is told apart after the first answer: mesh runs without
//! HTTPRoutes and is ready. Routes whose parents are all Gateways belong to
//! an ingress implementation, not to mesh: never validated, applied or
//! given a status here.

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// `(group, version, kind, plural)` of Gateway API HTTPRoute.
pub const HTTP_ROUTE: (&str, &str, &str, &str) =
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes");

/// The CRD that serves it.
pub const CRD: &str = "httproutes.gateway.networking.k8s.io";

/// The API resource of HTTPRoute.
pub fn resource() -> ApiResource {
    let (group, version, kind, plural) = HTTP_ROUTE;
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// What is known of the cluster's HTTPRoutes.
#[derive(Clone)]
pub enum Routes {
    /// Nothing yet: the CRD watch has not answered.
    Unknown,
    /// No served HTTPRoute v1 (yet), or the CRDs cannot be seen.
    Absent,
    /// The HTTPRoute reflector, listed once.
    Present(Store<DynamicObject>),
}

/// Whether an HTTPRoute is mesh's: one of its parents is a Service.
pub fn ours(obj: &DynamicObject) -> bool {
    obj.data
        .pointer("/spec/parentRefs")
        .and_then(|r| r.as_array())
        .is_some_and(|refs| refs.iter().any(is_service))
}

/// Whether a parentRef names a Service (core group; Gateway API's own
/// default kind is Gateway, so the kind is always spelt out).
pub fn is_service(parent: &serde_json::Value) -> bool {
    parent.get("kind").and_then(|k| k.as_str()) == Some("Service")
        && parent
            .get("group")
            .and_then(|g| g.as_str())
            .is_none_or(|g| g.is_empty() || g == "core")
}

/// Whether the CRD is Established and serves v1.
fn serves_v1(crd: &CustomResourceDefinition) -> bool {
    let established = crd.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True")
    });
    established && crd.spec.versions.iter().any(|v| v.name == "v1" && v.served)
}

/// Starts watching for the CRD; HTTPRoute changes (once watched) wake
/// `changed`, as the other rule kinds' do.
pub fn start(client: kube::Client, changed: Arc<Notify>) -> watch::Receiver<Routes> {
    let (tx, rx) = watch::channel(Routes::Unknown);
    tokio::spawn(async move {
        let crds = kube::Api::<CustomResourceDefinition>::all(client.clone());
        let by_name = watcher::Config::default().fields(&format!("metadata.name={CRD}"));
        let stream = watcher::watcher(crds, by_name).default_backoff();
        futures::pin_mut!(stream);
        let mut said_failure = false;
        while let Some(event) = stream.next().await {
            let crd = match event {
                Ok(watcher::Event::InitApply(crd) | watcher::Event::Apply(crd)) => crd,
                Ok(watcher::Event::InitDone) => {
                    tx.send_if_modified(|r| {
                        settle(
                            r,
                            "Gateway API HTTPRoute is not installed; watching for its CRD",
                        )
                    });
                    continue;
                }
                Ok(watcher::Event::Init | watcher::Event::Delete(_)) => continue,
                Err(e) => {
                    if !said_failure {
                        tracing::warn!(error = %e, "cannot see whether Gateway API HTTPRoute is installed; HTTPRoutes are not watched until it can");
                        said_failure = true;
                    }
                    tx.send_if_modified(|r| settle(r, "HTTPRoutes not watched"));
                    continue;
                }
            };
            if matches!(*tx.borrow(), Routes::Present(_)) || !serves_v1(&crd) {
                continue;
            }
            tracing::info!(
                "Gateway API HTTPRoute v1 is served: watching HTTPRoutes with a Service parent"
            );
            let ar = resource();
            let api = kube::Api::<DynamicObject>::all_with(client.clone(), &ar);
            let store = super::registry::reflect(api, ar, HTTP_ROUTE.3, &changed);
            if store.wait_until_ready().await.is_err() {
                tracing::error!("the HTTPRoute watcher ended before its first list");
                return;
            }
            tx.send_replace(Routes::Present(store));
        }
    });
    rx
}

/// Unknown becomes Absent (said once); anything else stays.
fn settle(r: &mut Routes, why: &str) -> bool {
    if !matches!(r, Routes::Unknown) {
        return false;
    }
    tracing::info!("{why}");
    *r = Routes::Absent;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(parents: serde_json::Value) -> DynamicObject {
        let mut o = DynamicObject::new("r", &resource());
        o.data = json!({"spec": {"parentRefs": parents}});
        o
    }

    #[test]
    fn a_route_is_meshs_when_a_parent_is_a_service() {
        assert!(ours(&route(
            json!([{"group": "", "kind": "Service", "name": "echo"}])
        )));
        assert!(ours(&route(json!([
            {"name": "ingress"},
            {"kind": "Service", "name": "echo"}
        ]))));
        // Gateway API's defaults: group gateway.networking.k8s.io, kind Gateway.
        assert!(!ours(&route(json!([{"name": "ingress"}]))));
        assert!(!ours(&route(
            json!([{"group": "example.com", "kind": "Service", "name": "x"}])
        )));
        assert!(!ours(&route(json!(null))));
    }
}
