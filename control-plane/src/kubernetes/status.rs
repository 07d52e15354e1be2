//! `.status.conditions` of rule objects, as Gateway API writes them
//! (metav1.Condition: type, status, reason, message, observedGeneration,
//! lastTransitionTime; "Conditions" in
//! https://gateway-api.sigs.k8s.io/geps/gep-1364/): `Accepted` is True when
//! the object's generation validates, False with reason `Invalid` and
//! every problem when it does not (its last valid version, if any, keeps
//! serving); `ResolvedRefs`, for a valid object, is True when every
//! service it names exists in the cluster, False with reason
//! `BackendNotFound` naming each that does not (the rule still applies:
//! what it names may be created next). Written through the status
//! subresource, and only when it would change, so a status write (which
//! the watch sees) ends there. An HTTPRoute carries them where Gateway API
//! puts them: in `status.parents[]`, one entry per Service parent with
//! mesh's `controllerName`, beside the entries other controllers keep
//! ("RouteParentStatus", https://gateway-api.sigs.k8s.io/reference/spec/#routeparentstatus).

use crate::manifest::{self, Document, Located};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};

/// Whether the object's generation validates.
pub const ACCEPTED: &str = "Accepted";
/// Whether every service it names exists.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// The controllerName of mesh's entries in an HTTPRoute's status.parents.
pub const CONTROLLER: &str = "mesh.dev/mesh-control";

/// Whether `ar` keeps its conditions per parent (Gateway API routes).
fn per_parent(ar: &ApiResource) -> bool {
    ar.kind == super::gateway::HTTP_ROUTE.2
}

