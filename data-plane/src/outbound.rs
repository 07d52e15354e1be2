//! Outbound: requests from the local app, addressed by service name in Host
//! or :authority → route → weighted backend → endpoint → peer sidecar.
//! Each request reads the config snapshot once, so a config change never
//! affects a request already under way.

use crate::errors::{self, Body, Error};
use crate::proxy::Forwarder;
use crate::state::State;
use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use std::sync::Arc;

/// The outbound handler.
#[derive(Clone)]
pub struct Outbound {
    state: Arc<ArcSwap<State>>,
    forwarder: Forwarder,
    /// Whether this sidecar has a workload identity, so it can speak mTLS.
    mtls: bool,
}

impl Outbound {
    /// A handler over the live state.
    pub fn new(state: Arc<ArcSwap<State>>, forwarder: Forwarder, mtls: bool) -> Self {
        Outbound {
            state,
            forwarder,
            mtls,
        }
    }

    /// Routes and forwards one request; errors become responses here.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let grpc = errors::is_grpc(&req);
        match self.route_and_forward(req).await {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                tracing::debug!(error = %e, "outbound request failed");
                errors::respond(&e, grpc)
            }
        }
    }

    async fn route_and_forward(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        // One lock-free load per request: this Arc pins the snapshot the request runs on.
        let state = self.state.load_full();
        // Only the initial, empty state has no version.
        if state.version.is_empty() {
            return Err(Error::NotReady);
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .ok_or(Error::MissingAuthority)?;
        let service = state
            .resolve(authority)
            .ok_or_else(|| Error::UnknownService(authority.to_string()))?;
        let no_endpoints = || Error::NoEndpoints(format!("{}.{}", service.name, service.namespace));
        let route = service.route(req.uri().path()).ok_or_else(no_endpoints)?;
        let backend = route.pick_backend().ok_or_else(no_endpoints)?;
        let endpoint = backend.cluster.pick().ok_or_else(no_endpoints)?;
        let target = endpoint.authority.clone();
        // mTLS whenever the endpoint has an identity and we have one; an
        // identity-less client falls back to plaintext, which only a
        // permissive server accepts.
        let secure = self.mtls && endpoint.identity.is_some();
        self.forwarder.forward(req, &target, secure).await
    }
}
