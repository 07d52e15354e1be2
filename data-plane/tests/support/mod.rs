//! In-process harness for the sidecar's services: loopback upstreams whose
//! answers a test scripts, a real `State` built from a discovery snapshot,
//! and the outbound service served on a loopback port exactly as the
//! sidecar serves it. No child processes: one service, driven directly.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proto::v1 as pb;
use mesh_proxy::forward::Forwarder;
use mesh_proxy::outbound::Outbound;
use mesh_proxy::server::Drain;
use mesh_proxy::state::{EndpointStats, State};
use mesh_proxy::telemetry::metrics::Metrics;
use mesh_proxy::telemetry::observe::Observer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How an upstream answers its `n`-th request (0-based).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    /// Extra response headers (a trailers-only gRPC status, say).
    pub headers: Vec<(&'static str, String)>,
    /// Wait for this before answering (a stalled upstream).
    pub hold: Option<Arc<Notify>>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
            hold: None,
        }
    }
    pub fn ok() -> Reply {
        Reply::status(200)
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn held(mut self, until: &Arc<Notify>) -> Reply {
        self.hold = Some(until.clone());
        self
    }
}

/// What an upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

type Script = Arc<dyn Fn(usize, &Seen) -> Reply + Send + Sync>;

/// A loopback HTTP/1.1 + h2c server that answers by script and records
/// every request, from the moment its head arrives.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
}

impl Upstream {
    pub async fn start(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Upstream {
            addr,
            seen: Arc::default(),
            arrived: Arc::new(Notify::new()),
        };
        let script: Script = Arc::new(script);
        let served = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (up, script) = (served.clone(), script.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (up, script) = (up.clone(), script.clone());
                        async move { Ok::<_, std::convert::Infallible>(up.answer(req, &script).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    /// Answers every request with 200.
    pub async fn ok() -> Upstream {
        Upstream::start(|_, _| Reply::ok()).await
    }

    async fn answer(&self, req: Request<Incoming>, script: &Script) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let mut seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            headers: parts.headers.clone(),
            body_len: 0,
        };
        // Counted on arrival (before the body), so a held request is seen.
        let n = {
            let mut all = self.seen.lock().unwrap();
            all.push(seen.clone());
            all.len() - 1
        };
        self.arrived.notify_waiters();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        seen.body_len = body.len();
        self.seen.lock().unwrap()[n].body_len = body.len();
        let reply = script(n, &seen);
        if let Some(hold) = &reply.hold {
            hold.notified().await;
        }
        tokio::time::sleep(reply.delay).await;
        let mut resp = Response::new(Full::new(Bytes::from(format!("upstream {}\n", self.addr))));
        *resp.status_mut() = http::StatusCode::from_u16(reply.status).unwrap();
        for (k, v) in reply.headers {
            resp.headers_mut().insert(k, v.parse().unwrap());
        }
        resp
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// What each request carried.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests have arrived.
    pub async fn wait_hits(&self, n: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            if self.hits() >= n {
                return self.hits();
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.hits();
            }
        }
    }
}

/// A cluster of `eps`, with `policy` (None: the defaults).
pub fn cluster(name: &str, eps: &[&Upstream], policy: Option<pb::BackendPolicy>) -> pb::Cluster {
    pb::Cluster {
        name: name.into(),
        resource_version: "r".into(),
        endpoints: eps
            .iter()
            .map(|u| pb::Endpoint {
                address: u.addr.to_string(),
                instance_id: format!("{name}-{}", u.addr.port()),
                version: "v1".into(),
                identity: String::new(),
            })
            .collect(),
        policy,
    }
}

/// A route to `backends` (cluster, weight) with no matches and no retries.
pub fn route(name: &str, backends: &[(&str, u32)]) -> pb::Route {
    pb::Route {
        name: name.into(),
        backends: backends
            .iter()
            .map(|(c, w)| pb::WeightedBackend {
                cluster: (*c).into(),
                weight: *w,
            })
            .collect(),
        ..Default::default()
    }
}

/// A retry policy: `max` retries on `on`, 1 ms backoff, a budget of
/// `ratio` × requests + `per_sec` per second.
pub fn retry(max: u32, on: &[&str], ratio: f64, per_sec: u32) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_retries: max,
        per_try_timeout_ms: 0,
        backoff_base_ms: 1,
        backoff_max_ms: 1,
        retry_on: on.iter().map(|s| s.to_string()).collect(),
        grpc_codes: Vec::new(),
        non_idempotent: false,
        budget_ratio: ratio,
        budget_min_per_sec: per_sec,
    }
}

