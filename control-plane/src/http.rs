//! mesh-control's HTTP endpoints: `/live` and `/ready`. The control plane is
//! ready as soon as it serves gRPC, which `app::Bound::run` starts alongside.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Serves the endpoints until the process exits.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let (status, body) = match req.uri().path() {
                    "/live" | "/ready" => (StatusCode::OK, "ok\n"),
                    _ => (StatusCode::NOT_FOUND, "not found\n"),
                };
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .expect("static response"),
                )
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
