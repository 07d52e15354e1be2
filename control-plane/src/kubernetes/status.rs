//! `.status.conditions` of rule objects, as Gateway API writes them
//! (metav1.Condition: type, status, reason, message, observedGeneration,
//! lastTransitionTime; "Conditions" in
//! https://gateway-api.sigs.k8s.io/geps/gep-1364/): `Accepted` is True when
//! the object's generation validates, False with reason `Invalid` and
//! every problem when it does not (its last valid version, if any, keeps
//! serving). Written through the status subresource, and only when it
//! would change, so a status write (which the watch sees) ends there.

use crate::manifest;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};

/// The condition type.
pub const ACCEPTED: &str = "Accepted";

/// The Accepted condition `generation` should carry, given its problems.
pub fn accepted(generation: Option<i64>, problems: &[manifest::Error]) -> Condition {
    let (status, reason, message) = if problems.is_empty() {
        (
            "True",
            "Accepted",
            "the rule is valid and in force".to_string(),
        )
    } else {
        let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
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

/// The Accepted condition `obj` carries now, if any.
fn current(obj: &DynamicObject) -> Option<Condition> {
    let conditions = obj.data.pointer("/status/conditions")?.as_array()?;
    conditions
        .iter()
        .filter_map(|c| serde_json::from_value::<Condition>(c.clone()).ok())
        .find(|c| c.type_ == ACCEPTED)
}

/// Whether `obj` already says what `want` says (the time aside).
pub fn carries(obj: &DynamicObject, want: &Condition) -> bool {
    current(obj).is_some_and(|c| {
        c.status == want.status
            && c.reason == want.reason
            && c.message == want.message
            && c.observed_generation == want.observed_generation
    })
}

/// Writes `want` to `obj`'s status; the transition time stays what it was
/// if the status itself does not change.
pub async fn write(
    client: &kube::Client,
    ar: &ApiResource,
    obj: &DynamicObject,
    mut want: Condition,
) {
    if let Some(was) = current(obj)
        && was.status == want.status
    {
        want.last_transition_time = was.last_transition_time;
    }
    let (Some(ns), Some(name)) = (
        obj.metadata.namespace.as_deref(),
        obj.metadata.name.as_deref(),
    ) else {
        return;
    };
    let api = kube::Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar);
    let patch = serde_json::json!({"status": {"conditions": [want]}});
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(object = %format!("{} {ns}/{name}", ar.kind), error = %e, "writing the rule's status");
    }
}
