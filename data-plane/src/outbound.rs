//! Outbound: requests from the local app, addressed by service name in Host
//! or :authority → route (first match) → faults → mirror → attempts, each
//! one weighted backend → endpoint (balancer, ejection) → peer sidecar, with
//! the route's timeout over all of them. Each request reads the config
//! snapshot once, so a config change never affects a request under way.

use crate::balance::{Attempt, NoPick, Slot};
use crate::body::{self, Replay, ReqBody};
use crate::errors::{self, Body, Error};
use crate::metrics::{BackendLabels, Metrics, MirrorLabels, RequestLabels, RouteLabels};
use crate::observe::Observer;
use crate::proxy::Forwarder;
use crate::retry::{ATTEMPT_HEADER, Policy as RetryPolicy, grpc_status};
use crate::route::{Mirror, Route, roll};
use crate::state::{Cluster, State};
use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Most mirrored requests in flight at once; beyond it copies are dropped,
/// so a stalled shadow can never pile up connections and work in the
/// sidecar (a healthy 5 ms shadow at 10k rps needs about 50).
const MIRRORS_IN_FLIGHT: usize = 64;
/// A mirrored request is abandoned after this long.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// The outbound handler.
#[derive(Clone)]
pub struct Outbound {
    state: Arc<ArcSwap<State>>,
    forwarder: Forwarder,
    /// Whether this sidecar has a workload identity, so it can speak mTLS.
    mtls: bool,
    mirrors: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    obs: Arc<Observer>,
}

/// What the request met on its way, for its metric labels.
#[derive(Default)]
struct Observed {
    service: Option<String>,
    route: String,
    backend: String,
    version: String,
    tls: bool,
    peer: String,
    endpoint: Option<std::net::SocketAddr>,
}

/// How one attempt ended, as far as retries and ejection care.
struct Verdict {
    /// Success or failure for outlier detection and the EWMA; `None` when
    /// the attempt never reached the endpoint (our own limits said no).
    ok: Option<bool>,
    /// The route's retry policy wants another attempt.
    retriable: bool,
}

impl Outbound {
    /// A handler over the live state.
    pub fn new(
        state: Arc<ArcSwap<State>>,
        forwarder: Forwarder,
        mtls: bool,
        obs: Arc<Observer>,
    ) -> Self {
        Outbound {
            state,
            forwarder,
            mtls,
            mirrors: Arc::default(),
            metrics: obs.metrics.clone(),
            obs,
        }
    }