/// The Accepted condition `generation` should carry, given its problems.
pub fn accepted(generation: Option<i64>, problems: &[manifest::Error]) -> Condition {
    let (status, reason, message) = if problems.is_empty() {
        (
            "True",
            "Accepted",
            "the rule is valid and in force".to_string(),
        )
    } else {
        let all: Vec<String> = problems.iter().map(manifest::Error::in_object).collect();
        ("False", "Invalid", all.join("\n"))
    };
    Condition {
        type_: ACCEPTED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// The services a valid object names, each with the field naming it.
fn references(doc: &Document) -> Vec<(String, &str)> {
    match doc {
        Document::TrafficSplit(d) => {
            std::iter::once(("spec.service".to_string(), d.spec.service.as_str()))
                .chain(
                    d.spec
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| (format!("spec.backends[{i}].service"), b.service.as_str())),
                )
                .collect()
        }
        Document::TrafficPolicy(d) => {
            let spec = &d.spec;
            let mut out = vec![("spec.service".to_string(), spec.service.as_str())];
            if let Some(m) = &spec.mirror {
                out.push(("spec.mirror.service".into(), m.service.as_str()));
            }
            if let Some(svc) = spec.fallback.as_ref().and_then(|f| f.service.as_deref()) {
                out.push(("spec.fallback.service".into(), svc));
            }
            out
        }
        Document::AuthorizationPolicy(d) => vec![("spec.service".into(), d.spec.service.as_str())],
        Document::HttpRoute(d) => {
            let parents = d.spec.parent_refs.iter().enumerate();
            let mut out: Vec<(String, &str)> = parents
                .map(|(i, p)| (format!("spec.parentRefs[{i}].name"), p.name.as_str()))
                .collect();
            for (i, rule) in d.spec.rules.iter().enumerate() {
                for (j, b) in rule.backend_refs.iter().enumerate() {
                    out.push((
                        format!("spec.rules[{i}].backendRefs[{j}].name"),
                        b.name.as_str(),
                    ));
                }
                for (j, f) in rule.filters.iter().enumerate() {
                    if let Some(m) = &f.request_mirror {
                        out.push((
                            format!("spec.rules[{i}].filters[{j}].requestMirror.backendRef.name"),
                            m.backend_ref.name.as_str(),
                        ));
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The ResolvedRefs condition of `generation`, whose documents are
/// `docs`, given what the cluster `knows` (namespace, service).
pub fn resolved(
    generation: Option<i64>,
    docs: &[Located],
    knows: impl Fn(&str, &str) -> bool,
) -> Condition {
    let mut missing = Vec::new();
    for d in docs {
        let (kind, meta) = d.doc.kind_and_meta();
        for (field, svc) in references(&d.doc) {
            if !knows(&meta.namespace, svc) {
                missing.push(format!(
                    "{kind} {}/{}: {field}: no Service {}/{svc}, nor a version subset of one, is in the cluster",
                    meta.namespace, meta.name, meta.namespace
                ));
            }
        }
    }
    let (status, reason, message) = if missing.is_empty() {
        (
            "True",
            "ResolvedRefs",
            "every service the rule names exists".to_string(),
        )
    } else {
        ("False", "BackendNotFound", missing.join("\n"))
    };
    Condition {
        type_: RESOLVED_REFS.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// The entries of an HTTPRoute's status.parents: mesh's, and the others'.
fn parents(obj: &DynamicObject) -> (Vec<&serde_json::Value>, Vec<&serde_json::Value>) {
    let all = obj
        .data
        .pointer("/status/parents")
        .and_then(|p| p.as_array());
    all.into_iter()
        .flatten()
        .partition(|p| p.get("controllerName").and_then(|c| c.as_str()) == Some(CONTROLLER))
}

/// The conditions `obj` carries now (for a route, in mesh's first entry).
pub fn current(ar: &ApiResource, obj: &DynamicObject) -> Vec<Condition> {
    let conditions = if per_parent(ar) {
        parents(obj).0.first().and_then(|p| p.get("conditions"))
    } else {
        obj.data.pointer("/status/conditions")
    };
    let Some(conditions) = conditions.and_then(|c| c.as_array()) else {
        return Vec::new();
    };
    conditions
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .collect()
}

/// Whether `obj` already says exactly what `want` says (the times aside;
/// for a route, in an entry for each Service parent and no other).
pub fn carries(ar: &ApiResource, obj: &DynamicObject, want: &[Condition]) -> bool {
    if per_parent(ar) && parents(obj).0.len() != service_parents(obj).len() {
        return false;
    }
    let now = current(ar, obj);
    now.len() == want.len()
        && want.iter().all(|w| {
            now.iter().any(|c| {
                c.type_ == w.type_
                    && c.status == w.status
                    && c.reason == w.reason
                    && c.message == w.message
                    && c.observed_generation == w.observed_generation
            })
        })
}

/// Writes `want` as `obj`'s conditions, as field manager `manager` (the
/// replica); each keeps its transition time if its status does not change.
pub async fn write(
    client: &kube::Client,
    ar: &ApiResource,
    obj: &DynamicObject,
    mut want: Vec<Condition>,
    manager: &str,
) {
    let was = current(ar, obj);
    for w in &mut want {
        if let Some(c) = was
            .iter()
            .find(|c| c.type_ == w.type_ && c.status == w.status)
        {
            w.last_transition_time = c.last_transition_time.clone();
        }
    }
    let (Some(ns), Some(name)) = (
        obj.metadata.namespace.as_deref(),
        obj.metadata.name.as_deref(),
    ) else {
        return;
    };
    let api = kube::Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar);
    let patch = if per_parent(ar) {
        // The list is written whole, so it is written against the version
        // read: another controller's entry written meanwhile is a 409,
        // and the next pass starts from it.
        let mut entries: Vec<serde_json::Value> = parents(obj).1.into_iter().cloned().collect();
        for parent in service_parents(obj) {
            entries.push(serde_json::json!({
                "parentRef": parent,
                "controllerName": CONTROLLER,
                "conditions": want,
            }));
        }
        serde_json::json!({
            "metadata": {"resourceVersion": obj.metadata.resource_version},
            "status": {"parents": entries},
        })
    } else {
        serde_json::json!({"status": {"conditions": want}})
    };
    if let Err(e) = api
        .patch_status(
            name,
            &PatchParams {
                field_manager: Some(manager.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(object = %format!("{} {ns}/{name}", ar.kind), error = %e, "writing the rule's status");
    }
}

/// An HTTPRoute's Service parentRefs, as written.
fn service_parents(obj: &DynamicObject) -> Vec<serde_json::Value> {
    let refs = obj
        .data
        .pointer("/spec/parentRefs")
        .and_then(|r| r.as_array());
    refs.into_iter()
        .flatten()
        .filter(|r| super::gateway::is_service(r))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_refs_names_each_missing_service_and_its_field() {
        let docs = manifest::parse(
            "TrafficSplit shop/echo",
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: echo\n  namespace: shop\nspec:\n  service: echo\n  backends:\n  - service: echo-v1\n    weight: 90\n  - service: echo-v2\n    weight: 10\n",
        )
        .unwrap();
        let c = resolved(Some(3), &docs, |ns, svc| ns == "shop" && svc != "echo-v2");
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("ResolvedRefs", "False", "BackendNotFound")
        );
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(
            c.message,
            "TrafficSplit shop/echo: spec.backends[1].service: no Service shop/echo-v2, nor a version subset of one, is in the cluster"
        );
        let c = resolved(Some(3), &docs, |ns, _| ns == "shop");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "ResolvedRefs")
        );
    }
}
