//! Releases as Kubernetes objects (`mesh.dev/v1alpha1` Release, named
//! after its service; install/crds/releases.yaml): the objects as a
//! reflector holds them, each one's spec validated by the code a Release
//! document goes through, and the status that is the release's persisted
//! state (the record under way or last run, and the ones before it),
//! written by the leader alone, through the status subresource. A command
//! is the annotation `mesh.dev/release-command` (what `kubectl annotate`
//! and `meshctl release pause` write); the leader carries it out and then
//! removes it.

use super::machine::Record;
use super::spec::Spec;
use crate::manifest;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `(group, version, kind, plural)` of the Release kind.
pub const KIND: (&str, &str, &str, &str) = ("mesh.dev", "v1alpha1", "Release", "releases");
/// The annotation a command is written in.
pub const COMMAND: &str = "mesh.dev/release-command";
/// The phase of an object whose spec (or start) was refused.
pub const REFUSED: &str = "Refused";
/// Finished releases an object's status keeps besides its record.
pub const HISTORY: usize = 20;

/// The Release API resource.
pub fn resource() -> ApiResource {
    let (group, version, kind, plural) = KIND;
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// The status of a Release object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The record's phase, or `Refused`.
    #[serde(default)]
    pub phase: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// 1-based, as status shows it.
    #[serde(default)]
    pub step: usize,
    /// The canary's weight asked for.
    #[serde(default)]
    pub canary_weight: u32,
    /// The generation the record (or the refusal) is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The release under way, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
    /// Finished releases before it, oldest first.
    #[serde(default)]
    pub history: Vec<Record>,
}

impl Status {
    /// The status of `record` with `history` before it.
    pub fn of(record: &Record, history: Vec<Record>) -> Status {
        Status {
            phase: record.phase.as_str().into(),
            reason: record.reason.clone(),
            step: record.step + 1,
            canary_weight: record.canary_weight,
            observed_generation: record.generation,
            record: Some(record.clone()),
            history,
        }
    }
}

/// One Release object as the controller reads it.
#[derive(Debug, Clone)]
pub struct Found {
    /// Namespace.
    pub namespace: String,
    /// Name (its service's).
    pub name: String,
    /// metadata.generation.
    pub generation: i64,
    /// metadata.resourceVersion.
    pub version: String,
    /// The spec, validated, or every problem with it.
    pub spec: Result<Spec, Vec<manifest::Error>>,
    /// The status as last written (default when none, or unreadable).
    pub status: Status,
    /// A command waiting to be carried out.
    pub command: Option<String>,
}

impl Found {
    /// `namespace/name`, the controller's key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The spec of `obj` as its file would read, validated.
pub fn spec_of(obj: &DynamicObject) -> Result<Spec, Vec<manifest::Error>> {
    let (namespace, name) = names(obj);
    let (group, version, kind, _) = KIND;
    let text = serde_json::json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": obj.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
    })
    .to_string();
    Spec::from_file(&format!("{kind} {namespace}/{name}"), &text)
}

fn names(obj: &DynamicObject) -> (String, String) {
    let namespace = obj.metadata.namespace.as_deref().unwrap_or("default");
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    (namespace.to_string(), name.to_string())
}

/// What the controller reads of `obj`.
pub fn found(obj: &DynamicObject) -> Found {
    let (namespace, name) = names(obj);
    let status = obj
        .data
        .get("status")
        .cloned()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default();
    let command = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMMAND))
        .cloned();
    Found {
        namespace,
        name,
        generation: obj.metadata.generation.unwrap_or(0),
        version: obj.metadata.resource_version.clone().unwrap_or_default(),
        spec: spec_of(obj),
        status,
        command,
    }
}

/// The Release objects of a cluster, and the writes the leader makes.
pub struct Objects {
    client: kube::Client,
    store: Store<DynamicObject>,
}

impl Objects {
    /// Watches every Release object.
    pub fn start(client: kube::Client) -> Objects {
        let ar = resource();
        let api = kube::Api::<DynamicObject>::all_with(client.clone(), &ar);
        let changed = Arc::new(tokio::sync::Notify::new());
        let store = crate::kubernetes::registry::reflect(api, ar, KIND.3, &changed);
        Objects { client, store }
    }

    /// The client, for the weights the leader patches.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Waits for the first list.
    pub async fn ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    /// Every object, as last seen.
    pub fn list(&self) -> Vec<Found> {
        self.store.state().iter().map(|o| found(o)).collect()
    }

    fn api(&self, namespace: &str) -> kube::Api<DynamicObject> {
        kube::Api::namespaced_with(self.client.clone(), namespace, &resource())
    }

    /// Replaces the status of `namespace/name` (JSON Patch `add` of the
    /// whole member, so nothing of a previous status lingers).
    pub async fn write(
        &self,
        namespace: &str,
        name: &str,
        status: &Status,
    ) -> Result<(), kube::Error> {
        let value = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/status", "value": value}
        ]))
        .map_err(kube::Error::SerdeError)?;
        self.api(namespace)
            .patch_status(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map(drop)
    }

    /// Removes the command annotation, once carried out.
    pub async fn clear(&self, namespace: &str, name: &str) -> Result<(), kube::Error> {
        let patch = serde_json::json!({"metadata": {"annotations": {COMMAND: null}}});
        self.api(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }
}

/// The Release object that runs `spec` (what `meshctl release start`
/// writes to a cluster); its spec reads back as `spec`.
pub fn manifest(spec: &Spec) -> serde_json::Value {
    let ms = |v: u64| format!("{v}ms");
    let mut compare = serde_json::Map::new();
    if let Some(gap) = spec.max_success_gap {
        compare.insert("maxSuccessRateGap".into(), gap.into());
    }
    if let Some(ratio) = spec.max_p99_ratio {
        compare.insert("maxP99Ratio".into(), ratio.into());
    }
    let mut analysis = serde_json::json!({
        "successRate": spec.success_rate,
        "p99": ms(spec.p99_ms.round() as u64),
        "minRequests": spec.min_requests,
        "failureThreshold": spec.failure_threshold,
        "progressDeadline": ms(spec.progress_deadline_ms),
    });
    if !compare.is_empty() {
        analysis["compare"] = compare.into();
    }
    let webhooks: Vec<serde_json::Value> = spec
        .webhooks
        .iter()
        .map(|w| {
            let mut hook = serde_json::json!({
                "name": w.name, "type": w.hook.as_str(), "url": w.url,
                "timeout": ms(w.timeout_ms), "retries": w.retries, "metadata": w.metadata,
            });
            if let Some(pem) = &w.ca_pem {
                use base64::Engine as _;
                hook["caBundle"] = base64::engine::general_purpose::STANDARD.encode(pem).into();
            }
            hook
        })
        .collect();
    let mut body = serde_json::json!({
        "service": spec.service,
        "canary": spec.canary,
        "steps": spec.steps,
        "interval": ms(spec.interval_ms),
        "analysis": analysis,
        "manualPromotion": spec.manual_promotion,
        "shield": spec.shield,
        "webhooks": webhooks,
    });
    if !spec.stable.is_empty() {
        body["stable"] = spec.stable.clone().into();
    }
    let (group, version, kind, _) = KIND;
    serde_json::json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": kind,
        "metadata": {"name": spec.service, "namespace": spec.namespace},
        "spec": body,
    })
}