    /// Routes and forwards one request; errors become responses here.
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let grpc = errors::is_grpc(&req);
        let watch = self.obs.begin("outbound", &mut req);
        let mut seen = Observed::default();
        let resp = match self.route_and_forward(req, &mut seen).await {
            Ok(resp) => resp.map(Body::stream),
            Err(e) => {
                tracing::debug!(error = %e, "outbound request failed");
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
            service: seen.service.unwrap_or_else(|| "unknown".into()),
            route: seen.route,
            backend: seen.backend,
            backend_version: seen.version,
            status_code: resp.status().as_u16(),
            grpc_status: crate::retry::grpc_status(resp.headers())
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
        seen: &mut Observed,
    ) -> Result<Response<Incoming>, Error> {
        // One lock-free load per request: this Arc pins the snapshot the request runs on.
        let state = self.state.load_full();
        // Only the initial, empty state has no version.
        if state.version.is_empty() {
            return Err(Error::NotReady);
        }
        let authority = crate::route::authority(&req).ok_or(Error::MissingAuthority)?;
        let service = state
            .resolve(authority)
            .ok_or_else(|| Error::UnknownService(authority.to_string()))?;
        let name = format!("{}.{}", service.name, service.namespace);
        seen.service = Some(name.clone());
        let route = service.route(&req).ok_or(Error::NoRoute(name))?;
        seen.route.clone_from(&route.name);
        if let Some(f) = &route.fault {
            if roll(f.delay_percent) {
                tokio::time::sleep(f.delay).await;
            }
            if roll(f.abort_percent) {
                return Err(Error::FaultAbort {
                    route: route.name.clone(),
                    status: http::StatusCode::from_u16(f.abort_status)
                        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
                });
            }
        }
        let attempts = self.attempts(req, route, seen);
        match route.timeout {
            Some(t) => tokio::time::timeout(t, attempts)
                .await
                .map_err(|_| Error::Timeout(t))?,
            None => attempts.await,
        }
    }

    /// Sends the request, retrying per the route's policy while the budget
    /// allows. Only a replayable body (buffered, ≤ 64 KiB) is ever retried.
    async fn attempts(
        &self,
        req: Request<Incoming>,
        route: &Route,
        seen: &mut Observed,
    ) -> Result<Response<Incoming>, Error> {
        let retry = route.retry.as_ref();
        if let Some((_, budget)) = retry {
            budget.deposit();
        }
        let retry = retry.filter(|(p, _)| p.allows_method(req.method()));
        let mirror = route.mirror.as_ref().filter(|m| roll(m.percent));
        let (parts, incoming) = req.into_parts();
        let incoming =
            body::Source::new(incoming, parts.extensions.get::<body::BytesIn>().cloned());
        let (replay, mut streamed) = if retry.is_some() || mirror.is_some() {
            match body::buffer(incoming).await {
                Ok(r) => (Some(r), None),
                Err(b) => (None, Some(b)),
            }
        } else {
            (None, Some(ReqBody::Stream(incoming)))
        };
        if let (Some(m), Some(r)) = (mirror, &replay) {
            self.mirror(m, &parts, r.clone());
        }
        let max_attempts = match (retry, &replay) {
            (Some((p, _)), Some(_)) => 1 + p.max_retries,
            _ => 1,
        };
        let mut parts = Some(parts);
        // The backend (by address) and endpoint the last attempt failed on.
        let mut avoid: Option<(usize, usize)> = None;
        for attempt in 1..=max_attempts {
            let req = match &replay {
                Some(r) => {
                    let head = parts.as_ref().expect("kept while replaying");
                    let mut req = copy_head(head, ReqBody::Replay(r.clone()));
                    if attempt > 1 {
                        req.headers_mut()
                            .insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
                    }
                    req
                }
                None => Request::from_parts(
                    parts.take().expect("one attempt without replay"),
                    streamed.take().expect("one attempt without replay"),
                ),
            };
            let backend = route.pick_backend().ok_or_else(|| no_endpoints(route))?;
            let cluster = &backend.cluster;
            let _slot = Slot::take(&cluster.in_flight, cluster.policy.max_requests)
                .map_err(|e| pick_error(e, cluster))?;
            let skip = avoid
                .filter(|(c, _)| *c == Arc::as_ptr(cluster) as usize)
                .map(|(_, i)| i);
            let i = cluster.pick(skip).map_err(|e| pick_error(e, cluster))?;
            let endpoint = &cluster.endpoints[i];
            // mTLS whenever the endpoint has an identity and we have one; an
            // identity-less client falls back to plaintext, which only a
            // permissive server accepts.
            let secure = self.mtls && endpoint.identity.is_some();
            seen.backend.clone_from(&cluster.name);
            seen.version.clone_from(&endpoint.version);
            seen.endpoint = Some(endpoint.addr);
            seen.tls = secure;
            seen.peer = if secure {
                endpoint.identity.clone().unwrap_or_default()
            } else {
                String::new()
            };
            let tracker = Attempt::start(&cluster.stats[i]);
            let per_try = retry.and_then(|(p, _)| p.per_try_timeout);
            let sent = self.forwarder.forward(req, &endpoint.authority, secure);
            let outcome = match per_try {
                Some(t) => tokio::time::timeout(t, sent)
                    .await
                    .unwrap_or(Err(Error::Timeout(t))),
                None => sent.await,
            };
            let verdict = judge(&outcome, retry.map(|(p, _)| p));
            if let Some(ok) = verdict.ok
                && tracker.finish(ok, &cluster.policy, &cluster.stats)
            {
                tracing::warn!(
                    endpoint = %endpoint.addr,
                    cluster = %cluster.name,
                    "endpoint ejected after consecutive failures"
                );
                self.metrics
                    .ejections
                    .get_or_create(&BackendLabels {
                        backend: cluster.name.clone(),
                    })
                    .inc();
            }
            let Some((policy, budget)) = retry else {
                return outcome;
            };
            if !verdict.retriable || attempt == max_attempts {
                return outcome;
            }
            if !budget.withdraw() {
                tracing::debug!(route = %route.name, "retry budget exhausted");
                return outcome;
            }
            drop(outcome);
            self.metrics
                .retries
                .get_or_create(&RouteLabels {
                    service: seen.service.clone().unwrap_or_default(),
                    route: route.name.clone(),
                })
                .inc();
            tokio::time::sleep(policy.backoff(attempt)).await;
            avoid = Some((Arc::as_ptr(cluster) as usize, i));
        }
        unreachable!("the last attempt always returns")
    }

    /// Sends a copy to the shadow backend and forgets it.
    fn mirror(&self, m: &Mirror, head: &http::request::Parts, body: Replay) {
        let cluster = Arc::clone(&m.cluster);
        let Ok(i) = cluster.pick(None) else {
            return;
        };
        let count = |result| {
            self.metrics
                .mirrors
                .get_or_create(&MirrorLabels {
                    backend: cluster.name.clone(),
                    result,
                })
                .inc();
        };
        if self.mirrors.fetch_add(1, Ordering::Relaxed) >= MIRRORS_IN_FLIGHT {
            self.mirrors.fetch_sub(1, Ordering::Relaxed);
            count("dropped");
            tracing::debug!(cluster = %cluster.name, "mirror dropped: too many in flight");
            return;
        }
        count("sent");
        let req = copy_head(head, ReqBody::Replay(body));
        let endpoint = cluster.endpoints[i].clone();
        let secure = self.mtls && endpoint.identity.is_some();
        let (forwarder, mirrors) = (self.forwarder.clone(), Arc::clone(&self.mirrors));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, async {
                // Read the answer to the end so the connection can be reused.
                if let Ok(resp) = forwarder.forward(req, &endpoint.authority, secure).await {
                    let _ = resp.into_body().collect().await;
                }
            })
            .await;
            mirrors.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A new request with the same method, URI, version and headers.
fn copy_head(head: &http::request::Parts, body: ReqBody) -> Request<ReqBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

fn no_endpoints(route: &Route) -> Error {
    let names: Vec<&str> = route
        .backends
        .iter()
        .map(|b| b.cluster.name.as_str())
        .collect();
    Error::NoEndpoints(names.join(", "))
}

fn pick_error(e: NoPick, cluster: &Cluster) -> Error {
    match e {
        NoPick::Empty => Error::NoEndpoints(cluster.name.clone()),
        NoPick::AllEjected => Error::AllEjected(cluster.name.clone()),
        NoPick::Overloaded(limit) => Error::Overloaded {
            cluster: cluster.name.clone(),
            limit,
        },
    }
}

/// Whether an attempt succeeded, and whether `policy` retries it.
fn judge(outcome: &Result<Response<Incoming>, Error>, policy: Option<&RetryPolicy>) -> Verdict {
    match outcome {
        Ok(resp) => {
            // gRPC UNAVAILABLE is the server saying it cannot serve: a failure.
            let ok = !resp.status().is_server_error() && grpc_status(resp.headers()) != Some(14);
            Verdict {
                ok: Some(ok),
                retriable: policy
                    .is_some_and(|p| p.retries_response(resp.status(), resp.headers())),
            }
        }
        Err(Error::Upstream { source, .. }) => Verdict {
            ok: Some(false),
            retriable: policy.is_some_and(|p| {
                if source.is_connect() {
                    p.on_connect_failure
                } else {
                    p.on_reset
                }
            }),
        },
        // A per-try timeout: what a gateway would call a 504.
        Err(Error::Timeout(_)) => Verdict {
            ok: Some(false),
            retriable: policy.is_some_and(|p| p.on_5xx || p.on_gateway_error),
        },
        Err(_) => Verdict {
            ok: None,
            retriable: false,
        },
    }
}
