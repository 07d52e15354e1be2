//! The sidecar's admin endpoints: `/live`, `/ready` (200 only once the first
//! config has been applied, i.e. the state has a version) and `/config_dump`
//! (the active config as JSON), `/identity` (the workload certificate's
//! SPIFFE ID and expiry).

use crate::state::State;
use crate::telemetry::exposition::Format;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Reports the workload identity for `/identity`.
pub type IdentityStatus = Arc<dyn Fn() -> crate::tls::identity::Status + Send + Sync>;

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ArcSwap<State>>,
    identity: Option<IdentityStatus>,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    idle: std::time::Duration,
) {
    let builder = Arc::new(crate::server::http_builder(idle));
    loop {
        let stream = crate::server::accept(&listener, "admin").await;
        let builder = builder.clone();
        let (state, identity, metrics) = (state.clone(), identity.clone(), metrics.clone());
        tokio::spawn(async move {
            if !crate::server::first_byte(&stream, idle).await {
                return;
            }
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let resp = respond(
                    req.uri().path(),
                    accept,
                    &state,
                    identity.as_ref(),
                    &metrics,
                );
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn respond(
    path: &str,
    accept: Option<&str>,
    state: &ArcSwap<State>,
    identity: Option<&IdentityStatus>,
    metrics: &crate::telemetry::metrics::Metrics,
) -> Response<Full<Bytes>> {
    // Ready once config has arrived and, with mTLS configured, a certificate too.
    let missing = if state.load().version.is_empty() {
        Some("no config from the control plane yet")
    } else if identity.is_some_and(|status| status().identity.is_none()) {
        Some("no workload certificate yet (see the log for the CA's answer)")
    } else {
        None
    };
    let (status, ctype, body) = match (path, missing) {
        ("/live", _) => (StatusCode::OK, "text/plain", Bytes::from_static(b"live\n")),
        ("/ready", None) => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
        ("/ready", Some(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from(format!("not ready: {why}\n")),
        ),
        ("/metrics", _) => {
            let format = Format::negotiate(accept);
            (
                StatusCode::OK,
                format.content_type(),
                Bytes::from(metrics.render_as(format)),
            )
        }
        ("/identity", _) => match identity {
            Some(status) => {
                let json = serde_json::to_vec_pretty(&status()).expect("status always serializes");
                (StatusCode::OK, "application/json", Bytes::from(json))
            }
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                Bytes::from_static(b"no workload identity: MESH_PROXY_IDENTITY_TOKEN is not set\n"),
            ),
        },
        ("/config_dump", _) => {
            let dump = state.load().dump();
            let json = serde_json::to_vec_pretty(&dump).expect("dump always serializes");
            (StatusCode::OK, "application/json", Bytes::from(json))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .body(Full::new(body))
        .expect("static parts are valid")
}
