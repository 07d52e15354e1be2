//! Admission webhooks of the test API server, as "Dynamic Admission
//! Control" says
//! (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/):
//! every write a webhook configuration's rules, namespaceSelector and
//! objectSelector match is POSTed as an AdmissionReview v1 over HTTPS to
//! the webhook's URL, trusting only its caBundle; a denial refuses the
//! write, and a webhook that cannot be called refuses it too unless its
//! failurePolicy is Ignore. Mutating webhooks run first, one after another
//! in name order, each seeing the object as the ones before patched it
//! (a JSONPatch, base64); validating webhooks then see the final object
//! ("Admission control phases": mutating, then validating).
// A refusal is the response itself, built once per failed request.
#![allow(clippy::result_large_err)]

use super::Shared;
use super::resources::Resource;
use super::serve::{Body, status};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Where the validating configurations are stored.
pub(crate) const CONFIGURATIONS: &str =
    "admissionregistration.k8s.io/validatingwebhookconfigurations";
/// Where the mutating configurations are stored.
pub(crate) const MUTATING: &str = "admissionregistration.k8s.io/mutatingwebhookconfigurations";

/// One write under admission.
pub(crate) struct Write<'a> {
    pub res: &'a Resource,
    pub namespace: &'a str,
    pub name: &'a str,
    pub subresource: Option<&'a str>,
    /// CREATE, UPDATE or DELETE.
    pub operation: &'static str,
    /// The object as it would be stored (none for DELETE).
    pub object: Option<&'a Value>,
    /// The stored object it replaces (UPDATE, DELETE).
    pub old: Option<&'a Value>,
}

/// Calls every webhook that matches `w`; the first denial or failure
/// refuses the write. The store's lock is not held while calling.
pub(crate) async fn validate(shared: &Shared, w: &Write<'_>) -> Result<(), Response> {
    let Some((hooks, namespace)) = hooks(shared, w, CONFIGURATIONS) else {
        return Ok(());
    };
    for hook in &hooks {
        if matches(hook, w, namespace.as_ref()) {
            call(hook, w).await?;
        }
    }
    Ok(())
}

/// Calls every mutating webhook that matches `w`, in order, applying each
/// one's JSONPatch to `object` before the next sees it; the first denial,
/// failure or unappliable patch refuses the write.
pub(crate) async fn mutate(
    shared: &Shared,
    w: &Write<'_>,
    object: &mut Value,
) -> Result<(), Response> {
    let Some((hooks, namespace)) = hooks(shared, w, MUTATING) else {
        return Ok(());
    };
    for hook in &hooks {
        let this = Write {
            object: Some(&*object),
            ..*w
        };
        if !matches(hook, &this, namespace.as_ref()) {
            continue;
        }
        let Some(response) = call(hook, &this).await? else {
            continue;
        };
        let Some(patch) = response["patch"].as_str() else {
            continue;
        };
        let name = hook["name"].as_str().unwrap_or("");
        let failed = |why: String| {
            status(
                500,
                "InternalError",
                &format!(
                    "Internal error occurred: admission webhook {name:?} returned a patch that {why}"
                ),
            )
        };
        // "Currently the only supported patchType is JSONPatch."
        if response["patchType"] != "JSONPatch" {
            return Err(failed("is not of patchType JSONPatch".into()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .map_err(|e| failed(format!("is not base64: {e}")))?;
        let ops: json_patch::Patch = serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("is not a JSON Patch: {e}")))?;
        json_patch::patch(object, &ops).map_err(|e| failed(format!("does not apply: {e}")))?;
    }
    Ok(())
}

/// The webhooks of the configurations stored under `key`, in the order
/// they are called (configurations by name), and the write's namespace;
/// none for writes of the configurations themselves ("Webhooks ... are not
/// called for admission requests for ValidatingWebhookConfiguration ...
/// objects", in "Matching requests").
fn hooks(shared: &Shared, w: &Write<'_>, key: &str) -> Option<(Vec<Value>, Option<Value>)> {
    if w.res.key() == CONFIGURATIONS || w.res.key() == MUTATING {
        return None;
    }
    let store = shared.store.lock().unwrap();
    let ns = store
        .get(&("/namespaces".into(), String::new(), w.namespace.into()))
        .cloned();
    let mut configs = store.list(key, "");
    configs.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    let hooks = configs
        .iter()
        .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
        .collect();
    Some((hooks, ns))
}

type Response = http::Response<Body>;

/// Rules, then the namespaceSelector, then the objectSelector ("Matching
/// requests": rules, namespaceSelector, objectSelector).
fn matches(hook: &Value, w: &Write<'_>, namespace: Option<&Value>) -> bool {
    let scope = if w.res.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    };
    let listed = |rule: &Value, field: &str, want: &str| {
        rule[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|v| v == "*" || v == want)
    };
    let by_rule = hook["rules"].as_array().into_iter().flatten().any(|rule| {
        let in_scope = match rule["scope"].as_str() {
            None | Some("*") => true,
            Some(s) => s == scope,
        };
        in_scope
            && listed(rule, "operations", w.operation)
            && listed(rule, "apiGroups", &w.res.group)
            && listed(rule, "apiVersions", &w.res.version)
            && rule["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|r| resource_matches(r, &w.res.plural, w.subresource))
    });
    if !by_rule {
        return false;
    }
    // "If the object itself is a namespace, the matching is performed on
    // object.metadata.labels. If the object is another cluster scoped
    // resource, it never skips the webhook."
    let ns_labels = if w.res.plural == "namespaces" && w.res.group.is_empty() {
        w.object.or(w.old).map(|o| o["metadata"]["labels"].clone())
    } else if w.res.namespaced {
        namespace.map(|n| n["metadata"]["labels"].clone())
    } else {
        None
    };
    if let Some(labels) = ns_labels
        && !selector_matches(&hook["namespaceSelector"], &labels)
    {
        return false;
    }
    // "objectSelector ... is evaluated against both the oldObject and
    // newObject ... and is considered to match if either object matches".
    [w.object, w.old]
        .into_iter()
        .flatten()
        .any(|o| selector_matches(&hook["objectSelector"], &o["metadata"]["labels"]))
}

/// A rule's resource: `pods` the resource alone, `pods/status` its
/// subresource, `*` every resource, `*/*` every resource and subresource,
/// `*/status` every status subresource.
fn resource_matches(rule: &str, plural: &str, sub: Option<&str>) -> bool {
    let (r, s) = rule.split_once('/').unwrap_or((rule, ""));
    let resource = r == "*" || r == plural;
    match sub {
        None => resource && s.is_empty(),
        Some(sub) => resource && (s == "*" || s == sub),
    }
}

/// A metav1.LabelSelector (matchLabels and matchExpressions: In, NotIn,
/// Exists, DoesNotExist) against `labels`; absent or empty matches all
/// ("Labels and Selectors", resources that support set-based requirements).
pub(crate) fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_label = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    let by_expression = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let mut values = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.any(|x| x == v)),
                Some("NotIn") => !get(key).is_some_and(|v| values.any(|x| x == v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        });
    by_label && by_expression
}

