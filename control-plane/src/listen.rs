//! Listening, and stopping: an accept error (EMFILE when file descriptors
//! run out, ENFILE, ECONNABORTED) waits, backing off from 5 ms to 1 s,
//! instead of retrying at once, and is logged at most once a second, so a
//! saturated process keeps serving the connections it has; `Ending` is the
//! signal that ends long-lived streams when a graceful stop's drain is over.

use futures::Stream;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

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

/// Every accepted connection, as a stream for tonic's `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    what: &'static str,
) -> impl Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(listener, move |l| async move {
        let stream = accept(&l, what).await;
        Some((Ok(stream), l))
    })
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
