//! HTTP/2 upstream connections: one shared connection per endpoint and
//! scheme, multiplexing every request to it. Requests keep their own
//! `:authority` (the name the app used); the legacy pooled client keys its
//! pool by the URI's authority, so it would send the endpoint's address as
//! `:authority` instead, beside a Host header that names the service.

use super::fail::{connect_error, upstream};
use crate::body::ReqBody;
use crate::connect::Connector;
use crate::errors::Error;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Key = (Authority, bool);

/// Each shared connection, with an id so its ending removes only itself.
type Conns = Mutex<HashMap<Key, (u64, SendRequest<ReqBody>)>>;

/// Live HTTP/2 connections by endpoint and whether they are mTLS.
#[derive(Clone)]
pub(super) struct H2Pool {
    connector: Connector,
    conns: Arc<Conns>,
    next_id: Arc<AtomicU64>,
}

impl H2Pool {
    /// An empty pool that opens connections with `connector`.
    pub(super) fn new(connector: Connector) -> Self {
        H2Pool {
            connector,
            conns: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Sends `req` (its URI already carries the `:authority` to send) to
    /// `endpoint`, over mTLS when `secure`.
    pub(super) async fn send(
        &self,
        req: Request<ReqBody>,
        endpoint: &Authority,
        secure: bool,
    ) -> Result<Response<Incoming>, Error> {
        let key = (endpoint.clone(), secure);
        let mut req = req;
        // A cached connection can close between the check and the send; the
        // request then comes back unsent and goes once more, on a new one.
        for _ in 0..2 {
            let mut sender = match self.cached(&key) {
                Some(sender) => sender,
                None => self.connect(&key).await?,
            };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        self.evict(&key, &sender);
                        req = unsent;
                    }
                    None => return Err(upstream(endpoint, false, e.into_error().into())),
                },
            }
        }
        Err(upstream(
            endpoint,
            true,
            "the connection closed before the request was sent, twice".into(),
        ))
    }

    fn cached(&self, key: &Key) -> Option<SendRequest<ReqBody>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns
            .get(key)
            .map(|(_, s)| s)
            .filter(|s| s.is_ready())
            .cloned()
    }

    fn evict(&self, key: &Key, dead: &SendRequest<ReqBody>) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns
            .get(key)
            .is_some_and(|(_, s)| s.is_closed() || dead.is_closed())
        {
            conns.remove(key);
        }
    }

    /// Opens a connection to `key`'s endpoint and shares it. Two requests
    /// that miss at once may both connect; the later one is used for its
    /// own request and closes when that finishes.
    async fn connect(&self, key: &Key) -> Result<SendRequest<ReqBody>, Error> {
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
        let conns = self.conns.clone();
        let gone = key.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %gone.0, error = %e, "HTTP/2 upstream connection ended");
            }
            let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
            if conns.get(&gone).is_some_and(|(held, _)| *held == id) {
                conns.remove(&gone);
            }
        });
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns
            .entry(key.clone())
            .and_modify(|held| {
                if held.1.is_closed() {
                    *held = (id, sender.clone());
                }
            })
            .or_insert_with(|| (id, sender.clone()));
        Ok(sender)
    }
}
