//! Calling a release's hooks: a POST of the release as JSON (Flagger's
//! payload: name, namespace, phase, metadata, and ours: canary, stable,
//! weight), each attempt bounded by the hook's timeout, transport errors
//! and 5xx retried up to its retries; https through `https`. Says what happened in words status
//! can show.

use super::machine::Record;
use super::spec::{Hook, Webhook};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use std::time::Duration;

/// The client every hook call shares (pooled connections).
#[derive(Clone)]
pub struct Caller {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Caller {
    fn default() -> Self {
        Caller {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        }
    }
}

/// The body a hook receives.
pub fn payload(r: &Record, hook: &Webhook) -> serde_json::Value {
    serde_json::json!({
        "name": r.spec.service,
        "namespace": r.spec.namespace,
        "phase": r.phase.as_str(),
        "type": hook.hook.as_str(),
        "release": r.id,
        "canary": r.spec.canary,
        "stable": r.spec.stable,
        "canaryWeight": r.canary_weight,
        "metadata": hook.metadata,
    })
}

impl Caller {
    /// Calls `hook`: `Ok` with what it answered when that was 2xx, else
    /// why not ("rollout webhook load: 500 Internal Server Error after 3
    /// attempts").
    pub async fn call(&self, r: &Record, hook: &Webhook) -> Result<String, String> {
        let body = Bytes::from(payload(r, hook).to_string());
        let attempts = hook.retries + 1;
        let timeout = Duration::from_millis(hook.timeout_ms);
        let name = format!("{} webhook {}", hook.hook.as_str(), hook.name);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let req = hyper::Request::post(&hook.url)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| format!("{name}: {e}"))?;
            let sent = async {
                if req.uri().scheme_str() == Some("https") {
                    super::https::send(req, hook.ca_pem.as_deref()).await
                } else {
                    self.client.request(req).await.map_err(|e| e.to_string())
                }
            };
            match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    return Ok(format!("{name}: {}", resp.status()));
                }
                // A 4xx is the hook's answer (a confirm not given yet, a
                // rollback not wanted): asking again now changes nothing.
                Ok(Ok(resp)) if resp.status().is_client_error() => {
                    return Err(format!("{name}: {}", resp.status()));
                }
                Ok(Ok(resp)) => last = resp.status().to_string(),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("timed out after {} ms", hook.timeout_ms),
            }
            if attempt < attempts {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
        }
        Err(format!(
            "{name}: {last} after {attempts} attempt{}",
            if attempts == 1 { "" } else { "s" }
        ))
    }

    /// Calls every hook of `kind`; the first refusal, if any.
    pub async fn all(&self, r: &Record, kind: Hook) -> Result<Vec<String>, String> {
        let mut answers = Vec::new();
        for hook in r.spec.hooks(kind) {
            answers.push(self.call(r, hook).await?);
        }
        Ok(answers)
    }
}