/// A service in namespace `default` with `routes`, first match wins.
pub fn service(name: &str, routes: Vec<pb::Route>) -> pb::ServiceConfig {
    pb::ServiceConfig {
        name: name.into(),
        namespace: "default".into(),
        resource_version: "r".into(),
        routes,
        authorization: None,
        virtual_ips: Vec::new(),
    }
}

/// The outbound service of one sidecar, served on loopback.
pub struct Sidecar {
    pub outbound: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub state: Arc<arc_swap::ArcSwap<State>>,
    _drain: Arc<Drain>,
}

impl Sidecar {
    /// Converts the snapshot (it must be valid) and serves outbound over it.
    pub async fn start(services: Vec<pb::ServiceConfig>, clusters: Vec<pb::Cluster>) -> Sidecar {
        Sidecar::start_with(
            services,
            clusters,
            Arc::new(Metrics::new(true, "v1".into())),
        )
        .await
    }

    pub async fn start_with(
        services: Vec<pb::ServiceConfig>,
        clusters: Vec<pb::Cluster>,
        metrics: Arc<Metrics>,
    ) -> Sidecar {
        let snap = pb::DiscoveryResponse {
            version_info: "1".into(),
            nonce: "1".into(),
            services,
            clusters,
            ..Default::default()
        };
        let state = State::from_proto(
            &snap,
            "default",
            &State::default(),
            &mut EndpointStats::default(),
            Instant::now(),
        )
        .expect("a valid snapshot");
        let state = Arc::new(arc_swap::ArcSwap::from_pointee(state));
        let forwarder = Forwarder::new(None, state.clone(), None);
        let obs = Arc::new(Observer::new(metrics.clone(), None, None));
        let demand = Arc::default();
        let out = Outbound::new(state.clone(), demand, forwarder, false, obs);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outbound = listener.local_addr().unwrap();
        let drain = Drain::new(mesh_proxy::server::IDLE_TIMEOUT, 10_000);
        drain.serve(listener, None, move |req| {
            let out = out.clone();
            async move { out.handle(req, None).await }
        });
        Sidecar {
            outbound,
            metrics,
            state,
            _drain: drain,
        }
    }

    /// An HTTP/1.1 client to the outbound listener.
    pub fn client(&self) -> Client {
        Client {
            to: self.outbound,
            h1: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A metric's value from this sidecar's /metrics text: the sum over
    /// every sample of `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics.render();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A client of the sidecar's outbound listener.
pub struct Client {
    to: SocketAddr,
    h1: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

/// An answer as the app sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub took: Duration,
}

impl Client {
    /// Sends `method host path` with `headers` and `body` over HTTP/1.1.
    pub async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        self.send_on(false, method, host, path, headers, body).await
    }

    /// `GET host path` over HTTP/1.1.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        self.send("GET", host, path, &[], Vec::new()).await
    }

    /// The same over HTTP/2 (prior knowledge), as gRPC clients speak.
    pub async fn send_h2(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        self.send_on(true, method, host, path, headers, Vec::new())
            .await
    }

    async fn send_on(
        &self,
        h2: bool,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let started = Instant::now();
        let uri = if h2 {
            format!("http://{host}{path}")
        } else {
            format!("http://{}{path}", self.to)
        };
        let mut b = Request::builder().method(method).uri(uri);
        if !h2 {
            b = b.header("host", host);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body))).unwrap();
        let resp = if h2 {
            // :authority names the service; the connection goes to the sidecar.
            let tcp = tokio::net::TcpStream::connect(self.to).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.expect("the sidecar answers")
        } else {
            self.h1.request(req).await.expect("the sidecar answers")
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            took: started.elapsed(),
        }
    }
}
