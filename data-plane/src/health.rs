//! Probes the local app's health endpoint and publishes its readiness. An
//! app starts unready and becomes ready after `success_threshold` passing
//! probes, so an instance never joins the endpoint set before it can serve.

use crate::config::Health;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use tokio::sync::watch;

/// Starts probing; the receiver tracks readiness.
pub fn spawn(health: Health, app: SocketAddr) -> watch::Receiver<bool> {
    let Some(path) = health.path.clone() else {
        // No health check configured: ready while the sidecar runs.
        return watch::channel(true).1;
    };
    let (tx, rx) = watch::channel(false);
    let uri: http::Uri = format!("http://{app}{path}")
        .parse()
        .expect("validated path and address");
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(health.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut passes, mut fails) = (0u32, 0u32);
        loop {
            tick.tick().await;
            let ok = matches!(
                tokio::time::timeout(health.timeout, client.get(uri.clone())).await,
                Ok(Ok(resp)) if resp.status().is_success()
            );
            if ok {
                passes += 1;
                fails = 0;
            } else {
                fails += 1;
                passes = 0;
            }
            let ready = *tx.borrow();
            if !ready && passes >= health.success_threshold {
                tracing::info!(%uri, "app passes its health check: ready");
                tx.send_replace(true);
            } else if ready && fails >= health.failure_threshold {
                tracing::warn!(%uri, "app fails its health check: unready");
                tx.send_replace(false);
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
