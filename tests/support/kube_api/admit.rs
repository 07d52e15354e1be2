//! What the test API server checks and does beside storing: TokenReview,
//! and admission of a write (a custom resource against its CRD's schema;
//! a CRD's name, conditions and the resources it starts serving; a
//! webhook configuration's fields and defaults).
// A refusal is the response itself, built once per failed request.
#![allow(clippy::result_large_err)]

use super::Shared;
use super::resources::{self, Resource};
use super::schema;
use super::serve::{Body, full, status};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

/// TokenReview: created, answered, never stored.
pub(crate) async fn token_review(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Ok(body) = req.into_body().collect().await else {
        return status(400, "BadRequest", "unreadable body");
    };
    let mut review: Value = match serde_json::from_slice(&body.to_bytes()) {
        Ok(v) => v,
        Err(e) => return status(400, "BadRequest", &format!("the body is not JSON: {e}")),
    };
    if review.get("kind").and_then(Value::as_str) != Some("TokenReview") {
        return status(
            400,
            "BadRequest",
            "the body must be a TokenReview of authentication.k8s.io/v1",
        );
    }
    let store = shared.store.lock().unwrap();
    let exists = |ns: &str, sa: &str| {
        store
            .get(&("/serviceaccounts".into(), ns.into(), sa.into()))
            .is_some()
    };
    review["status"] = shared.signer.review(&review, exists);
    full(StatusCode::CREATED, &review)
}

/// SelfSubjectAccessReview: may the caller do this? ("Checking API
/// access", https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access).
/// The one token this server knows is its admin's, allowed everything
/// but the resources a test has denied. Created, answered, never stored.
pub(crate) async fn access_review(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    // Protobuf, which kubectl sends for built-in kinds, is not read here:
    // refused as an API server refuses a representation it does not serve
    // ("Alternate representations of resources").
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return status(
            415,
            "UnsupportedMediaType",
            &format!("{ct}: this test server reads JSON only"),
        );
    }
    let Ok(body) = req.into_body().collect().await else {
        return status(400, "BadRequest", "unreadable body");
    };
    let mut review: Value = match serde_json::from_slice(&body.to_bytes()) {
        Ok(v) => v,
        Err(e) => return status(400, "BadRequest", &format!("the body is not JSON: {e}")),
    };
    let attrs = &review["spec"]["resourceAttributes"];
    if review.get("kind").and_then(Value::as_str) != Some("SelfSubjectAccessReview")
        || !attrs.is_object()
    {
        return status(
            400,
            "BadRequest",
            "the body must be a SelfSubjectAccessReview of authorization.k8s.io/v1 with spec.resourceAttributes",
        );
    }
    let resource = attrs["resource"].as_str().unwrap_or("").to_string();
    let denied = shared.denied.lock().unwrap().contains(&resource);
    review["status"] = if denied {
        json!({"allowed": false, "reason": format!("the test cluster denies {resource} to this user")})
    } else {
        json!({"allowed": true, "reason": "the test cluster's admin may do anything"})
    };
    full(StatusCode::CREATED, &review)
}

/// What the API server checks of a write before storing it: a custom
/// resource against its CRD's schema; a CRD's name and its initial
/// conditions (Established and NamesAccepted: this server serves it at
/// once).
pub(crate) fn admit(
    shared: &Shared,
    res: &Resource,
    name: &str,
    object: &mut Value,
    strict: bool,
) -> Result<(), Response<Body>> {
    if let Some(s) = &res.schema {
        let problems = schema::check(s, object, strict);
        if !problems.is_empty() {
            let all = if problems.len() == 1 {
                problems[0].clone()
            } else {
                format!("[{}]", problems.join(", "))
            };
            return Err(status(
                422,
                "Invalid",
                &format!("{}.{} {name:?} is invalid: {all}", res.kind, res.group),
            ));
        }
    }
    if res.key() == super::webhooks::CONFIGURATIONS || res.key() == super::webhooks::MUTATING {
        let problems = super::webhooks::check_configuration(object);
        if !problems.is_empty() {
            return Err(status(
                422,
                "Invalid",
                &format!(
                    "{}.admissionregistration.k8s.io {name:?} is invalid: [{}]",
                    res.kind,
                    problems.join(", ")
                ),
            ));
        }
    }
    // "The Kubernetes control plane sets an immutable label
    // kubernetes.io/metadata.name on all namespaces", its value the name
    // ("Automatic labelling", Namespaces).
    if res.plural == "namespaces" && res.group.is_empty() {
        object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    }
    if res.plural == "customresourcedefinitions" {
        let spec = &object["spec"];
        let want = format!(
            "{}.{}",
            spec["names"]["plural"].as_str().unwrap_or(""),
            spec["group"].as_str().unwrap_or("")
        );
        if want != name {
            return Err(status(
                422,
                "Invalid",
                &format!(
                    "CustomResourceDefinition.apiextensions.k8s.io {name:?} is invalid: metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
                ),
            ));
        }
        let now = super::store::now_rfc3339();
        let cond = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
        object["status"] = json!({
            "conditions": [cond("NamesAccepted", "NoConflicts"), cond("Established", "InitialNamesAccepted")],
            "acceptedNames": spec["names"].clone(),
            "storedVersions": spec["versions"].as_array().into_iter().flatten()
                .filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>(),
        });
    }
    let _ = shared;
    Ok(())
}

/// A CRD created starts its resources being served; one deleted stops
/// them.
pub(crate) fn served(shared: &Shared, res: &Resource, crd: &Value, created: bool) {
    if res.plural != "customresourcedefinitions" {
        return;
    }
    let mut all = shared.resources.lock().unwrap();
    let group = crd["spec"]["group"].as_str().unwrap_or("").to_string();
    let plural = crd["spec"]["names"]["plural"]
        .as_str()
        .unwrap_or("")
        .to_string();
    all.retain(|r| !(r.group == group && r.plural == plural));
    if created {
        all.extend(resources::from_crd(crd));
    }
}