/// One webhook call and what its answer means for the write: its
/// response when it allowed the write, none when it could not be called
/// and its failurePolicy is Ignore.
async fn call(hook: &Value, w: &Write<'_>) -> Result<Option<Value>, Response> {
    let name = hook["name"].as_str().unwrap_or("");
    let uid = format!("{:032x}", fastrand::u128(..));
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": w.res.group, "version": w.res.version, "kind": w.res.kind},
            "resource": {"group": w.res.group, "version": w.res.version, "resource": w.res.plural},
            "subResource": w.subresource,
            "requestKind": {"group": w.res.group, "version": w.res.version, "kind": w.res.kind},
            "requestResource": {"group": w.res.group, "version": w.res.version, "resource": w.res.plural},
            "name": w.name,
            "namespace": (!w.namespace.is_empty()).then_some(w.namespace),
            "operation": w.operation,
            "userInfo": {"username": "test-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": w.object,
            "oldObject": w.old,
            "dryRun": false,
        },
    });
    let answer = match post(hook, &review).await {
        Ok(a) => a,
        // "failurePolicy defines how unrecognized errors and timeout
        // errors from the admission webhook are handled. Allowed values
        // are Ignore or Fail" (Fail the default).
        Err(_) if hook["failurePolicy"].as_str() == Some("Ignore") => return Ok(None),
        Err(e) => {
            return Err(status(
                500,
                "InternalError",
                &format!("Internal error occurred: failed calling webhook {name:?}: {e}"),
            ));
        }
    };
    let response = &answer["response"];
    if answer["apiVersion"] != "admission.k8s.io/v1"
        || answer["kind"] != "AdmissionReview"
        || response["uid"].as_str() != Some(uid.as_str())
        || !response["allowed"].is_boolean()
    {
        return Err(status(
            500,
            "InternalError",
            &format!(
                "Internal error occurred: failed calling webhook {name:?}: the response is not an AdmissionReview v1 for this request's uid"
            ),
        ));
    }
    if response["allowed"] == true {
        return Ok(Some(response.clone()));
    }
    // A denial keeps the webhook's status, its code at least 400 and its
    // message prefixed with the webhook's name ("Response": "the
    // webhook's status is returned to the client").
    let result = &response["status"];
    let code = result["code"]
        .as_u64()
        .filter(|c| (400..600).contains(c))
        .unwrap_or(400) as u16;
    let denied = format!("admission webhook {name:?} denied the request");
    let message = match (result["message"].as_str(), result["reason"].as_str()) {
        (Some(m), _) if !m.is_empty() => format!("{denied}: {m}"),
        (_, Some(r)) if !r.is_empty() => format!("{denied}: {r}"),
        _ => format!("{denied} without explanation"),
    };
    Err(status(
        code,
        result["reason"].as_str().unwrap_or(""),
        &message,
    ))
}

