//! Inbound: requests from peer sidecars → the local app, same protocol.

use crate::errors::{self, Body};
use crate::proxy::Forwarder;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

/// The inbound handler.
#[derive(Clone)]
pub struct Inbound {
    app: Authority,
    forwarder: Forwarder,
}

impl Inbound {
    /// A handler forwarding to the app at `app`.
    pub fn new(app: std::net::SocketAddr, forwarder: Forwarder) -> Self {
        let app = app
            .to_string()
            .parse()
            .expect("a socket address is a valid authority");
        Inbound { app, forwarder }
    }

    /// Forwards one request to the app.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let grpc = errors::is_grpc(&req);
        match self.forwarder.forward(req, &self.app).await {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                tracing::debug!(error = %e, "inbound request failed");
                errors::respond(&e, grpc)
            }
        }
    }
}
