//! Reading collections: lists (in pages, with label and field selectors)
//! and watches ("Efficient detection of changes",
//! https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes).
// A refusal is the response itself, built once per failed request.
#![allow(clippy::result_large_err)]

use super::Shared;
use super::resources::{self, Resource, Selector};
use super::serve::{Body, Target, full, status};
use super::store::Change;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

fn selectors(query: &HashMap<String, String>) -> Result<(Selector, String), Response<Body>> {
    let labels = Selector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| status(400, "BadRequest", &e))?;
    Ok((
        labels,
        query.get("fieldSelector").cloned().unwrap_or_default(),
    ))
}

fn typed(res: &Resource, mut v: Value) -> Value {
    v["kind"] = json!(res.kind);
    v["apiVersion"] = json!(res.api_version());
    v
}

/// A list, in pages when `limit` asks ("Retrieving large results sets in
/// chunks"): the continue token carries the list's version and offset, and
/// expires (410) once that version is compacted.
pub(crate) fn list(
    shared: &Shared,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let store = shared.store.lock().unwrap();
    let (version, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match token
            .split_once(':')
            .and_then(|(v, o)| Some((v.parse().ok()?, o.parse().ok()?)))
        {
            Some((v, o)) => {
                if store.since(v).is_err() {
                    return status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.",
                    );
                }
                (v, o)
            }
            None => return status(400, "BadRequest", "invalid continue token"),
        },
        None => (store.version(), 0usize),
    };
    let mut items = Vec::new();
    for o in store.list(&target.res.key(), &target.namespace) {
        if !labels.matches(&o) {
            continue;
        }
        match resources::field_matches(&fields, &o) {
            Ok(true) => items.push(typed(&target.res, o)),
            Ok(false) => {}
            Err(e) => return status(400, "BadRequest", &e),
        }
    }
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut meta = json!({"resourceVersion": version.to_string()});
    let page: Vec<Value> = if limit > 0 && items.len() > offset + limit {
        meta["continue"] = json!(format!("{version}:{}", offset + limit));
        meta["remainingItemCount"] = json!(items.len() - offset - limit);
        items[offset..offset + limit].to_vec()
    } else {
        items.into_iter().skip(offset).collect()
    };
    full(
        StatusCode::OK,
        &json!({"kind": format!("{}List", target.res.kind), "apiVersion": target.res.api_version(),
                "metadata": meta, "items": page}),
    )
}

fn event(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

/// A watch ("Efficient detection of changes"): from a resourceVersion it
/// replays what followed it (410 Gone, as an ERROR event, if compacted);
/// from "" or "0" it starts with synthetic ADDED events of the current
/// state; `sendInitialEvents` ends those with a BOOKMARK annotated
/// `k8s.io/initial-events-end` ("Streaming lists"); BOOKMARK events
/// ("Watch bookmarks") come every `bookmark_every` when allowed. A label
/// selector turns an object that stops matching into DELETED and one that
/// starts matching into ADDED, as the API server's watch cache does.
pub(crate) fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let (labels, fields) = match selectors(query) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let res = target.res.clone();
    let namespace = target.namespace.clone();
    let rv = query.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let selected =
        move |o: &Value| labels.matches(o) && resources::field_matches(&fields, o).unwrap_or(false);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1024);
    let mut first: Vec<Bytes> = Vec::new();
    let (mut changes, mut seen) = {
        let store = shared.store.lock().unwrap();
        let changes = store.subscribe();
        let now = store.version();
        if rv.is_empty() || rv == "0" || initial_events {
            for o in store.list(&res.key(), &namespace) {
                if selected(&o) {
                    first.push(event("ADDED", &typed(&res, o)));
                }
            }
            if initial_events {
                first.push(event(
                    "BOOKMARK",
                    &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {
                        "resourceVersion": now.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}}}),
                ));
            }
            (changes, now)
        } else {
            let since: u64 = rv.parse().unwrap_or(0);
            match store.since(since) {
                Ok(replay) => {
                    for c in &replay {
                        if let Some(e) = as_event(c, &res, &namespace, &selected) {
                            first.push(e);
                        }
                    }
                    (changes, now.max(since))
                }
                Err(_) => {
                    first.push(event(
                        "ERROR",
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": format!("too old resource version: {since} ({now})"),
                                "reason": "Expired", "code": 410}),
                    ));
                    let (tx2, rx2) = tokio::sync::mpsc::channel(1);
                    drop(tx2);
                    return streaming(first, rx2);
                }
            }
        }
    };
    let mut drops = shared.drops.subscribe();
    drops.mark_unchanged();
    let every = shared.bookmark_every;
    let key = res.key();
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let frame = tokio::select! {
                c = changes.recv() => match c {
                    Ok(c) => {
                        if c.rv <= seen {
                            continue;
                        }
                        seen = c.rv;
                        if *c.resource != *key {
                            continue;
                        }
                        match as_event(&c, &res, &namespace, &selected) {
                            Some(e) => Ok(Frame::data(e)),
                            None => continue,
                        }
                    }
                    // Too slow a reader: the server closes its watch.
                    Err(_) => Err(std::io::Error::other("watch fell behind")),
                },
                _ = tick.tick(), if bookmarks => Ok(Frame::data(event("BOOKMARK", &json!({
                    "kind": res.kind, "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": seen.to_string()}})))),
                _ = drops.changed() => Err(std::io::Error::other("watch dropped by the test")),
                _ = sleep => break,
                _ = tx.closed() => break,
            };
            let end = frame.is_err();
            if tx.send(frame).await.is_err() || end {
                break;
            }
        }
    });
    streaming(first, rx)
}

/// One change as this watcher sees it, or None if it is not selected.
fn as_event(
    c: &Change,
    res: &Resource,
    namespace: &str,
    selected: &dyn Fn(&Value) -> bool,
) -> Option<Bytes> {
    if *c.resource != *res.key() || (!namespace.is_empty() && c.namespace != namespace) {
        return None;
    }
    let now = selected(&c.object);
    let before = c.previous.as_ref().map(selected);
    let kind = match (c.kind, before, now) {
        ("MODIFIED", Some(false), true) => "ADDED",
        ("MODIFIED", Some(true), false) => "DELETED",
        (_, _, false) => return None,
        (k, _, true) => k,
    };
    Some(event(kind, &typed(res, c.object.clone())))
}

fn streaming(
    first: Vec<Bytes>,
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> Response<Body> {
    let head = futures::stream::iter(first.into_iter().map(|b| Ok(Frame::data(b))));
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
    use futures::StreamExt;
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(head.chain(rest))))
        .unwrap()
}
