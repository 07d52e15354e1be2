//! Accept loops for the proxy's listeners (HTTP/1.1 and h2c prior knowledge
//! on the same port) and the graceful drain they share: stop accepting, ask
//! every connection to finish (h1: close after the response in flight; h2:
//! GOAWAY), and wait up to a deadline.

use crate::errors::Body;
use crate::telemetry::meter::{Meter, Metered};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Header fields the sidecars may add to a request on its way (the verified
/// caller in `mesh-client-id`, `mesh-retry-attempt`, trace context), kept
/// free below the common limit of 100 (hyper's, and so most Rust apps'), so
/// a request the sidecar accepts is never refused by the app for what the
/// mesh added.
const ADDED_HEADERS_ROOM: usize = 4;
/// Most header fields a request may carry into the mesh; more get 431.
pub const MAX_HEADERS: usize = 100 - ADDED_HEADERS_ROOM;

/// How long a connection may sit without a request head (silent from the
/// start, idle between requests, or a slow one sending it) unless
/// `MESH_PROXY_IDLE_TIMEOUT_MS` says otherwise; advertised to HTTP/1.1
/// clients in `Keep-Alive: timeout=…` so they stop reusing a connection
/// before the sidecar closes it instead of racing the close.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection tracking shared by all listeners.
pub struct Drain {
    graceful: Mutex<Option<GracefulShutdown>>,
    stop: watch::Sender<bool>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle: Duration,
    hint: HeaderValue,
    /// Most connections one listener keeps open at once.
    max_connections: usize,
}

/// One of a listener's open connections; dropping it frees the place.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP/1.1 and h2c server every listener uses: a slow or idle head
/// is cut at `idle`, at most `MAX_HEADERS` fields.
pub fn http_builder(idle: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(idle);
    builder
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), which protocol detection
/// waits for in full once a client's bytes start like it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits (up to `idle` from now) until a new connection's protocol can be
/// told: its first byte, and all of the HTTP/2 preface if it starts like
/// one. A client that sends nothing, or a part of the preface and then
/// nothing, is closed instead of held for ever (protocol detection has no
/// deadline of its own; the header read timeout starts after it).
pub async fn first_byte(stream: &TcpStream, idle: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + idle;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
            return true;
        }
        // Part of the preface: peek again shortly (peeking does not consume,
        // so readiness alone would not wait for more).
        if tokio::time::Instant::now() + Duration::from_millis(10) >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The longest wait between accept attempts while they fail: short enough
/// that a freed descriptor serves the next client soon, long enough that a
/// saturated process does not spin (4 attempts a second).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// Accepts the next connection; an accept error (EMFILE when descriptors
/// run out, ENFILE, ECONNABORTED) backs off from 5 ms to 250 ms instead of
/// spinning, logged at most once a second.
pub async fn accept(listener: &TcpListener, what: &'static str) -> TcpStream {
    let mut backoff = Duration::from_millis(5);
    let mut logged: Option<std::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(listener = what, error = %e, "accept failed; backing off");
                    logged = Some(std::time::Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

impl Drain {
    /// A drain with no connections yet, whose connections may idle `idle`,
    /// each listener keeping at most `max_connections` open.
    pub fn new(idle: Duration, max_connections: usize) -> Arc<Self> {
        Arc::new(Drain {
            max_connections,
            graceful: Mutex::new(Some(GracefulShutdown::new())),
            stop: watch::channel(false).0,
            builder: Arc::new(http_builder(idle)),
            idle,
            hint: HeaderValue::from_str(&format!("timeout={}", idle.as_secs())).expect("digits"),
        })
    }

    /// How long a connection may stay without a request head.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Accepts connections on `listener` until shutdown, serving each with `handler`.
    pub fn serve<H, F>(
        self: &Arc<Self>,
        listener: TcpListener,
        meter: Option<Arc<Meter>>,
        handler: H,
    ) -> tokio::task::JoinHandle<()>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let this = Arc::clone(self);
        self.accept(listener, meter, move |stream, slot| {
            let (this, handler) = (this.clone(), handler.clone());
            tokio::spawn(async move {
                if first_byte(stream.get_ref(), this.idle).await {
                    this.serve_conn(TokioIo::new(stream), handler).await
                }
                drop(slot);
            });
        })
    }

    /// Accepts connections until shutdown and hands each to `on_conn`, which
    /// must not block (it spawns whatever per-connection work it needs) and
    /// keeps the connection's `Slot` until it ends. Each connection is
    /// counted on `meter`; one beyond the listener's limit is closed at once
    /// and counted as refused, so idle clients cannot take every descriptor.
    pub fn accept<C>(
        self: &Arc<Self>,
        listener: TcpListener,
        meter: Option<Arc<Meter>>,
        on_conn: C,
    ) -> tokio::task::JoinHandle<()>
    where
        C: Fn(Metered<TcpStream>, Slot) + Send + 'static,
    {
        let mut stop = self.stop.subscribe();
        let (open, limit) = (Arc::new(AtomicUsize::new(0)), self.max_connections);
        let mut warned: Option<std::time::Instant> = None;
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    s = accept(&listener, "proxy") => s,
                };
                if open.fetch_add(1, Ordering::Relaxed) >= limit {
                    open.fetch_sub(1, Ordering::Relaxed);
                    if let Some(m) = &meter {
                        m.refused.inc();
                    }
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(
                            limit,
                            "connection refused: the listener has its limit open"
                        );
                        warned = Some(std::time::Instant::now());
                    }
                    continue;
                }
                on_conn(Metered::new(stream, meter.as_ref()), Slot(open.clone()));
            }
            // Dropping the listener here closes the port: new connections are refused.
        })
    }

    /// Serves one connection (plain or TLS) until it ends, tracked for the
    /// graceful drain. A connection arriving after shutdown began is dropped.
    pub async fn serve_conn<I, H, F>(&self, io: I, handler: H)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let Some(watcher) = self.lock().as_ref().map(|g| g.watcher()) else {
            return;
        };
        let hint_value = self.hint.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let hint = keeps_alive(&req).then(|| hint_value.clone());
            // A combinator, not an async block around the handler's future:
            // an async block that awaits a future it captured holds it
            // twice (rust-lang/rust#62958), and hyper moves this future
            // whole several times per HTTP/2 stream (into its stream task,
            // into tokio's task cell).
            futures::FutureExt::map(handler(req), move |mut resp| {
                if let Some(hint) = hint {
                    resp.headers_mut()
                        .entry(http::header::HeaderName::from_static("keep-alive"))
                        .or_insert(hint);
                }
                Ok::<_, Infallible>(resp)
            })
        });
        let conn = self.builder.serve_connection(io, svc);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with error");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<GracefulShutdown>> {
        self.graceful.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops accepting, drains connections, and reports whether all finished
    /// within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.stop.send_replace(true);
        let Some(graceful) = self.lock().take() else {
            return true;
        };
        tokio::time::timeout(timeout, graceful.shutdown())
            .await
            .is_ok()
    }
}

/// Whether the answer to `req` goes on a connection kept open: HTTP/1.1
/// without `Connection: close` (HTTP/2 has no connection-specific fields).
fn keeps_alive<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && !req
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_says_the_idle_timeout_and_only_where_the_connection_stays() {
        assert_eq!(Drain::new(IDLE_TIMEOUT, 1).hint, "timeout=30");
        assert_eq!(Drain::new(Duration::from_millis(400), 1).hint, "timeout=0");
        let req = |v, c: Option<&str>| {
            let mut r = Request::builder().version(v);
            if let Some(c) = c {
                r = r.header(http::header::CONNECTION, c);
            }
            r.body(()).unwrap()
        };
        assert!(keeps_alive(&req(http::Version::HTTP_11, None)));
        assert!(keeps_alive(&req(
            http::Version::HTTP_11,
            Some("keep-alive")
        )));
        assert!(!keeps_alive(&req(http::Version::HTTP_11, Some("x, Close"))));
        assert!(!keeps_alive(&req(http::Version::HTTP_2, None)));
        assert!(!keeps_alive(&req(http::Version::HTTP_10, None)));
    }
}
