//! Proxy error types and the ONE table that turns them into HTTP responses
//! (or gRPC trailers-only responses for gRPC requests). Every error response
//! carries `mesh-proxy-error` so it is never mistaken for the app's own.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// Body of every response the proxy returns.
pub type Body = crate::body::ResBody;

/// Header naming the proxy error behind a synthesized response.
pub const ERROR_HEADER: &str = "mesh-proxy-error";

/// Why the proxy could not forward a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No authority, or one the request gives two ways.
    #[error(transparent)]
    BadAuthority(#[from] crate::http::BadAuthority),
    /// The client's own request body failed: the client's error, not the
    /// upstream's, and never held against an endpoint.
    #[error("the request body from the client failed: {0}")]
    ClientBody(String),
    /// Every endpoint of the backend lacks a verified identity, and this
    /// mTLS sidecar may not reach it in plaintext.
    #[error(
        "no endpoint of {cluster} proves an identity: {refused} without one not reached in plaintext (TrafficPolicy tls.mode: permissive would allow it)"
    )]
    PlaintextRefused {
        /// Backend.
        cluster: String,
        /// Endpoints left out.
        refused: usize,
    },
    /// This sidecar has no workload certificate yet, so it cannot reach an
    /// endpoint that requires mTLS (and never downgrades to plaintext).
    #[error("this sidecar has no workload certificate yet: {0} is reached only over mTLS")]
    NoCertificate(String),
    /// The authority names no service in the mesh.
    #[error("no service {0:?} in the mesh")]
    UnknownService(String),
    /// The sidecar holds no config for the name, and the control plane
    /// sent none within the wait.
    #[error("no config for {name:?} arrived from the control plane within {waited:?}")]
    DiscoveryTimeout {
        /// What the request named.
        name: String,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// No route of the service matches the request.
    #[error("no route of service {0} matches the request")]
    NoRoute(String),
    /// No backend of the route has a ready endpoint.
    #[error("service {0} has no ready endpoints")]
    NoEndpoints(String),
    /// An authorization policy does not allow the caller.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Outlier detection has ejected every endpoint of the backend.
    #[error("every endpoint of {0} is ejected after consecutive failures")]
    AllEjected(String),
    /// The backend's concurrency limit is reached.
    #[error("{cluster} is at its limit of {limit} concurrent requests")]
    Overloaded {
        /// Backend.
        cluster: String,
        /// The limit.
        limit: u32,
    },
    /// The endpoint's backend has its limit of connection attempts pending.
    #[error("{addr}: {limit} connection attempts already pending")]
    PendingLimit {
        /// Endpoint.
        addr: String,
        /// The limit.
        limit: u32,
    },
    /// The route's timeout (or the last attempt's) expired.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    /// Fault injection aborted the request.
    #[error("fault injected by route {route}")]
    FaultAbort {
        /// Route name.
        route: String,
        /// Status to answer with.
        status: StatusCode,
    },
    /// No config has arrived from the control plane yet.
    #[error("no config received from the control plane yet")]
    NotReady,
    /// Connecting to or talking with the upstream failed.
    #[error("upstream {addr}: {source}")]
    Upstream {
        /// Upstream address.
        addr: String,
        /// Whether no connection was made (retry policies and ejection
        /// treat a refused connect apart from a broken exchange).
        connect: bool,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// HTTP status and gRPC code for each error.
pub fn codes(e: &Error) -> (StatusCode, u32) {
    match e {
        Error::BadAuthority(_) | Error::ClientBody(_) => (StatusCode::BAD_REQUEST, 3),
        Error::UnknownService(_) => (StatusCode::NOT_FOUND, 5),
        Error::NoRoute(_) => (StatusCode::NOT_FOUND, 12),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, 7),
        Error::NoEndpoints(_)
        | Error::NotReady
        | Error::DiscoveryTimeout { .. }
        | Error::PlaintextRefused { .. }
        | Error::NoCertificate(_) => (StatusCode::SERVICE_UNAVAILABLE, 14),
        Error::AllEjected(_) | Error::Overloaded { .. } | Error::PendingLimit { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, 14)
        }
        Error::Upstream { .. } => (StatusCode::BAD_GATEWAY, 14),
        Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, 4),
        Error::FaultAbort { status, .. } => (*status, grpc_code_for(*status)),
    }
}

