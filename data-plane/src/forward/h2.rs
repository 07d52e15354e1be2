//! HTTP/2 upstream connections, dispatched directly: each endpoint (and
//! scheme) shares its oldest live connection for every request until that
//! one carries `streams` open streams, then spills onto the next (opening
//! one when all are full). Requests that miss at once wait for the one
//! connection being opened instead of each opening their own. A connection
//! with no open stream for `idle` is closed.
//!
//! Requests keep their own `:authority` (the name the app used); a pool
//! keyed by the URI's authority, as hyper-util's is, would send the
//! endpoint's address as `:authority` instead, beside a Host header that
//! names the service.

use super::fail::{connect_error, upstream};
use crate::body::{Held, ReqBody, Upstream};
use crate::connect::Connector;
use crate::errors::Error;
use http::uri::Authority;
use http::{Request, Response};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

type Key = (Authority, bool);

/// One live connection.
struct Conn {
    /// So that its ending removes only itself.
    id: u64,
    sender: SendRequest<ReqBody>,
    /// Streams open on it: taken at checkout, given back when the response
    /// body is done.
    open: Arc<AtomicUsize>,
    /// When it last took a stream.
    used: Instant,
}

/// An endpoint's connections, oldest first, and the connection being
/// opened, whose end its waiters watch.
#[derive(Default)]
struct Endpoint {
    conns: Vec<Conn>,
    opening: Option<watch::Receiver<()>>,
}

type Conns = Mutex<HashMap<Key, Endpoint, foldhash::fast::RandomState>>;

/// What a checkout found.
enum Found {
    Stream(SendRequest<ReqBody>, Held),
    /// Every connection is full or none is live, and one is being opened.
    Wait(watch::Receiver<()>),
    /// Nothing to take or wait for: open a connection, announced by this.
    Open(watch::Sender<()>),
}

/// Live HTTP/2 connections by endpoint and whether they are mTLS.
#[derive(Clone)]
pub(super) struct H2Pool {
    connector: Connector,
    conns: Arc<Conns>,
    next_id: Arc<AtomicU64>,
    /// Streams per connection before the next one is used.
    streams: usize,
    /// How long a connection without open streams is kept.
    idle: Duration,
}

impl H2Pool {
    /// An empty pool that opens connections with `connector`, puts up to
    /// `streams` open streams on each, and closes those without a stream
    /// for `idle`.
    pub(super) fn new(connector: Connector, streams: usize, idle: Duration) -> Self {
        let pool = H2Pool {
            connector,
            conns: Arc::default(),
            next_id: Arc::default(),
            streams: streams.max(1),
            idle,
        };
        // Closes connections without an open stream for `idle`, and forgets
        // endpoints with none left: dropping the last sender of a connection
        // without streams ends it.
        super::sweep::spawn(&pool.conns, idle, move |conns, now| {
            conns.retain(|_, at| {
                at.conns
                    .retain(|c| !c.sender.is_closed() && !unused(c, now, idle));
                !at.conns.is_empty() || at.opening.as_ref().is_some_and(|o| o.has_changed().is_ok())
            })
        });
        pool
    }

    /// Sends `req` (its URI already carries the `:authority` to send) to
    /// `endpoint`, over mTLS when `secure`.
    pub(super) async fn send(
        &self,
        req: Request<ReqBody>,
        endpoint: &Authority,
        secure: bool,
    ) -> Result<Response<Upstream>, Error> {
        let key = (endpoint.clone(), secure);
        let mut req = req;
        // Once someone else's connection failed to open, this request
        // opens its own rather than queue behind another attempt that may
        // fail the same slow way.
        let mut waited = false;
        // A cached connection can close between the check and the send; the
        // request then comes back unsent and goes once more, on a new one.
        let mut unsent_once = false;
        loop {
            let (mut sender, held) = match self.checkout(&key, !waited) {
                Found::Stream(sender, held) => (sender, held),
                Found::Wait(mut opening) => {
                    // Ok when the opener's connection is up, Err when it
                    // failed.
                    waited = opening.changed().await.is_err();
                    continue;
                }
                Found::Open(announce) => {
                    // Boxed: opening a connection (TLS included) is rare and
                    // its future large; inline, every request's future
                    // would carry its size.
                    let opened = Box::pin(self.connect(&key)).await?;
                    announce.send_replace(());
                    opened
                }
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|b| Upstream::new(b, Some(held)))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !unsent_once => {
                        unsent_once = true;
                        req = unsent;
                    }
                    unsent => {
                        return Err(upstream(endpoint, unsent.is_some(), e.into_error().into()));
                    }
                },
            }
        }
    }

    /// A stream on the oldest live connection with room, or what to do
    /// instead; `wait` allows waiting on a connection being opened.
    fn checkout(&self, key: &Key, wait: bool) -> Found {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let at = match conns.get_mut(key) {
            Some(at) => at,
            None => conns.entry(key.clone()).or_default(),
        };
        let now = Instant::now();
        at.conns
            .retain(|c| !c.sender.is_closed() && !unused(c, now, self.idle));
        let streams = self.streams;
        if let Some(c) = at
            .conns
            .iter_mut()
            .find(|c| c.open.load(Ordering::Relaxed) < streams)
        {
            c.used = now;
            return Found::Stream(c.sender.clone(), Held::take(&c.open));
        }
        match &at.opening {
            Some(opening) if wait && opening.has_changed().is_ok() => Found::Wait(opening.clone()),
            _ => {
                let (announce, opening) = watch::channel(());
                at.opening = Some(opening);
                Found::Open(announce)
            }
        }
    }

    /// Opens a connection to `key`'s endpoint, adds it to the endpoint's
    /// and takes its first stream.
    async fn connect(&self, key: &Key) -> Result<(SendRequest<ReqBody>, Held), Error> {
        let (endpoint, secure) = key;
        let io = self
            .connector
            .open(endpoint, *secure)
            .await
            .map_err(|e| connect_error(endpoint, e))?;
        let (sender, conn) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| upstream(endpoint, true, e.into()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conns = Arc::downgrade(&self.conns);
        let gone = key.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %gone.0, error = %e, "HTTP/2 upstream connection ended");
            }
            let Some(conns) = conns.upgrade() else { return };
            let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = conns.get_mut(&gone) {
                at.conns.retain(|c| c.id != id);
            }
        });
        let open = Arc::new(AtomicUsize::new(0));
        let held = Held::take(&open);
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.entry(key.clone()).or_default().conns.push(Conn {
            id,
            sender: sender.clone(),
            open,
            used: Instant::now(),
        });
        Ok((sender, held))
    }
}

