//! The attempts of one request under its route: each picks a backend by
//! weight (another live one when that one has no usable endpoint), takes a
//! slot under the backend's request limit, picks an endpoint and sends,
//! under the per-try timeout. A failed attempt is retried per the route's
//! policy while the budget allows, avoiding the endpoint that just failed;
//! only a replayable body (buffered, ≤ 64 KiB) is ever retried. When no
//! backend has a usable endpoint the route's fallback answers, if it has
//! one. Every outcome feeds the endpoint's statistics.

use super::mirror::Mirrors;
use crate::balance::{Attempt, NoPick, Slot};
use crate::body::{self, ReqBody, ResBody, Upstream};
use crate::errors::Error;
use crate::forward::Forwarder;
use crate::http::{copy_head, grpc_status};
use crate::name::Name;
use crate::retry::{ATTEMPT_HEADER, Policy as RetryPolicy};
use crate::state::shield::Shield;
use crate::state::{Backend, Cluster, Endpoint, Fallback, Route};
use crate::telemetry::metrics::{BackendLabels, FallbackLabels, Metrics, RouteLabels};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

/// What the request met on its way, for its metric labels.
#[derive(Default)]
pub(super) struct Observed {
    pub(super) service: Option<Name>,
    pub(super) route: Name,
    pub(super) backend: Name,
    pub(super) version: Name,
    pub(super) tls: bool,
    pub(super) peer: Name,
    pub(super) endpoint: Option<std::net::SocketAddr>,
}

/// How one attempt ended, as far as retries and ejection care.
struct Verdict {
    /// Success or failure for outlier detection and the EWMA; `None` when
    /// the attempt never reached the endpoint (our own limits said no).
    ok: Option<bool>,
    /// The route's retry policy wants another attempt.
    retriable: bool,
}

/// Sends attempts to endpoints, and the mirror copy alongside. Shared by
/// every request of the sidecar behind one `Arc`.
pub(super) struct Attempts {
    forwarder: Forwarder,
    /// Whether this sidecar has a workload identity, so it can speak mTLS.
    mtls: bool,
    mirrors: Mirrors,
    metrics: Arc<Metrics>,
}

impl Attempts {
    pub(super) fn new(forwarder: Forwarder, mtls: bool, metrics: Arc<Metrics>) -> Self {
        Attempts {
            mirrors: Mirrors::new(mtls, metrics.clone()),
            forwarder,
            mtls,
            metrics,
        }
    }