/// The gRPC code gRPC's HTTP mapping gives a status (grpc/doc/http-grpc-status-mapping.md).
fn grpc_code_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// The response for an error.
pub fn respond(e: &Error, grpc: bool) -> Response<Body> {
    let (status, grpc_code) = codes(e);
    let message = e.to_string();
    let header =
        HeaderValue::from_str(&message).unwrap_or_else(|_| HeaderValue::from_static("proxy error"));
    let mut resp = if grpc {
        // Trailers-only gRPC response: HTTP 200 with the status in headers.
        let mut r = Response::new(Body::full(Bytes::new()));
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(grpc_code));
        h.insert("grpc-message", header.clone());
        r
    } else {
        let mut r = Response::new(Body::full(Bytes::from(message + "\n")));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        r
    };
    resp.headers_mut().insert(ERROR_HEADER, header);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An `Upstream` error as the pool really produces one: a connect
    /// refused by a port nothing listens on.
    async fn upstream_error() -> Error {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        let source = client
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap_err();
        Error::Upstream {
            addr: addr.to_string(),
            connect: source.is_connect(),
            source: source.into(),
        }
    }

    /// Every row of the table: the HTTP status, the gRPC code, and both
    /// response shapes carrying the message in `mesh-proxy-error`.
    #[tokio::test]
    async fn table() {
        let abort = |s: u16| Error::FaultAbort {
            route: "r".into(),
            status: StatusCode::from_u16(s).unwrap(),
        };
        let rows: Vec<(Error, u16, u32)> = vec![
            (
                Error::BadAuthority(crate::http::BadAuthority::Missing),
                400,
                3,
            ),
            (Error::ClientBody("cut short".into()), 400, 3),
            (Error::NoCertificate("127.0.0.1:1".into()), 503, 14),
            (Error::UnknownService("x".into()), 404, 5),
            (Error::NoRoute("echo.default".into()), 404, 12),
            (Error::NoEndpoints("echo.default".into()), 503, 14),
            (
                Error::PlaintextRefused {
                    cluster: "echo.default".into(),
                    refused: 1,
                },
                503,
                14,
            ),
            (Error::Forbidden("policy p".into()), 403, 7),
            (Error::AllEjected("echo-v1.default".into()), 503, 14),
            (
                Error::Overloaded {
                    cluster: "echo-v1.default".into(),
                    limit: 10,
                },
                503,
                14,
            ),
            (
                Error::PendingLimit {
                    addr: "127.0.0.1:1".into(),
                    limit: 2,
                },
                503,
                14,
            ),
            (Error::Timeout(Duration::from_secs(1)), 504, 4),
            (Error::NotReady, 503, 14),
            (
                Error::DiscoveryTimeout {
                    name: "echo".into(),
                    waited: std::time::Duration::from_secs(1),
                },
                503,
                14,
            ),
            (upstream_error().await, 502, 14),
            // A fault's own status, and gRPC's HTTP mapping for it.
            (abort(503), 503, 14),
            (abort(400), 400, 13),
            (abort(401), 401, 16),
            (abort(403), 403, 7),
            (abort(404), 404, 12),
            (abort(429), 429, 14),
            (abort(502), 502, 14),
            (abort(504), 504, 14),
            (abort(418), 418, 2),
        ];
        for (e, status, grpc) in &rows {
            assert_eq!(
                codes(e),
                (StatusCode::from_u16(*status).unwrap(), *grpc),
                "{e}"
            );
            let message = e.to_string();
            let http = respond(e, false);
            assert_eq!(http.status().as_u16(), *status, "{e}");
            assert_eq!(http.headers()[ERROR_HEADER], message.as_str());
            assert_eq!(http.headers()[http::header::CONTENT_TYPE], "text/plain");
            let g = respond(e, true);
            assert_eq!(
                g.status(),
                StatusCode::OK,
                "gRPC errors are trailers-only: {e}"
            );
            assert_eq!(g.headers()["grpc-status"], grpc.to_string().as_str(), "{e}");
            assert_eq!(g.headers()["grpc-message"], message.as_str());
            assert_eq!(g.headers()[http::header::CONTENT_TYPE], "application/grpc");
        }
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = respond(&Error::NoEndpoints("echo".into()), true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert!(r.headers()[ERROR_HEADER].to_str().unwrap().contains("echo"));
        let r = respond(&Error::UnknownService("x".into()), false);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_message_that_is_no_header_value_still_answers() {
        // A reason is written as it is: a line break cannot be a header value.
        let r = respond(&Error::Forbidden("line\nbreak".into()), false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[ERROR_HEADER], "proxy error");
    }
}
