//! Requests with a chosen method, headers and body through a sidecar, with
//! status, answering version/instance and latency per reply; and the
//! arrival counts each echo app keeps, so tests can count retries at the
//! backends rather than trusting the proxy's word.

use super::Instance;
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub version: Option<String>,
    pub instance: Option<String>,
    /// `mesh-proxy-error`, when the sidecar produced the answer.
    pub proxy_error: Option<String>,
    pub elapsed: Duration,
}

/// What a request looks like.
#[derive(Debug, Clone)]
pub struct Shape {
    pub method: http::Method,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Shape {
    pub fn get(host: &str) -> Shape {
        Shape {
            method: http::Method::GET,
            host: host.into(),
            path: "/".into(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn method(mut self, m: http::Method) -> Shape {
        self.method = m;
        self
    }

    pub fn path(mut self, p: &str) -> Shape {
        self.path = p.into();
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Shape {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn body(mut self, b: &'static [u8]) -> Shape {
        self.body = Bytes::from_static(b);
        self
    }
}

/// Sends one request through `proxy`.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    s: &Shape,
) -> Result<Reply> {
    let mut req = http::Request::builder()
        .method(s.method.clone())
        .uri(format!("http://{proxy}{}", s.path))
        .header(http::header::HOST, &s.host);
    for (k, v) in &s.headers {
        req = req.header(k, v);
    }
    let started = Instant::now();
    let resp = client.request(req.body(Full::new(s.body.clone()))?).await?;
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (version, instance, proxy_error) = (
        header("x-echo-version"),
        header("x-echo-instance"),
        header("mesh-proxy-error"),
    );
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(Reply {
        status,
        version,
        instance,
        proxy_error,
        elapsed: started.elapsed(),
    })
}

/// Sends `n` requests shaped `shape` over `concurrency` connections.
pub async fn many(proxy: SocketAddr, shape: &Shape, n: usize, concurrency: usize) -> Vec<Reply> {
    let client = meshctl::traffic::client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, next, shape) = (client.clone(), next.clone(), shape.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    out.push(
                        send(&client, proxy, &shape)
                            .await
                            .expect("the sidecar answers"),
                    );
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all
}

/// Sends `n` requests all at once, each on its own connection, so none
/// waits behind another in a client pool.
pub async fn at_once(proxy: SocketAddr, shape: &Shape, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let shape = shape.clone();
            tokio::spawn(async move {
                let http = meshctl::traffic::client();
                send(&http, proxy, &shape)
                    .await
                    .expect("the sidecar answers")
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

/// Replies with this status.
pub fn with_status(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

/// Replies answered by `instance`.
pub fn from_instance(replies: &[Reply], instance: &str) -> usize {
    replies
        .iter()
        .filter(|r| r.instance.as_deref() == Some(instance))
        .count()
}

/// The p-th percentile (0–100) of the replies' latency.
pub fn percentile(replies: &[Reply], p: f64) -> Duration {
    let mut v: Vec<Duration> = replies.iter().map(|r| r.elapsed).collect();
    v.sort();
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

/// Arrivals at an echo app: (all requests, retried ones, POSTs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrivals {
    pub requests: u64,
    pub retries: u64,
    pub posts: u64,
}

impl std::ops::Sub for Arrivals {
    type Output = Arrivals;
    fn sub(self, o: Arrivals) -> Arrivals {
        Arrivals {
            requests: self.requests - o.requests,
            retries: self.retries - o.retries,
            posts: self.posts - o.posts,
        }
    }
}

/// Reads an echo app's arrival counters (straight from the app, not via a sidecar).
pub async fn arrivals(inst: &Instance) -> Arrivals {
    let (status, body) = meshctl::traffic::get(inst.app_addr(), "/admin/stats")
        .await
        .expect("echo answers /admin/stats");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let by = |k: &str| v["by_method"][k].as_u64().unwrap_or(0);
    Arrivals {
        requests: v["requests"].as_u64().unwrap(),
        retries: by("retries"),
        posts: by("POST"),
    }
}

/// Sum over instances.
pub async fn total_arrivals(insts: &[&Instance]) -> Arrivals {
    let mut t = Arrivals::default();
    for i in insts {
        let a = arrivals(i).await;
        t.requests += a.requests;
        t.retries += a.retries;
        t.posts += a.posts;
    }
    t
}

/// Waits until `inst`'s arrivals stop changing (fire-and-forget copies
/// still landing), with a bounded deadline; returns the settled count.
pub async fn settled_arrivals(inst: &Instance) -> Arrivals {
    let end = Instant::now() + Duration::from_secs(15);
    let mut last = arrivals(inst).await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = arrivals(inst).await;
        if now == last || Instant::now() > end {
            return now;
        }
        last = now;
    }
}

/// Open-loop load: one request every `1/rate` s for `duration`, each on its
/// own task so a slow answer never delays the next send (as a real client
/// population does); request `i` looks like `shape(i)`. Returns each reply
/// with the instant it was sent.
pub async fn open_loop(
    proxy: SocketAddr,
    shape: impl Fn(usize) -> Shape,
    rate: u32,
    duration: Duration,
) -> Vec<(Instant, Reply)> {
    let client = meshctl::traffic::client();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let n = (duration.as_secs_f64() * rate as f64) as usize;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        let (client, shape) = (client.clone(), shape(i));
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let reply = send(&client, proxy, &shape)
                .await
                .expect("the sidecar answers");
            (sent, reply)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