/// POSTs `review` to the webhook's URL with its timeout (`timeoutSeconds`,
/// default 10, sent as `?timeout=`), trusting its caBundle alone.
async fn post(hook: &Value, review: &Value) -> Result<Value, String> {
    let config = &hook["clientConfig"];
    let url = config["url"]
        .as_str()
        .ok_or("only clientConfig.url is reachable from this test server")?;
    let secs = hook["timeoutSeconds"].as_u64().unwrap_or(10);
    let failed = |e: &dyn std::fmt::Display| format!("failed to call webhook: Post {url:?}: {e}");
    let uri: http::Uri = format!("{url}?timeout={secs}s")
        .parse()
        .map_err(|e| failed(&e))?;
    let host = uri.host().ok_or_else(|| failed(&"no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    let pem = config["caBundle"]
        .as_str()
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .map_err(|e| failed(&format!("caBundle is not base64: {e}")))?
        .unwrap_or_default();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    let body = review.to_string();
    let exchange = async {
        if roots.is_empty() {
            return Err(failed(
                &"tls: failed to verify certificate: x509: certificate signed by unknown authority",
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server =
            rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| failed(&e))?;
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| failed(&e))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(server, tcp)
            .await
            .map_err(|e| failed(&format!("tls: {e}")))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| failed(&e))?;
        tokio::spawn(conn);
        let req = http::Request::post(&uri)
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| failed(&e))?;
        let resp = send.send_request(req).await.map_err(|e| failed(&e))?;
        let code = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(&e))?
            .to_bytes();
        if !code.is_success() {
            return Err(format!(
                "received invalid webhook response: the server answered {code}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| format!("received invalid webhook response: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(secs), exchange)
        .await
        .map_err(|_| failed(&"context deadline exceeded"))?
}

/// What the API server checks of a webhook configuration and the defaults
/// it sets (the ValidatingWebhook reference,
/// https://kubernetes.io/docs/reference/kubernetes-api/extend-resources/validating-webhook-configuration-v1/,
/// and the MutatingWebhook one, which adds `reinvocationPolicy`, default
/// Never): returns the problems, each `field: problem`.
pub(crate) fn check_configuration(object: &mut Value) -> Vec<String> {
    let mutating = object["kind"] == "MutatingWebhookConfiguration";
    let mut problems = Vec::new();
    let Some(hooks) = object.get_mut("webhooks").and_then(Value::as_array_mut) else {
        return problems;
    };
    for (i, hook) in hooks.iter_mut().enumerate() {
        let at = format!("webhooks[{i}]");
        let name = hook["name"].as_str().unwrap_or("").to_string();
        if name.split('.').filter(|s| !s.is_empty()).count() < 3 {
            problems.push(format!(
                "{at}.name: Invalid value: {name:?}: should be a domain with at least three segments separated by dots"
            ));
        }
        if !matches!(hook["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")) {
            problems.push(format!(
                "{at}.sideEffects: Required value: must specify one of None, NoneOnDryRun"
            ));
        }
        let versions = hook["admissionReviewVersions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !versions.iter().any(|v| v == "v1" || v == "v1beta1") {
            problems.push(format!(
                "{at}.admissionReviewVersions: Required value: must specify one of v1, v1beta1"
            ));
        }
        let config = &hook["clientConfig"];
        match (config["url"].as_str(), config.get("service").filter(|s| !s.is_null())) {
            (Some(url), None) if !url.starts_with("https://") => problems.push(format!(
                "{at}.clientConfig.url: Invalid value: {url:?}: 'https' is the only allowed URL scheme"
            )),
            (Some(_), None) | (None, Some(_)) => {}
            _ => problems.push(format!(
                "{at}.clientConfig: Required value: exactly one of url or service is required"
            )),
        }
        // Defaults the server stores.
        let defaults = [
            ("failurePolicy", json!("Fail")),
            ("matchPolicy", json!("Equivalent")),
            ("namespaceSelector", json!({})),
            ("objectSelector", json!({})),
            ("timeoutSeconds", json!(10)),
        ];
        if let Some(h) = hook.as_object_mut() {
            for (k, v) in defaults {
                h.entry(k).or_insert(v);
            }
            if mutating {
                h.entry("reinvocationPolicy").or_insert(json!("Never"));
            }
        }
        for rule in hook["rules"].as_array_mut().into_iter().flatten() {
            if let Some(r) = rule.as_object_mut() {
                r.entry("scope").or_insert(json!("*"));
            }
        }
    }
    problems
}
