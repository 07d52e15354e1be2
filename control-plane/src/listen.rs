//! Listening, and stopping: an accept error (EMFILE when file descriptors
//! run out, ENFILE, ECONNABORTED) waits, backing off from 5 ms to 1 s,
//! instead of retrying at once, and is logged at most once a second, so a
//! saturated process keeps serving the connections it has; each listener
//! keeps at most `--max-connections` open (`Limit`); `Ending` is the signal
//! that ends long-lived streams when a graceful stop's drain is over.

use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// The connections one listener keeps open, and how many it may; both
/// counts are metrics (`metrics.rs`).
#[derive(Clone)]
pub struct Limit {
    open: Gauge,
    max: usize,
    refused: Counter,
    what: &'static str,
}

/// One open connection's place under its listener's `Limit`.
pub struct Slot(Gauge);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Limit {
    /// At most `max` open connections on the listener `what`, counted on
    /// `open` and, when refused, on `refused`.
    pub fn new(what: &'static str, max: usize, open: Gauge, refused: Counter) -> Limit {
        Limit {
            open,
            max,
            refused,
            what,
        }
    }

    /// A place for one more connection, or `None` (and a log line, the
    /// first and then every 100th time) when the listener is full.
    pub fn admit(&self) -> Option<Slot> {
        // `inc` returns the count before this connection.
        if self.open.inc() >= self.max as i64 {
            self.open.dec();
            let n = self.refused.inc() + 1;
            if n % 100 == 1 {
                tracing::warn!(
                    listener = self.what,
                    limit = self.max,
                    refused = n,
                    "connection refused: the listener has its limit open"
                );
            }
            return None;
        }
        Some(Slot(self.open.clone()))
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Accepts the next connection, waiting out accept errors.
pub async fn accept(listener: &TcpListener, what: &'static str) -> TcpStream {
    let mut backoff = FIRST_BACKOFF;
    let mut logged: Option<Instant> = None;
    let mut failures = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                failures += 1;
                if logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    tracing::warn!(listener = what, error = %e, failures, "accept failed; backing off");
                    logged = Some(Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits (up to `idle`) until a new connection's protocol can be told: its
/// first byte, and all of the HTTP/2 preface if it starts like one. A
/// client that sends nothing, or part of the preface and then nothing, is
/// to be closed: neither hyper's protocol detection nor h2's handshake has
/// a deadline of its own.
pub async fn first_bytes(stream: &TcpStream, idle: Duration) -> bool {
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
        // Peeking does not consume, so wait a little before looking again.
        if tokio::time::Instant::now() + Duration::from_millis(10) >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Accepted connections that have a place under `limit`, each readied by
/// `prepare` (which drops one it will not serve) in a task of its own, so a
/// slow or silent client never holds up the next.
pub fn prepared<T, F, P>(
    listener: TcpListener,
    limit: Limit,
    prepare: P,
) -> impl Stream<Item = std::io::Result<T>>
where
    T: Send + 'static,
    F: std::future::Future<Output = Option<T>> + Send + 'static,
    P: Fn(TcpStream, Slot) -> F + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = tx.closed() => break,
                s = accept(&listener, limit.what) => s,
            };
            let Some(slot) = limit.admit() else {
                continue;
            };
            let (tx, ready) = (tx.clone(), prepare(stream, slot));
            tokio::spawn(async move {
                if let Some(conn) = ready.await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Turns true once, when a stopping control plane ends its streams.
#[derive(Clone)]
pub struct Ending(pub tokio::sync::watch::Receiver<bool>);

impl Ending {
    /// Resolves when streams must end.
    pub async fn ended(&mut self) {
        let _ = self.0.wait_for(|e| *e).await;
    }

    /// What an ended stream carries: UNAVAILABLE, which a sidecar answers
    /// by reconnecting while it keeps its last good config.
    pub fn status() -> tonic::Status {
        tonic::Status::unavailable(
            "mesh-control is shutting down; reconnect and keep the last good config",
        )
    }
}
