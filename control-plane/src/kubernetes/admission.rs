//! The validating admission webhook's answer
//! (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#request
//! and #response): an AdmissionReview v1 for a rule object is answered
//! with the very validation `meshctl apply` runs on that object, against
//! the other rule objects in force as `meshctl apply` checks against the
//! rules in force, so `kubectl apply` of a bad rule is refused with the
//! same message and nothing is stored. Pure: bytes and the rules in force
//! in, the review to send back out (`webhook` serves it).

use crate::manifest::Located;
use crate::rules;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

/// Why a body is not an AdmissionReview to answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON of an AdmissionReview.
    #[error("not an AdmissionReview: {0}")]
    Body(#[from] serde_json::Error),
    /// An AdmissionReview with no request in it.
    #[error("the AdmissionReview carries no request")]
    NoRequest,
}

/// The AdmissionReview answering `body`, given the rule objects in force
/// (as `rules::start` publishes them).
pub fn answer(body: &[u8], in_force: &[Located]) -> Result<AdmissionReview<DynamicObject>, Error> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| Error::NoRequest)?;
    Ok(decide(&request, in_force).into_review())
}

fn decide(request: &AdmissionRequest<DynamicObject>, in_force: &[Located]) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        // Deleting a rule needs no validation; connect is not ours.
        return allowed;
    }
    let gvk = &request.kind;
    let Some(kind) = super::rules::rule_kind(&gvk.group, &gvk.version, &gvk.kind) else {
        return allowed.deny(format!(
            "{}/{} {} is not a rule kind this webhook validates",
            gvk.group, gvk.version, gvk.kind
        ));
    };
    let Some(object) = &request.object else {
        return allowed.deny("the request carries no object");
    };
    let ar = super::rules::resource(&kind);
    // An ingress implementation's route: not mesh's to judge.
    if !super::rules::ours(&ar, object) {
        return allowed;
    }
    let mut object = object.clone();
    // The object's namespace may be left to the request's.
    if object.metadata.namespace.is_none() {
        object.metadata.namespace = request.namespace.clone();
    }
    let problems = match super::rules::document(&ar, &object).1 {
        Ok(mine) => beside(&mine, in_force),
        Err(problems) => problems,
    };
    if problems.is_empty() {
        return allowed;
    }
    allowed.deny(
        problems
            .iter()
            .map(crate::manifest::Error::in_object)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// What `mine` conflicts with among the other objects in force (this
/// object's own earlier version left out), exactly as `meshctl apply`
/// checks a file against the rules in force.
fn beside(mine: &[Located], in_force: &[Located]) -> Vec<crate::manifest::Error> {
    let own = |l: &Located| mine.iter().any(|m| m.file == l.file);
    let others: Vec<Located> = in_force.iter().filter(|l| !own(l)).cloned().collect();
    rules::beside(mine, &others)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(object: serde_json::Value, operation: &str) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "split.smi-spec.io", "version": "v1alpha4", "kind": "TrafficSplit"},
                "resource": {"group": "split.smi-spec.io", "version": "v1alpha4", "resource": "trafficsplits"},
                "name": "echo", "namespace": "default", "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": null,
                "dryRun": false
            }
        })
        .to_string()
        .into_bytes()
    }

    fn split(weights: [i64; 2]) -> serde_json::Value {
        json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
               "metadata": {"name": "echo", "namespace": "default", "uid": "u", "resourceVersion": "7"},
               "spec": {"service": "echo", "backends": [
                   {"service": "echo-v1", "weight": weights[0]}, {"service": "echo-v2", "weight": weights[1]}]}})
    }

    fn response(body: &[u8]) -> serde_json::Value {
        serde_json::to_value(answer(body, &[]).unwrap()).unwrap()["response"].clone()
    }

    #[test]
    fn a_valid_rule_is_allowed_and_the_uid_answered() {
        let r = response(&review(split([90, 10]), "CREATE"));
        assert_eq!(r["allowed"], true, "{r}");
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    }

    #[test]
    fn an_invalid_rule_is_denied_with_meshctl_apply_s_message() {
        let r = response(&review(split([0, 0]), "UPDATE"));
        assert_eq!(r["allowed"], false, "{r}");
        let msg = r["status"]["message"].as_str().unwrap();
        assert_eq!(
            msg,
            "TrafficSplit default/echo: spec.backends: every weight is 0, so no backend could receive traffic"
        );
    }

    #[test]
    fn a_second_split_for_a_root_in_force_is_denied_naming_the_first() {
        let mut other = split([50, 50]);
        other["metadata"]["name"] = json!("first");
        let ar = super::super::rules::resource(&super::super::rules::KINDS[0]);
        let first: DynamicObject = serde_json::from_value(other).unwrap();
        let in_force = super::super::rules::document(&ar, &first).1.unwrap();
        let body = review(split([90, 10]), "CREATE");
        let r =
            serde_json::to_value(answer(&body, &in_force).unwrap()).unwrap()["response"].clone();
        assert_eq!(r["allowed"], false, "{r}");
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("TrafficSplit default/echo: spec.service:")
                && msg.contains("TrafficSplit default/first"),
            "{msg}"
        );
        // Its own earlier version is no conflict: an update passes.
        let mine =
            super::super::rules::document(&ar, &serde_json::from_value(split([1, 1])).unwrap())
                .1
                .unwrap();
        let r = serde_json::to_value(answer(&body, &mine).unwrap()).unwrap()["response"].clone();
        assert_eq!(r["allowed"], true, "{r}");
    }

    #[test]
    fn deletes_pass_and_garbage_is_an_error_not_a_panic() {
        assert_eq!(
            response(&review(serde_json::Value::Null, "DELETE"))["allowed"],
            true
        );
        for bad in [&b""[..], b"{}", b"[]", b"{\"request\": 7}", b"\xff"] {
            assert!(
                answer(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
