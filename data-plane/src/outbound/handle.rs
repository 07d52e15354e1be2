//! The outbound handler: loads the config snapshot once per request (so a
//! config change never affects a request under way), resolves the service
//! and route, applies faults, runs the attempts under the route's timeout,
//! and turns any error into the response the one error table gives it.

use super::attempt::{Attempts, Observed};
use crate::demand::Demand;
use crate::errors::{self, Body, Error};
use crate::forward::Forwarder;
use crate::http::{checked_authority, grpc_status, is_grpc};
use crate::name::Name;
use crate::state::{Service, State};
use crate::telemetry::metrics::{DirectionLabels, Metrics, RequestLabels, RouteLabels};
use crate::telemetry::observe::Observer;
use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// The service label of a request no service answered to.
static UNKNOWN: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| Name::from("unknown"));

/// The outbound handler. Cloned per request, so every part is an `Arc`.
#[derive(Clone)]
pub struct Outbound {
    state: Arc<ArcSwap<State>>,
    demand: Arc<Demand>,
    attempts: Arc<Attempts>,
    metrics: Arc<Metrics>,
    obs: Arc<Observer>,
}

impl Outbound {
    /// A handler over the live state. `mtls`: this sidecar has a workload
    /// identity, so it speaks mTLS to endpoints that publish one.
    pub fn new(
        state: Arc<ArcSwap<State>>,
        demand: Arc<Demand>,
        forwarder: Forwarder,
        mtls: bool,
        obs: Arc<Observer>,
    ) -> Self {
        Outbound {
            state,
            demand,
            attempts: Arc::new(Attempts::new(forwarder, mtls, obs.metrics.clone())),
            metrics: obs.metrics.clone(),
            obs,
        }
    }

    /// Routes and forwards one request; errors become responses here.
    /// `dst`: where the redirected connection it came on was headed (its
    /// requests are that virtual IP's service's when their authority names
    /// none); a parameter rather than a request extension, which would
    /// allocate a map per request.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        dst: Option<SocketAddr>,
    ) -> Response<Body> {
        let grpc = is_grpc(&req);
        let watch = self.obs.begin("outbound", &mut req);
        let mut seen = Observed::default();
        let resp = match self.route_and_forward(req, dst, &mut seen).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "outbound request failed");
                if matches!(e, Error::ClientBody(_)) {
                    self.metrics
                        .client_body_errors
                        .get_or_create(&DirectionLabels {
                            direction: "outbound",
                        })
                        .inc();
                }
                if matches!(e, Error::Timeout(_))
                    && let Some(service) = &seen.service
                {
                    self.metrics
                        .timeouts
                        .get_or_create(&RouteLabels {
                            service: service.clone(),
                            route: seen.route.clone(),
                        })
                        .inc();
                }
                errors::respond(&e, grpc)
            }
        };
        let labels = RequestLabels {
            direction: "outbound",
            // Only names from config: an unknown authority is not a label value.
            service: seen.service.unwrap_or_else(|| UNKNOWN.clone()),
            route: seen.route,
            backend: seen.backend,
            backend_version: seen.version,
            status_code: resp.status().as_u16(),
            grpc_status: grpc_status(resp.headers())
                .map(|c| c.to_string())
                .unwrap_or_default(),
            tls: seen.tls,
            peer_identity: seen.peer,
        };
        self.obs.finish(watch, labels, seen.endpoint, resp)
    }

    async fn route_and_forward(
        &self,
        req: Request<Incoming>,
        dst: Option<SocketAddr>,
        seen: &mut Observed,
    ) -> Result<Response<Body>, Error> {
        // One lock-free load per request: this Arc pins the snapshot the request runs on.
        let state = self.state.load_full();
        // Only the initial, empty state has no version.
        if state.version.is_empty() {
            return Err(Error::NotReady);
        }
        let authority = checked_authority(&req)?;
        let waited;
        let service = match find(&state, authority, dst) {
            Some(s) => s,
            None => {
                // Boxed: the rare path, kept out of every request's future.
                waited = Box::pin(self.discover(authority, dst)).await?;
                find(&waited, authority, dst)
                    .ok_or_else(|| Error::UnknownService(authority.to_string()))?
            }
        };
        service.mark_used();
        seen.service = Some(service.full.clone());
        let route = service
            .route(&req)
            .ok_or_else(|| Error::NoRoute(service.full.to_string()))?;
        seen.route.clone_from(&route.name);
        if let Some(f) = &route.fault {
            if f.delays() {
                tokio::time::sleep(f.delay).await;
            }
            if f.aborts() {
                return Err(Error::FaultAbort {
                    route: route.name.to_string(),
                    status: http::StatusCode::from_u16(f.abort_status)
                        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                });
            }
        }
        let attempts = self.attempts.run(req, route, seen);
        match route.timeout {
            Some(t) => tokio::time::timeout(t, attempts)
                .await
                .map_err(|_| Error::Timeout(t))?,
            None => attempts.await,
        }
    }

    /// A snapshot with config for what the request names, which the
    /// sidecar held none for: asked of the control plane on demand.
    async fn discover(
        &self,
        authority: &str,
        dst: Option<SocketAddr>,
    ) -> Result<Arc<State>, Error> {
        let mut names = vec![crate::http::host_of(authority).to_ascii_lowercase()];
        names.extend(dst.map(|d| d.ip().to_string()));
        self.demand
            .wait(&self.state, &names, |s| find(s, authority, dst).is_some())
            .await
            .map_err(|e| match e {
                Error::UnknownService(_) => Error::UnknownService(authority.to_string()),
                e => e,
            })
    }
}

/// The service a request names: by its authority, or else by the virtual
/// IP its connection was headed to.
fn find<'s>(
    state: &'s State,
    authority: &str,
    dst: Option<SocketAddr>,
) -> Option<&'s Arc<Service>> {
    state
        .resolve(authority)
        .or_else(|| state.by_virtual_ip(dst?.ip()))
}
