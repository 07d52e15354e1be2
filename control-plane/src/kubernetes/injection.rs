//! The injection webhook's answer
//! (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#response):
//! an AdmissionReview v1 creating a Pod is answered with a JSONPatch from
//! the Pod as sent to the Pod `inject` makes of it, with no patch when the
//! Pod is left alone (and why, in the audit annotations), or with a
//! refusal naming every bad `mesh.dev/*` annotation. Pure: bytes in, the
//! review to send back out (`webhook` serves it).

use super::admission::Error;
use crate::inject::{self, Namespace, Template};
use base64::Engine;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

/// The audit annotation saying why a Pod was not injected.
const SKIPPED: &str = "skipped";

/// The AdmissionReview answering `body`; `opted` says whether the Pod's
/// namespace opted in (the webhook the API server called says, by the
/// namespaceSelector that matched).
pub fn answer(body: &[u8], opted: Namespace, template: &Template) -> Result<Value, Error> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| Error::NoRequest)?;
    // The Pod as sent, every field of it: the patch is computed against
    // exactly what the API server holds.
    let raw: Value = serde_json::from_slice(body)?;
    let pod = &raw["request"]["object"];
    let mut review = serde_json::to_value(decide(&request, pod, opted, template).into_review())?;
    // The patch goes as base64, as the API server's Go client encodes
    // bytes ("patch ... base64-encoded JSON patch"), where kube's type
    // would write an array of numbers.
    if let Some(patch) = review["response"].get_mut("patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take())?;
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(review)
}

fn decide(
    request: &AdmissionRequest<DynamicObject>,
    pod: &Value,
    opted: Namespace,
    template: &Template,
) -> AdmissionResponse {
    let mut allowed = AdmissionResponse::from(request);
    let gvk = &request.kind;
    // Injection is for Pods being created: anything else this webhook is
    // sent passes untouched.
    if request.operation != Operation::Create || !gvk.group.is_empty() || gvk.kind != "Pod" {
        return allowed;
    }
    if !pod.is_object() {
        return allowed.deny("the request carries no Pod");
    }
    let namespace = request
        .namespace
        .as_deref()
        .or(pod["metadata"]["namespace"].as_str())
        .unwrap_or("default");
    match inject::inject(pod, namespace, opted, template) {
        Ok(Ok(injected)) => {
            let patch = json_patch::diff(pod, &injected);
            allowed
                .with_patch(patch)
                .unwrap_or_else(|e| AdmissionResponse::from(request).deny(e))
        }
        Ok(Err(skip)) => {
            allowed
                .audit_annotations
                .insert(SKIPPED.into(), skip.to_string());
            allowed
        }
        Err(refused) => allowed.deny(format!("mesh cannot inject this Pod: {refused}")),
    }
}

#[cfg(test)]
#[path = "tests/injection.rs"]
mod tests;
