//! The writes of the test API server beyond a plain create or replace:
//! PATCH (JSON, merge, strategic merge, and server-side apply, which
//! creates what does not exist yet; "Patch and Apply",
//! https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply),
//! retried on a concurrent change as the API server retries, and the
//! checks every create's body and namespace pass.
// A refusal is the response itself, built once per failed request.
#![allow(clippy::result_large_err)]

use super::Shared;
use super::patch;
use super::resources::Resource;
use super::serve::{Body, full, reason_of, refusal, status};
use super::store::{Key, Refusal};
use super::webhooks::{self, Write};
use http::{Response, StatusCode};
use serde_json::{Value, json};

/// A patch: applied to the stored object, admitted, then stored only if
/// nothing changed the object meanwhile (the lock is not held while the
/// webhooks run); a concurrent change redoes it from the new version, as
/// the API server's patch retries on conflict.
pub(crate) async fn patch_object(
    shared: &Shared,
    write: &Write<'_>,
    key: &Key,
    how: &How<'_>,
    body: &[u8],
) -> Response<Body> {
    let (res, name) = (write.res, write.name);
    let on_status = write.subresource.is_some();
    let applying = how.content_type.starts_with("application/apply-patch+yaml");
    let config = if applying {
        match apply_config(res, name, body) {
            Ok(c) => Some(c),
            Err(r) => return r,
        }
    } else {
        None
    };
    let mut tries = 0;
    loop {
        let current = shared.store.lock().unwrap().get(key).cloned();
        let mut patched = match (&config, &current) {
            // "If the object does not exist, it is created" by an apply.
            (Some(config), _) => {
                match super::apply::apply(current.as_ref(), config, how.manager, how.force) {
                    Ok(o) => o,
                    Err(conflicts) => {
                        return full(
                            StatusCode::CONFLICT,
                            &super::apply::conflict_status(&conflicts),
                        );
                    }
                }
            }
            (None, None) => return refusal(Refusal::NotFound, res, name),
            (None, Some(current)) => match patch::apply(how.content_type, current, body) {
                Ok(mut p) => {
                    super::apply::record_update(current, &mut p, how.manager);
                    p
                }
                Err((code, m)) => return status(code, reason_of(code), &m),
            },
        };
        if let Err(r) = super::admit::admit(shared, res, name, &mut patched, how.strict) {
            return r;
        }
        let Some(current) = current else {
            let this = Write {
                operation: "CREATE",
                object: Some(&patched),
                ..*write
            };
            if let Err(r) = webhooks::validate(shared, &this).await {
                return r;
            }
            if how.dry_run {
                return full(StatusCode::CREATED, &patched);
            }
            let created = shared.store.lock().unwrap().create(key.clone(), patched);
            match created {
                Ok(o) => return full(StatusCode::CREATED, &o),
                Err(Refusal::AlreadyExists) if tries < 5 => {
                    tries += 1;
                    continue;
                }
                Err(r) => return refusal(r, res, name),
            }
        };
        if patched.pointer("/metadata/name") != current.pointer("/metadata/name") {
            return status(
                400,
                "BadRequest",
                "metadata.name may not be changed by a patch",
            );
        }
        let this = Write {
            object: Some(&patched),
            old: Some(&current),
            ..*write
        };
        if let Err(r) = webhooks::validate(shared, &this).await {
            return r;
        }
        if how.dry_run {
            return full(StatusCode::OK, &patched);
        }
        let stored = shared
            .store
            .lock()
            .unwrap()
            .update(key, patched, on_status, res.status);
        match stored {
            Ok(o) => return full(StatusCode::OK, &o),
            Err(Refusal::Conflict(_)) if tries < 5 => tries += 1,
            Err(r) => return refusal(r, res, name),
        }
    }
}

/// How a PATCH is to be applied.
pub(crate) struct How<'a> {
    pub(crate) content_type: &'a str,
    /// The field manager writing.
    pub(crate) manager: &'a str,
    /// Server-side apply's `force`.
    pub(crate) force: bool,
    /// dryRun=All: checked, not stored.
    pub(crate) dry_run: bool,
    pub(crate) strict: bool,
}

/// The body of a server-side apply: an object of the resource's kind
/// named as the URL names it. YAML is its media type; JSON, which is YAML,
/// is what clients send and what this server reads.
fn apply_config(res: &Resource, name: &str, body: &[u8]) -> Result<Value, Response<Body>> {
    let config: Value = serde_json::from_slice(body).map_err(|e| {
        status(
            400,
            "BadRequest",
            &format!("this test server reads apply bodies written as JSON: {e}"),
        )
    })?;
    if config.get("kind").and_then(Value::as_str) != Some(res.kind.as_str())
        || config.get("apiVersion").and_then(Value::as_str) != Some(res.api_version().as_str())
    {
        return Err(status(
            400,
            "BadRequest",
            &format!("the apply must be a {} of {}", res.kind, res.api_version()),
        ));
    }
    let mut config = config;
    match config["metadata"]["name"].as_str() {
        None => config["metadata"]["name"] = json!(name),
        Some(n) if n != name => {
            return Err(status(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            ));
        }
        Some(_) => {}
    }
    Ok(config)
}

/// A namespaced create in a namespace that does not exist is refused
/// (the NamespaceLifecycle admission plugin,
/// https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/#namespacelifecycle).
pub(crate) fn namespace_missing(
    shared: &Shared,
    res: &Resource,
    namespace: &str,
) -> Option<Response<Body>> {
    if !res.namespaced {
        return None;
    }
    let key = (
        "/namespaces".to_string(),
        String::new(),
        namespace.to_string(),
    );
    match shared.store.lock().unwrap().get(&key) {
        Some(_) => None,
        None => Some(status(
            404,
            "NotFound",
            &format!("namespaces {namespace:?} not found"),
        )),
    }
}

/// The body of a create or update: JSON of the resource's kind, its name
/// (and namespace, if given) agreeing with the path.
pub(crate) fn parse_object(
    body: &[u8],
    res: &Resource,
    namespace: &str,
    name: Option<&str>,
) -> Result<Value, Response<Body>> {
    let mut object: Value = serde_json::from_slice(body)
        .map_err(|e| status(400, "BadRequest", &format!("the body is not JSON: {e}")))?;
    if object.get("kind").and_then(Value::as_str) != Some(res.kind.as_str())
        || object.get("apiVersion").and_then(Value::as_str) != Some(res.api_version().as_str())
    {
        return Err(status(
            400,
            "BadRequest",
            &format!("the body must be a {} of {}", res.kind, res.api_version()),
        ));
    }
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| status(422, "Invalid", "metadata: Required value"))?;
    if meta.get("name").is_none()
        && let Some(prefix) = meta.get("generateName").and_then(Value::as_str)
    {
        // generateName: the server appends a random suffix
        // (https://kubernetes.io/docs/reference/using-api/api-concepts/#generated-values).
        let name = format!("{prefix}{:05x}", fastrand::u32(..0x100000));
        meta.insert("name".into(), json!(name));
    }
    let given = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if given.is_empty() {
        return Err(status(
            422,
            "Invalid",
            "metadata.name: Required value: name or generateName is required",
        ));
    }
    if let Some(n) = name
        && n != given
    {
        return Err(status(
            400,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        ));
    }
    if let Some(ns) = meta.get("namespace").and_then(Value::as_str)
        && !namespace.is_empty()
        && ns != namespace
    {
        return Err(status(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(object)
}