/// Whether `c` has had no open stream for `idle`.
fn unused(c: &Conn, now: Instant, idle: Duration) -> bool {
    c.open.load(Ordering::Relaxed) == 0 && now.duration_since(c.used) >= idle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Replay;
    use crate::state::State;
    use arc_swap::ArcSwap;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;

    #[derive(Default)]
    struct Seen {
        accepted: AtomicUsize,
        live: AtomicUsize,
        requests: AtomicUsize,
    }

    /// An HTTP/2 upstream on loopback that counts connections (opened and
    /// still open) and requests; `/slow` answers once `gate` is true.
    async fn upstream(gate: watch::Receiver<bool>) -> (Authority, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                counts.live.fetch_add(1, Ordering::SeqCst);
                let (by_req, gate) = (counts.clone(), gate.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (counts, mut gate) = (by_req.clone(), gate.clone());
                    async move {
                        counts.requests.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/slow" {
                            let _ = gate.wait_for(|open| *open).await;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let counts = counts.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    counts.live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr.to_string().parse().unwrap(), seen)
    }

    fn pool(streams: usize, idle: Duration) -> H2Pool {
        let state = Arc::new(ArcSwap::from_pointee(State::for_sidecar(
            Default::default(),
            false,
        )));
        H2Pool::new(
            Connector::new(None, crate::tls::H2, state, None),
            streams,
            idle,
        )
    }

    async fn get(pool: &H2Pool, endpoint: &Authority, path: &str) {
        let req = Request::get(format!("http://svc{path}"))
            .version(http::Version::HTTP_2)
            .body(ReqBody::Replay(Replay::default()))
            .unwrap();
        let resp = pool.send(req, endpoint, false).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    /// Polls `done` until it holds, for at most five seconds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn requests_share_a_connection_until_it_is_full_then_spill_to_the_next() {
        let (open, gate) = watch::channel(false);
        let (endpoint, seen) = upstream(gate).await;
        let pool = pool(2, Duration::from_secs(60));
        // Five at once on an empty pool, two streams each: three
        // connections, not one per request (the misses wait for the
        // connection being opened) and not one (no stream queues behind a
        // full connection).
        let slow: Vec<_> = (0..5)
            .map(|_| {
                let (pool, endpoint) = (pool.clone(), endpoint.clone());
                tokio::spawn(async move { get(&pool, &endpoint, "/slow").await })
            })
            .collect();
        until("five requests upstream", || {
            seen.requests.load(Ordering::SeqCst) == 5
        })
        .await;
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 3);
        open.send_replace(true);
        for s in slow {
            s.await.unwrap();
        }
        // Done, they gave their streams back: one at a time now all go on
        // the oldest connection.
        for _ in 0..4 {
            get(&pool, &endpoint, "/").await;
        }
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_stream_is_held_until_its_body_is_read_and_an_unused_connection_closes() {
        let (_open, gate) = watch::channel(false);
        let (endpoint, seen) = upstream(gate).await;
        let pool = pool(1, Duration::from_millis(100));
        let req = || {
            Request::get("http://svc/")
                .version(http::Version::HTTP_2)
                .body(ReqBody::Replay(Replay::default()))
                .unwrap()
        };
        // A response whose body is still unread holds its stream: with room
        // for one, the next request needs a second connection.
        let unread = pool.send(req(), &endpoint, false).await.unwrap();
        get(&pool, &endpoint, "/").await;
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
        unread.into_body().collect().await.unwrap();
        get(&pool, &endpoint, "/").await;
        assert_eq!(
            seen.accepted.load(Ordering::SeqCst),
            2,
            "read, so free again"
        );
        // Without streams for the idle time, both connections close.
        until("idle connections closed", || {
            seen.live.load(Ordering::SeqCst) == 0
        })
        .await;
        get(&pool, &endpoint, "/").await;
        assert_eq!(seen.accepted.load(Ordering::SeqCst), 3);
    }
}
