//! The test API server's object store: objects as JSON keyed by resource,
//! namespace and name, one resourceVersion counter for all of them (as etcd
//! gives the real API server), a bounded history of change events that
//! watches replay from, and the compaction point before which a watch gets
//! 410 Gone.
//!
//! Kubernetes API concepts followed here
//! (https://kubernetes.io/docs/reference/using-api/api-concepts/):
//! "Resource versions" (opaque strings, one counter, compared only by the
//! server), "Efficient detection of changes" (ADDED / MODIFIED / DELETED),
//! "410 Gone responses" (a version older than the history kept).

use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events kept for watches to replay; older versions get 410 Gone.
const HISTORY: usize = 10_000;

/// `(resource, namespace, name)`; resource is `group/plural` (`/pods`).
pub type Key = (String, String, String);

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub kind: &'static str,
    pub resource: Arc<str>,
    pub namespace: String,
    pub object: Value,
    /// What a MODIFIED object was before.
    pub previous: Option<Value>,
}

/// What a write can fail with, as the API server says it.
#[derive(Debug)]
pub enum Refusal {
    NotFound,
    AlreadyExists,
    /// The update named a resourceVersion that is no longer current.
    Conflict(String),
    Invalid(String),
    /// A version older than the history kept.
    Gone(u64),
}

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    /// Versions up to and including this one are compacted away.
    compacted: u64,
    changes: broadcast::Sender<Change>,
    uid: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            changes: broadcast::channel(HISTORY).0,
            uid: 0,
        }
    }
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

impl Store {
    pub fn version(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Forgets every change so far: a watch from any earlier version gets
    /// 410 Gone and must relist (what etcd compaction does).
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// The changes after `since` for a watch to replay, or Gone.
    pub fn since(&self, since: u64) -> Result<Vec<Change>, Refusal> {
        if since < self.compacted {
            return Err(Refusal::Gone(since));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.rv > since)
            .cloned()
            .collect())
    }

    /// Objects of `resource` (in `namespace`, or all when empty), by key.
    pub fn list(&self, resource: &str, namespace: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| r == resource && (namespace.is_empty() || ns == namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    fn record(&mut self, kind: &'static str, key: &Key, object: Value, previous: Option<Value>) {
        let change = Change {
            rv: self.rv,
            kind,
            resource: key.0.as_str().into(),
            namespace: key.1.clone(),
            object,
            previous,
        };
        if self.history.len() == HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.compacted = old.rv;
        }
        self.history.push_back(change.clone());
        let _ = self.changes.send(change);
    }

    /// Creates an object: the server sets uid, creationTimestamp,
    /// generation and resourceVersion ("Object metadata",
    /// https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/).
    pub fn create(&mut self, key: Key, mut object: Value) -> Result<Value, Refusal> {
        if self.objects.contains_key(&key) {
            return Err(Refusal::AlreadyExists);
        }
        self.rv += 1;
        self.uid += 1;
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Refusal::Invalid("metadata: Required value".into()))?;
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012}", self.uid)),
        );
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if !key.1.is_empty() {
            meta.insert("namespace".into(), json!(key.1));
        }
        self.objects.insert(key.clone(), object.clone());
        self.record("ADDED", &key, object.clone(), None);
        Ok(object)
    }

    /// Replaces an object. A resourceVersion in the body must be the
    /// current one (optimistic concurrency: "Resource versions", 409
    /// Conflict otherwise). `status` says which part may change: the main
    /// resource ignores `.status`, the status subresource changes only it
    /// (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#status-subresource).
    pub fn update(
        &mut self,
        key: &Key,
        mut object: Value,
        status_subresource: bool,
        has_status: bool,
    ) -> Result<Value, Refusal> {
        let current = self.objects.get(key).ok_or(Refusal::NotFound)?.clone();
        if let Some(rv) = rv_of(&object)
            && Some(rv) != rv_of(&current)
        {
            return Err(Refusal::Conflict(format!(
                "the object has been modified; please apply your changes to the latest version and try again (resourceVersion {rv} is not {})",
                rv_of(&current).unwrap_or("")
            )));
        }
        if has_status {
            if status_subresource {
                let status = object.get("status").cloned();
                object = current.clone();
                match status {
                    Some(s) => object["status"] = s,
                    None => {
                        object.as_object_mut().map(|o| o.remove("status"));
                    }
                }
            } else if let Some(s) = current.get("status") {
                object["status"] = s.clone();
            } else if let Some(o) = object.as_object_mut() {
                o.remove("status");
            }
        }
        // Identity and server-set fields stay as they were.
        for f in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "generation",
        ] {
            match current.pointer(&format!("/metadata/{f}")) {
                Some(v) => object["metadata"][f] = v.clone(),
                None => {
                    object["metadata"].as_object_mut().map(|m| m.remove(f));
                }
            }
        }
        let changed = without_meta(&object) != without_meta(&current)
            || object.pointer("/metadata/labels") != current.pointer("/metadata/labels")
            || object.pointer("/metadata/annotations") != current.pointer("/metadata/annotations");
        if !changed {
            // A no-op write changes nothing, not even the version.
            return Ok(current);
        }
        // generation counts changes to the spec (everything but metadata
        // and status).
        if strip_status(without_meta(&object)) != strip_status(without_meta(&current)) {
            let g = current
                .pointer("/metadata/generation")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            object["metadata"]["generation"] = json!(g + 1);
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.record("MODIFIED", key, object.clone(), Some(current));
        Ok(object)
    }

    pub fn delete(&mut self, key: &Key) -> Result<Value, Refusal> {
        let mut object = self.objects.remove(key).ok_or(Refusal::NotFound)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record("DELETED", key, object.clone(), None);
        Ok(object)
    }
}

fn without_meta(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("metadata");
    }
    v
}

fn strip_status(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

/// RFC 3339 in UTC, seconds precision, as metav1.Time serialises.
pub fn now_rfc3339() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(format)
        .unwrap_or_default()
}
