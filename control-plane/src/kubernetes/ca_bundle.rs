//! The caBundle of the admission webhook's ValidatingWebhookConfiguration,
//! kept equal to the mesh's roots, so the API server trusts the
//! certificate the webhook listener presents (istiod keeps its webhooks'
//! caBundle the same way) and an install carries no certificate of its
//! own.

use futures::TryStreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};

/// Keeps every webhook of the ValidatingWebhookConfiguration `name`
/// carrying `roots_pem` as its caBundle: watched, and patched whenever it
/// differs (created after mesh-control, or reset by a re-apply of the
/// install). A patch that races another writer fails on the
/// resourceVersion and is redone from the next event.
pub async fn keep(client: kube::Client, name: String, roots_pem: String) {
    let api = kube::Api::<ValidatingWebhookConfiguration>::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(
        watcher::watcher(api.clone(), config)
            .default_backoff()
            .applied_objects()
    );
    let bundle = ByteString(roots_pem.into_bytes());
    let mut failing = false;
    loop {
        let vwc = match events.try_next().await {
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
        let Some(mut webhooks) = vwc.webhooks.filter(|w| !w.is_empty()) else {
            continue;
        };
        if webhooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle))
        {
            continue;
        }
        for w in &mut webhooks {
            w.client_config.ca_bundle = Some(bundle.clone());
        }
        // A merge patch replaces the list whole; the resourceVersion makes
        // it apply only to the version just read.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": vwc.metadata.resource_version},
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
