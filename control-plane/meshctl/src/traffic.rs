//! HTTP traffic through a sidecar, tallied by the version that answered.
//! The demo shows shares with it; the end-to-end tests assert on it.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Header the echo workload names its version in.
pub const VERSION_HEADER: &str = "x-echo-version";
/// Header the echo workload names its instance in.
pub const INSTANCE_HEADER: &str = "x-echo-instance";

/// What one request got.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent.
    pub started: Instant,
    /// Version that answered, if it succeeded.
    pub version: Option<String>,
    /// Instance that answered, if it succeeded.
    pub instance: Option<String>,
    /// Failure description, if it failed.
    pub error: Option<String>,
}

/// Counts of outcomes.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Successful answers per version.
    pub by_version: BTreeMap<String, u64>,
    /// Successful answers per instance.
    pub by_instance: BTreeMap<String, u64>,
    /// Failed requests.
    pub failures: u64,
    /// The first few failures, for messages.
    pub sample_errors: Vec<String>,
}

impl Tally {
    /// Adds one outcome.
    pub fn add(&mut self, o: &Outcome) {
        match (&o.version, &o.error) {
            (Some(v), None) => {
                *self.by_version.entry(v.clone()).or_default() += 1;
                if let Some(i) = &o.instance {
                    *self.by_instance.entry(i.clone()).or_default() += 1;
                }
            }
            (_, e) => {
                self.failures += 1;
                if self.sample_errors.len() < 5 {
                    self.sample_errors.push(e.clone().unwrap_or_default());
                }
            }
        }
    }

    /// Total requests.
    pub fn total(&self) -> u64 {
        self.by_version.values().sum::<u64>() + self.failures
    }

    /// Answers from `version`.
    pub fn count(&self, version: &str) -> u64 {
        self.by_version.get(version).copied().unwrap_or(0)
    }

    /// Answers from instance `id`.
    pub fn count_instance(&self, id: &str) -> u64 {
        self.by_instance.get(id).copied().unwrap_or(0)
    }
}

/// A pooled keep-alive HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one GET for `host` via `proxy` and reports who answered.
pub async fn one(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    host: &str,
) -> Outcome {
    let started = Instant::now();
    let req = http::Request::get(format!("http://{proxy}/"))
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let result = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (version, instance) = (header(VERSION_HEADER), header(INSTANCE_HEADER));
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
        Ok((version.context("answer has no version header")?, instance))
    }
    .await;
    match result {
        Ok((v, i)) => Outcome {
            started,
            version: Some(v),
            instance: i,
            error: None,
        },
        Err(e) => Outcome {
            started,
            version: None,
            instance: None,
            error: Some(format!("{e:#}")),
        },
    }
}

/// Sends `n` requests over `concurrency` connections and tallies them.
pub async fn burst(proxy: SocketAddr, host: &str, n: usize, concurrency: usize) -> Tally {
    let client = client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, next, tally, host) = (
                client.clone(),
                next.clone(),
                tally.clone(),
                host.to_string(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let o = one(&client, proxy, &host).await;
                    tally.lock().expect("tally lock").add(&o);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    tally.lock().expect("tally lock").clone()
}

/// Traffic that runs until stopped, recording every outcome.
pub struct Steady {
    stop: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl Steady {
    /// Starts `concurrency` request loops; each stops at `max_requests` or on `finish`.
    pub fn start(proxy: SocketAddr, host: &str, concurrency: usize, max_requests: usize) -> Steady {
        let (stop, rx) = watch::channel(false);
        let client = client();
        let workers = (0..concurrency.max(1))
            .map(|_| {
                let (client, rx, host) = (client.clone(), rx.clone(), host.to_string());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !*rx.borrow() && out.len() < max_requests {
                        out.push(one(&client, proxy, &host).await);
                    }
                    out
                })
            })
            .collect();
        Steady { stop, workers }
    }

    /// Stops the loops and returns every outcome, oldest first.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.send_replace(true);
        let mut all = Vec::new();
        for w in self.workers {
            all.extend(w.await.unwrap_or_default());
        }
        all.sort_by_key(|o| o.started);
        all
    }
}

/// GET `http://addr{path}`: status and body. For admin endpoints.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let (status, _, body) = get_accepting(addr, path, None).await?;
    Ok((status, body))
}

/// GET `path` with an `Accept` header; returns the status, the response's
/// `Content-Type` and its body.
pub async fn get_accepting(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> Result<(u16, String, String)> {
    let client = client();
    let mut req = http::Request::get(format!("http://{addr}{path}"));
    if let Some(accept) = accept {
        req = req.header(http::header::ACCEPT, accept);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).expect("valid request"))
        .await?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, ctype, String::from_utf8_lossy(&body).into_owned()))
}
