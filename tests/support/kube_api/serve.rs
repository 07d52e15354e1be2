//! HTTP handling of the test API server: authentication, the paths of
//! "API concepts" (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-uris),
//! the verbs on collections and objects, and watches. Every failure is a
//! metav1.Status, as the API server answers
//! (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-deletion
//! and "Response status kind").

// A refusal is the response itself, built once per failed request.
#![allow(clippy::result_large_err)]

use super::Shared;
use super::resources::{self, Resource};
use super::store::{Key, Refusal};
use super::webhooks::{self, Write};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::net::TcpListener;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) async fn accept(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    // Connections live in this set: aborting the accept task (a restart)
    // drops it and cuts every one of them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (tls, shared) = (tls.clone(), shared.clone());
        conns.spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub(crate) fn full(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(v.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// A metav1.Status failure.
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

pub(crate) fn refusal(r: Refusal, res: &Resource, name: &str) -> Response<Body> {
    let what = format!("{} {name:?}", res.plural);
    match r {
        Refusal::NotFound => status(404, "NotFound", &format!("{what} not found")),
        Refusal::AlreadyExists => status(409, "AlreadyExists", &format!("{what} already exists")),
        Refusal::Conflict(m) => status(
            409,
            "Conflict",
            &format!("Operation cannot be fulfilled on {what}: {m}"),
        ),
        Refusal::Invalid(m) => status(
            422,
            "Invalid",
            &format!("{} {name:?} is invalid: {m}", res.kind),
        ),
        Refusal::Gone(v) => status(410, "Expired", &format!("too old resource version: {v}")),
    }
}

/// Where a request points.
pub(crate) struct Target {
    pub(crate) res: Resource,
    pub(crate) namespace: String,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<String>,
}

fn route(all: &[Resource], path: &str) -> Result<Option<Target>, Response<Body>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Ok(None),
    };
    let not_found = || {
        status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let find = |plural: &str| resources::find(all, group, version, plural).ok_or_else(not_found);
    let owned = |s: &&str| s.to_string();
    let target = match rest {
        [] => return Ok(None),
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && tail.len() <= 2 => {
            let res = find(plural)?;
            if !res.namespaced {
                return Err(not_found());
            }
            Target {
                res,
                namespace: ns.to_string(),
                name: tail.first().map(owned),
                subresource: tail.get(1).map(owned),
            }
        }
        [plural, tail @ ..] if tail.len() <= 2 => {
            let res = find(plural)?;
            if res.namespaced && !tail.is_empty() {
                return Err(not_found());
            }
            Target {
                res,
                namespace: String::new(),
                name: tail.first().map(owned),
                subresource: tail.get(1).map(owned),
            }
        }
        _ => return Err(not_found()),
    };
    if target
        .subresource
        .as_deref()
        .is_some_and(|s| s != "status" || !target.res.status)
    {
        return Err(not_found());
    }
    Ok(Some(target))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    shared
        .seen
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method(), req.uri().path()));
    // Bearer tokens ("Authenticating", https://kubernetes.io/docs/reference/access-authn-authz/authentication/#putting-a-bearer-token-in-a-request).
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(shared.token.as_str());
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized");
    }
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/version") => {
            return full(
                StatusCode::OK,
                &json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0", "platform": "linux/amd64"}),
            );
        }
        (&Method::GET, "/api") => {
            return full(
                StatusCode::OK,
                &resources::core_versions(&shared.addr.to_string()),
            );
        }
        (&Method::GET, "/apis") => {
            return full(
                StatusCode::OK,
                &resources::groups(&shared.resources.lock().unwrap()),
            );
        }
        (&Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
            return super::admit::token_review(&shared, req).await;
        }
        (&Method::POST, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
            return super::admit::access_review(&shared, req).await;
        }
        _ => {}
    }
    let routed = route(&shared.resources.lock().unwrap(), &path);
    let target = match routed {
        Ok(Some(t)) => t,
        Ok(None) => {
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            let all = shared.resources.lock().unwrap().clone();
            let list = match segs.as_slice() {
                ["api", v] => resources::resource_list(&all, "", v),
                ["apis", g, v] => resources::resource_list(&all, g, v),
                _ => None,
            };
            return match list {
                Some(l) => full(StatusCode::OK, &l),
                None => status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            };
        }
        Err(resp) => return resp,
    };
    let method = req.method().clone();
    // Who writes, for field ownership: the fieldManager parameter, else
    // the user agent's name ("Field management").
    let manager = query.get("fieldManager").cloned().unwrap_or_else(|| {
        let agent = req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown");
        agent.split('/').next().unwrap_or(agent).to_string()
    });
    if method != Method::GET {
        shared
            .writes
            .lock()
            .unwrap()
            .push((format!("{method} {path}"), manager.clone()));
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(400, "BadRequest", "unreadable body"),
    };
    let res = &target.res;
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    // dryRun=All: every check and webhook runs, nothing is stored
    // ("Dry-run", https://kubernetes.io/docs/reference/using-api/api-concepts/#dry-run).
    let dry_run = query.get("dryRun").is_some_and(|v| v == "All");
    match (&method, &target.name) {
        (&Method::GET, None) => {
            let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            if watching {
                super::read::watch(&shared, &target, &query)
            } else {
                super::read::list(&shared, &target, &query)
            }
        }
        (&Method::POST, None) => {
            let mut object = match super::writes::parse_object(&body, res, &target.namespace, None)
            {
                Ok(o) => o,
                Err(r) => return r,
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if let Some(r) = super::writes::namespace_missing(&shared, res, &target.namespace) {
                return r;
            }
            let write = Write {
                res,
                namespace: &target.namespace,
                name: &name,
                subresource: None,
                operation: "CREATE",
                object: None,
                old: None,
            };
            if let Err(r) = webhooks::mutate(&shared, &write, &mut object).await {
                return r;
            }
            if let Err(r) = super::admit::admit(&shared, res, &name, &mut object, strict) {
                return r;
            }
            let write = Write {
                object: Some(&object),
                ..write
            };
            if let Err(r) = webhooks::validate(&shared, &write).await {
                return r;
            }
            let key = key(res, &target.namespace, &name);
            if dry_run {
                let exists = shared.store.lock().unwrap().get(&key).is_some();
                return if exists {
                    refusal(Refusal::AlreadyExists, res, &name)
                } else {
                    full(StatusCode::CREATED, &object)
                };
            }
            let created = shared.store.lock().unwrap().create(key, object);
            match created {
                Ok(o) => {
                    super::admit::served(&shared, res, &o, true);
                    full(StatusCode::CREATED, &o)
                }
                Err(r) => refusal(r, res, &name),
            }
        }
        (_, Some(name)) => {
            let key = key(res, &target.namespace, name);
            let on_status = target.subresource.is_some();
            match method {
                Method::GET => match shared.store.lock().unwrap().get(&key) {
                    Some(o) => full(StatusCode::OK, o),
                    None => refusal(Refusal::NotFound, res, name),
                },
                Method::PUT => {
                    let mut object = match super::writes::parse_object(
                        &body,
                        res,
                        &target.namespace,
                        Some(name),
                    ) {
                        Ok(o) => o,
                        Err(r) => return r,
                    };
                    if let Err(r) = super::admit::admit(&shared, res, name, &mut object, strict) {
                        return r;
                    }
                    let current = shared.store.lock().unwrap().get(&key).cloned();
                    let Some(current) = current else {
                        return refusal(Refusal::NotFound, res, name);
                    };
                    let write = Write {
                        res,
                        namespace: &target.namespace,
                        name,
                        subresource: target.subresource.as_deref(),
                        operation: "UPDATE",
                        object: Some(&object),
                        old: Some(&current),
                    };
                    if let Err(r) = webhooks::validate(&shared, &write).await {
                        return r;
                    }
                    super::apply::record_update(&current, &mut object, &manager);
                    if dry_run {
                        return full(StatusCode::OK, &object);
                    }
                    let mut store = shared.store.lock().unwrap();
                    match store.update(&key, object, on_status, res.status) {
                        Ok(o) => full(StatusCode::OK, &o),
                        Err(r) => refusal(r, res, name),
                    }
                }
                Method::PATCH => {
                    let write = Write {
                        res,
                        namespace: &target.namespace,
                        name,
                        subresource: target.subresource.as_deref(),
                        operation: "UPDATE",
                        object: None,
                        old: None,
                    };
                    if content_type.starts_with("application/apply-patch+yaml")
                        && !query.contains_key("fieldManager")
                    {
                        return status(
                            400,
                            "BadRequest",
                            "PATCH, application/apply-patch+yaml: fieldManager is required for apply requests",
                        );
                    }
                    let how = super::writes::How {
                        content_type: &content_type,
                        manager: &manager,
                        force: query.get("force").is_some_and(|f| f == "true"),
                        dry_run,
                        strict,
                    };
                    super::writes::patch_object(&shared, &write, &key, &how, &body).await
                }
                Method::DELETE if !on_status => {
                    let current = shared.store.lock().unwrap().get(&key).cloned();
                    let Some(current) = current else {
                        return refusal(Refusal::NotFound, res, name);
                    };
                    let write = Write {
                        res,
                        namespace: &target.namespace,
                        name,
                        subresource: None,
                        operation: "DELETE",
                        object: None,
                        old: Some(&current),
                    };
                    if let Err(r) = webhooks::validate(&shared, &write).await {
                        return r;
                    }
                    if dry_run {
                        return full(StatusCode::OK, &current);
                    }
                    let deleted = shared.store.lock().unwrap().delete(&key);
                    match deleted {
                        Ok(o) => {
                            super::admit::served(&shared, res, &o, false);
                            full(StatusCode::OK, &o)
                        }
                        Err(r) => refusal(r, res, name),
                    }
                }
                _ => status(
                    405,
                    "MethodNotAllowed",
                    &format!("{method} is not supported here"),
                ),
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            &format!("{method} is not supported on a collection"),
        ),
    }
}

pub(crate) fn reason_of(code: u16) -> &'static str {
    match code {
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        _ => "BadRequest",
    }
}

pub(crate) fn key(res: &Resource, namespace: &str, name: &str) -> Key {
    (res.key(), namespace.to_string(), name.to_string())
}

/// `a=b&c=d%20e` into pairs, percent-decoded.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
