//! HTTP/1.1 upstream connections, dispatched directly: each endpoint (and
//! scheme) keeps a stack of its live connections, and a request takes the
//! most recently used one that is free, or opens a new one. Checkout and
//! return are a few instructions under an uncontended lock, with no task
//! of their own: a connection goes back on the stack as soon as its
//! response head arrives and is taken again once its body has been read.
//!
//! The stacks live in the pool rather than in the balancer's endpoint slot
//! because slots are part of the routing snapshot, which is replaced on
//! every config change and shared by every worker, while connections must
//! outlive snapshots and belong to one worker.

use super::fail::{connect_error, upstream};
use crate::body::{ReqBody, Upstream};
use crate::connect::Connector;
use crate::errors::Error;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, header};
use hyper::client::conn::http1::{Builder, SendRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One endpoint's connections: plaintext at 0, mTLS at 1, least recently
/// used first.
type Stacks = [Vec<Conn>; 2];

type Conns = Mutex<HashMap<Authority, Stacks, foldhash::fast::RandomState>>;

struct Conn {
    sender: SendRequest<ReqBody>,
    /// When it is too old to take again: the pool's idle limit, or sooner
    /// when the upstream said it closes free connections sooner.
    expires: Instant,
}

/// Live HTTP/1.1 connections by endpoint and whether they are mTLS.
#[derive(Clone)]
pub(super) struct H1Pool {
    connector: Connector,
    conns: Arc<Conns>,
    /// How long a free connection is kept.
    idle: Duration,
}

impl H1Pool {
    /// An empty pool that opens connections with `connector` and closes
    /// those left free for `idle`; a sweep a few times per `idle` closes
    /// them even when their endpoint gets no more requests.
    pub(super) fn new(connector: Connector, idle: Duration) -> Self {
        let pool = H1Pool {
            connector,
            conns: Arc::default(),
            idle,
        };
        // Closes connections free past their expiry, and forgets endpoints
        // with none left.
        super::sweep::spawn(&pool.conns, idle, |conns, now| {
            conns.retain(|_, stacks| {
                for stack in stacks.iter_mut() {
                    stack.retain(|c| {
                        let expired = c.sender.is_ready() && now >= c.expires;
                        !(c.sender.is_closed() || expired)
                    });
                }
                stacks.iter().any(|s| !s.is_empty())
            })
        });
        pool
    }

    /// Sends `req` (its URI already in origin form, its Host header set)
    /// to `endpoint`, over mTLS when `secure`.
    pub(super) async fn send(
        &self,
        mut req: Request<ReqBody>,
        endpoint: &Authority,
        secure: bool,
    ) -> Result<Response<Upstream>, Error> {
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(endpoint.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        // A free connection can close (the upstream's idle timeout) just as
        // it is taken; the request then comes back unsent and goes once
        // more, on a new connection, where failing to send is final.
        let mut cached = self.checkout(endpoint, secure);
        loop {
            let reused = cached.is_some();
            let mut sender = match cached.take() {
                Some(sender) => sender,
                None => self.connect(endpoint, secure).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let keep = kept_for(resp.headers()).map_or(self.idle, |k| k.min(self.idle));
                    self.checkin(endpoint, secure, sender, keep);
                    return Ok(resp.map(|b| Upstream::new(b, None)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    unsent => {
                        return Err(upstream(endpoint, unsent.is_some(), e.into_error().into()));
                    }
                },
            }
        }
    }

    /// The most recently used free connection to `endpoint`, dropping any
    /// that closed or sat free too long on the way.
    fn checkout(&self, endpoint: &Authority, secure: bool) -> Option<SendRequest<ReqBody>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let stack = &mut conns.get_mut(endpoint)?[usize::from(secure)];
        let mut now = None;
        while let Some(i) = stack.iter().rposition(|c| c.sender.is_ready()) {
            let conn = stack.remove(i);
            if *now.get_or_insert_with(Instant::now) < conn.expires {
                return Some(conn.sender);
            }
        }
        // None is free: shed those that closed while busy.
        stack.retain(|c| !c.sender.is_closed());
        None
    }

    /// Puts a connection whose response head has arrived back on its
    /// endpoint's stack, to be taken for up to `keep` once it is free again
    /// (when the body has been read).
    fn checkin(
        &self,
        endpoint: &Authority,
        secure: bool,
        sender: SendRequest<ReqBody>,
        keep: Duration,
    ) {
        let conn = Conn {
            sender,
            expires: Instant::now() + keep,
        };
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        match conns.get_mut(endpoint) {
            Some(stacks) => stacks[usize::from(secure)].push(conn),
            None => {
                let mut stacks = Stacks::default();
                stacks[usize::from(secure)].push(conn);
                conns.insert(endpoint.clone(), stacks);
            }
        }
    }

    /// Opens a connection; its task ends when the upstream closes it or
    /// when the pool drops its sender.
    async fn connect(
        &self,
        endpoint: &Authority,
        secure: bool,
    ) -> Result<SendRequest<ReqBody>, Error> {
        let io = self
            .connector
            .open(endpoint, secure)
            .await
            .map_err(|e| connect_error(endpoint, e))?;
        let (sender, conn) = Builder::new()
            .handshake(io)
            .await
            .map_err(|e| upstream(endpoint, true, e.into()))?;
        let gone = endpoint.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %gone, error = %e, "HTTP/1.1 upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// How long the upstream keeps a free connection, from its `Keep-Alive:
/// timeout=N` (RFC 2068 §19.7.1.1), less a second so that we stop using it
/// before it closes rather than race the close: a request written into a
/// closing connection has been sent and cannot be safely sent again. Node's
/// default of 5 s is the common case.
fn kept_for(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("keep-alive")?.to_str().ok()?;
    let secs = value.split(',').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| v.trim().parse::<u64>().ok())?
    })?;
    Some(Duration::from_secs(secs.saturating_sub(1)))
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream on loopback that counts its connections; `/close`
    /// answers with `Connection: close`, `/keep-2` with `Keep-Alive: timeout=2`.
    async fn upstream() -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                    match req.uri().path() {
                        "/close" => {
                            resp.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        "/keep-1" => {
                            resp.headers_mut()
                                .insert("keep-alive", HeaderValue::from_static("timeout=1"));
                        }
                        _ => {}
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    async fn get(pool: &H1Pool, endpoint: &Authority, path: &'static str) {
        let req = Request::get(path)
            .body(ReqBody::Replay(Replay::default()))
            .unwrap();
        let resp = pool.send(req, endpoint, false).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn one_connection_serves_requests_in_turn_and_a_closed_one_is_replaced() {
        let (endpoint, accepted) = upstream().await;
        let state = Arc::new(ArcSwap::from_pointee(State::for_sidecar(
            Default::default(),
            false,
        )));
        let pool = H1Pool::new(
            Connector::new(None, crate::tls::HTTP1, state, None),
            Duration::from_secs(60),
        );
        for _ in 0..5 {
            get(&pool, &endpoint, "/").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
        // The upstream closes this one after answering: the next request
        // must not fail on it, and goes on a new connection.
        get(&pool, &endpoint, "/close").await;
        get(&pool, &endpoint, "/").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // `Keep-Alive: timeout=1` means reuse for under a second, so never
        // here: the connection after it is a new one.
        get(&pool, &endpoint, "/keep-1").await;
        get(&pool, &endpoint, "/").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        // Two at once need two connections; both are then kept and reused.
        let (a, b) = tokio::join!(get(&pool, &endpoint, "/"), get(&pool, &endpoint, "/"));
        let ((), ()) = (a, b);
        let now = accepted.load(Ordering::SeqCst);
        assert!(now <= 4, "{now} connections for two at once");
        for _ in 0..4 {
            get(&pool, &endpoint, "/").await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            now,
            "free connections reused"
        );
    }

    #[test]
    fn an_upstreams_keep_alive_timeout_shortens_reuse_by_a_second() {
        let mut h = http::HeaderMap::new();
        assert_eq!(kept_for(&h), None);
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        assert_eq!(kept_for(&h), Some(Duration::from_secs(4)));
        h.insert("keep-alive", "max=100, Timeout = 30".parse().unwrap());
        assert_eq!(kept_for(&h), Some(Duration::from_secs(29)));
        h.insert("keep-alive", "timeout=1".parse().unwrap());
        assert_eq!(kept_for(&h), Some(Duration::ZERO));
        h.insert("keep-alive", "timeout=soon".parse().unwrap());
        assert_eq!(kept_for(&h), None);
    }
}