    /// Sends the request, retrying per the route's policy while the budget
    /// allows. Only a replayable body (buffered, ≤ 64 KiB) is ever retried.
    pub(super) async fn run(
        &self,
        req: Request<Incoming>,
        route: &Route,
        seen: &mut Observed,
    ) -> Result<Response<ResBody>, Error> {
        let retry = route.retry.as_ref();
        if let Some((_, budget)) = retry {
            budget.deposit();
        }
        let retry = retry.filter(|(p, _)| p.allows_method(req.method()));
        // A release's shield: one more try, on the stable, for an
        // idempotent request the canary failed.
        let shield = route
            .shield
            .as_ref()
            .filter(|_| Shield::idempotent(req.method()));
        if let Some(s) = shield.filter(|s| s.own_budget) {
            s.budget.deposit();
        }
        let mirror = route.mirror.as_ref().filter(|m| m.sampled());
        let (parts, incoming) = req.into_parts();
        let incoming =
            body::Source::new(incoming, parts.extensions.get::<body::BytesIn>().cloned());
        let (replay, mut streamed) = if retry.is_some() || mirror.is_some() || shield.is_some() {
            match body::buffer(incoming).await {
                Ok(r) => (Some(r), None),
                Err(b) => (None, Some(b)),
            }
        } else {
            (None, Some(ReqBody::Stream(incoming)))
        };
        if let (Some(m), Some(r)) = (mirror, &replay) {
            self.mirrors.send(&self.forwarder, m, &parts, r.clone());
        }
        let mut max_attempts = match (retry, &replay) {
            (Some((p, _)), Some(_)) => 1 + p.max_retries,
            _ => 1,
        };
        let shield = shield.filter(|_| replay.is_some());
        // Set once the shield sends the next try to the stable.
        let mut to_stable = None;
        let mut parts = Some(parts);
        // The backend (by address) and endpoint the last attempt failed on.
        let mut avoid: Option<(usize, usize)> = None;
        let mut attempt = 0;
        while attempt < max_attempts {
            attempt += 1;
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
            let (cluster, _slot, i) = match choose(route, avoid, to_stable.take()) {
                Ok(chosen) => chosen,
                Err(
                    e @ (Error::NoEndpoints(_)
                    | Error::AllEjected(_)
                    | Error::PlaintextRefused { .. }),
                ) => {
                    return match &route.fallback {
                        // Boxed: rare, and it would make every request's future larger.
                        Some(f) => Box::pin(self.fall_back(f, req, route, seen, e)).await,
                        None => Err(e),
                    };
                }
                Err(e) => return Err(e),
            };
            let endpoint = &cluster.endpoints[i];
            let secure = self.observe(seen, cluster, endpoint);
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
            if let Some(s) = shield
                && verdict.ok == Some(false)
                && Arc::ptr_eq(cluster, &route.backends[s.canary].cluster)
                && s.budget.withdraw()
            {
                // Once per request: the stable's own answer stands.
                max_attempts = max_attempts.max(attempt + 1);
                to_stable = Some(s.stable);
                drop(outcome);
                self.metrics
                    .shielded
                    .get_or_create(&RouteLabels {
                        service: seen.service.clone().unwrap_or_default(),
                        route: route.name.clone(),
                    })
                    .inc();
                continue;
            }
            let Some((policy, budget)) = retry else {
                return streamed_out(outcome);
            };
            if !verdict.retriable || attempt == max_attempts {
                return streamed_out(outcome);
            }
            if !budget.withdraw() {
                tracing::debug!(route = %route.name, "retry budget exhausted");
                return streamed_out(outcome);
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

    /// Records the endpoint an attempt goes to, and whether over mTLS:
    /// whenever the endpoint has an identity and we have one; an
    /// identity-less client falls back to plaintext, which only a
    /// permissive server accepts.
    fn observe(&self, seen: &mut Observed, cluster: &Cluster, endpoint: &Endpoint) -> bool {
        let secure = self.mtls && endpoint.identity.is_some();
        seen.backend.clone_from(&cluster.name);
        seen.version.clone_from(&endpoint.version);
        seen.endpoint = Some(endpoint.addr);
        seen.tls = secure;
        seen.peer = if secure {
            endpoint.identity.clone().unwrap_or_default()
        } else {
            Name::default()
        };
        secure
    }

    /// Answers from the route's fallback, `primary` being why the backends
    /// could not: one attempt to the fallback cluster (whose own failure
    /// stands), or the static response. A fallback cluster with no usable
    /// endpoint either gives the primary's error.
    async fn fall_back(
        &self,
        fallback: &Fallback,
        req: Request<ReqBody>,
        route: &Route,
        seen: &mut Observed,
        primary: Error,
    ) -> Result<Response<ResBody>, Error> {
        let resp = match fallback {
            Fallback::Response(r) => {
                seen.backend = Name::default();
                seen.version = Name::default();
                seen.endpoint = None;
                let mut resp = Response::new(ResBody::full(r.body.clone()));
                *resp.status_mut() = r.status;
                *resp.headers_mut() = r.headers.clone();
                Ok(resp)
            }
            Fallback::Cluster(cluster) => {
                let Ok(_slot) = Slot::take(&cluster.in_flight, cluster.policy.max_requests) else {
                    return Err(primary);
                };
                let Ok(i) = cluster.pick(None) else {
                    return Err(primary);
                };
                let endpoint = &cluster.endpoints[i];
                let secure = self.observe(seen, cluster, endpoint);
                let tracker = Attempt::start(&cluster.stats[i]);
                let outcome = self
                    .forwarder
                    .forward(req, &endpoint.authority, secure)
                    .await;
                if let Some(ok) = judge(&outcome, None).ok {
                    tracker.finish(ok, &cluster.policy, &cluster.stats);
                }
                streamed_out(outcome)
            }
        };
        tracing::debug!(route = %route.name, fallback = fallback.label(), reason = %primary, "fallback answered");
        self.metrics
            .fallbacks
            .get_or_create(&FallbackLabels {
                service: seen.service.clone().unwrap_or_default(),
                route: route.name.clone(),
                fallback: fallback.label().to_string(),
            })
            .inc();
        resp
    }
}

/// An upstream's answer, streamed on.
fn streamed_out(outcome: Result<Response<Upstream>, Error>) -> Result<Response<ResBody>, Error> {
    outcome.map(|r| r.map(ResBody::stream))
}

/// The endpoint for one attempt: a backend by weight, then an endpoint by
/// its balancer, avoiding the one the last attempt failed on. A backend
/// with no usable endpoint (none ready, or every one ejected) gives way to
/// the route's other live backends before the attempt gives up: a split
/// never answers 503 while some backend can serve.
fn choose(
    route: &Route,
    avoid: Option<(usize, usize)>,
    backend: Option<usize>,
) -> Result<(&Arc<Cluster>, Slot, usize), Error> {
    let first = match backend {
        // The shield's choice, if it can serve; else by weight as always.
        Some(b) if !route.backends[b].cluster.endpoints.is_empty() => &route.backends[b],
        _ => route.pick_backend().ok_or_else(|| no_endpoints(route))?,
    };
    let mut unusable = None;
    for backend in std::iter::once(first).chain(route.other_live_backends(first)) {
        let Backend { cluster, .. } = backend;
        let slot = Slot::take(&cluster.in_flight, cluster.policy.max_requests)
            .map_err(|e| pick_error(e, cluster))?;
        let skip = avoid
            .filter(|(c, _)| *c == Arc::as_ptr(cluster) as usize)
            .map(|(_, i)| i);
        match cluster.pick(skip) {
            Ok(i) => return Ok((cluster, slot, i)),
            Err(e @ (NoPick::Empty | NoPick::AllEjected)) => {
                unusable.get_or_insert_with(|| pick_error(e, cluster));
            }
            Err(e) => return Err(pick_error(e, cluster)),
        }
    }
    Err(unusable.expect("the first backend was tried"))
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
        NoPick::Empty if cluster.refused_plaintext > 0 => Error::PlaintextRefused {
            cluster: cluster.name.to_string(),
            refused: cluster.refused_plaintext,
        },
        NoPick::Empty => Error::NoEndpoints(cluster.name.to_string()),
        NoPick::AllEjected => Error::AllEjected(cluster.name.to_string()),
        NoPick::Overloaded(limit) => Error::Overloaded {
            cluster: cluster.name.to_string(),
            limit,
        },
    }
}

/// Whether an attempt succeeded, and whether `policy` retries it.
fn judge(outcome: &Result<Response<Upstream>, Error>, policy: Option<&RetryPolicy>) -> Verdict {
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
        Err(Error::Upstream { connect, .. }) => Verdict {
            ok: Some(false),
            retriable: policy.is_some_and(|p| {
                if *connect {
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
