//! mesh-control's HTTP endpoints: `/live`, `/ready` and `/metrics`. The control plane is
//! ready as soon as it serves gRPC, which `app::Bound::run` starts alongside
//! (with the Kubernetes registry: once that has listed the cluster), and
//! stops being ready when it starts to stop, so an orchestrator sends
//! nobody new.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the endpoints until the process exits; `/ready` answers 503 once
/// `stopping` turns true. A connection that says nothing for `idle` (or
/// takes longer than that over its request head) is closed.
pub async fn serve(
    listener: TcpListener,
    stopping: watch::Receiver<bool>,
    synced: watch::Receiver<bool>,
    idle: Duration,
    limit: crate::listen::Limit,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    loop {
        let stream = crate::listen::accept(&listener, "http").await;
        let Some(slot) = limit.admit() else {
            continue;
        };
        let (stopping, synced, metrics) = (stopping.clone(), synced.clone(), metrics.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if !crate::listen::first_bytes(&stream, idle).await {
                return;
            }
            let svc = service_fn(move |req: Request<Incoming>| {
                let stopping = *stopping.borrow();
                let synced = *synced.borrow();
                let resp = match req.uri().path() {
                    "/metrics" => Response::builder()
                        .header(
                            hyper::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(metrics.render()))),
                    path => {
                        let (status, body) = match path {
                            "/ready" if stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
                            "/ready" if !synced => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                "waiting for the first complete list of the Kubernetes registry and rules (are the CRDs of install/crds installed?)\n",
                            ),
                            "/live" | "/ready" => (StatusCode::OK, "ok\n"),
                            _ => (StatusCode::NOT_FOUND, "not found\n"),
                        };
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                    }
                };
                let resp = resp.expect("a response of our own");
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(idle);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
