//! Accept loops for the proxy's listeners (HTTP/1.1 and h2c prior knowledge
//! on the same port) and the graceful drain they share: stop accepting, ask
//! every connection to finish (h1: close after the response in flight; h2:
//! GOAWAY), and wait up to a deadline.

use crate::errors::Body;
use crate::telemetry::meter::{Meter, Metered};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Connection tracking shared by all listeners.
pub struct Drain {
    graceful: Mutex<Option<GracefulShutdown>>,
    stop: watch::Sender<bool>,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl Drain {
    /// A drain with no connections yet.
    pub fn new() -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new());
        Arc::new(Drain {
            graceful: Mutex::new(Some(GracefulShutdown::new())),
            stop: watch::channel(false).0,
            builder: Arc::new(builder),
        })
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
        self.accept(listener, meter, move |stream| {
            let (this, handler) = (this.clone(), handler.clone());
            tokio::spawn(async move { this.serve_conn(TokioIo::new(stream), handler).await });
        })
    }

    /// Accepts connections until shutdown and hands each to `on_conn`, which
    /// must not block (it spawns whatever per-connection work it needs).
    /// Each connection is counted on `meter`.
    pub fn accept<C>(
        self: &Arc<Self>,
        listener: TcpListener,
        meter: Option<Arc<Meter>>,
        on_conn: C,
    ) -> tokio::task::JoinHandle<()>
    where
        C: Fn(Metered<TcpStream>) + Send + 'static,
    {
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    r = listener.accept() => r,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        on_conn(Metered::new(stream, meter.as_ref()));
                    }
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
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
        let svc = service_fn(move |req| {
            let fut = handler(req);
            async move { Ok::<_, Infallible>(fut.await) }
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
