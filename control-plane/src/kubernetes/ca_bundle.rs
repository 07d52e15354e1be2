//! The caBundle of the admission webhooks' configurations (the
//! ValidatingWebhookConfiguration of rule objects and the
//! MutatingWebhookConfiguration of sidecar injection), kept equal to the
//! mesh's roots, so the API server trusts the certificate the webhook
//! listener presents (istiod keeps its webhooks' caBundle the same way)
//! and an install carries no certificate of its own.

use futures::TryStreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

/// Which of the two webhook configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ValidatingWebhookConfiguration.
    Validating,
    /// MutatingWebhookConfiguration.
    Mutating,
}

/// Keeps every webhook of the configuration `name` of `kind` carrying
/// `roots_pem` as its caBundle: watched, and patched whenever it differs
/// (created after mesh-control, or reset by a re-apply of the install). A
/// patch that races another writer fails on the resourceVersion and is
/// redone from the next event.
pub async fn keep(client: kube::Client, kind: Kind, name: String, roots_pem: String) {
    let ar = match kind {
        Kind::Validating => ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        Kind::Mutating => ApiResource::erase::<MutatingWebhookConfiguration>(&()),
    };
    let api = kube::Api::<DynamicObject>::all_with(client, &ar);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(
        watcher::watcher(api.clone(), config)
            .default_backoff()
            .applied_objects()
    );
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(roots_pem.as_bytes());
    let mut failing = false;
    loop {
        let object = match events.try_next().await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(configuration = %name, error = %e, "watching the webhook configuration; retrying");
                }
                continue;
            }
        };
        failing = false;
        let Some(webhooks) = rebundled(&object.data["webhooks"], &bundle) else {
            continue;
        };
        // A merge patch replaces the list whole; the resourceVersion makes
        // it apply only to the version just read.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": object.metadata.resource_version},
            "webhooks": webhooks,
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(configuration = %name, "webhook caBundle set to the mesh's roots")
            }
            Err(e) => {
                tracing::warn!(configuration = %name, error = %e, "setting the webhook caBundle")
            }
        }
    }
}

/// The webhooks with `bundle` (base64) as every caBundle, if any differs.
fn rebundled(webhooks: &Value, bundle: &str) -> Option<Value> {
    let list = webhooks.as_array().filter(|w| !w.is_empty())?;
    if list
        .iter()
        .all(|w| w["clientConfig"]["caBundle"].as_str() == Some(bundle))
    {
        return None;
    }
    let mut list = list.clone();
    for w in &mut list {
        w["clientConfig"]["caBundle"] = Value::String(bundle.to_string());
    }
    Some(Value::Array(list))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn only_a_differing_bundle_is_rewritten_and_nothing_else_changes() {
        let hooks = json!([{"name": "a.mesh.dev", "clientConfig": {"url": "https://x", "caBundle": "b2xk"}},
                           {"name": "b.mesh.dev", "clientConfig": {"url": "https://y"}}]);
        let out = super::rebundled(&hooks, "bmV3").unwrap();
        assert_eq!(
            out[0]["clientConfig"],
            json!({"url": "https://x", "caBundle": "bmV3"})
        );
        assert_eq!(out[1]["name"], "b.mesh.dev");
        assert_eq!(super::rebundled(&out, "bmV3"), None);
        assert_eq!(super::rebundled(&json!([]), "bmV3"), None);
    }
}
