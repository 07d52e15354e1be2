//! Forwards one request to one upstream over pooled connections, keeping the
//! app's protocol (HTTP/1.1 stays HTTP/1.1, h2/gRPC stays h2) and streaming
//! bodies and trailers through without buffering. Shared by inbound and
//! outbound; it knows nothing of routing.

mod fail;
mod h1;
mod h2;
mod sweep;

use crate::body::{ReqBody, Upstream};
use crate::connect::{Connector, TlsContext};
use crate::errors::Error;
use crate::state::State;
use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version, header};
use std::sync::Arc;
use std::time::Duration;

/// How long a free upstream connection is kept (an HTTP/1.1 one for less
/// when the upstream says it keeps them for less).
const IDLE: Duration = Duration::from_secs(60);

/// Open streams on one upstream HTTP/2 connection before the next one takes
/// new streams: the least a peer should allow, "no smaller than 100" (RFC
/// 9113 §6.5.2), so no peer that follows the RFC makes a request queue
/// behind its limit while another connection could carry it. hyper does not
/// tell us a peer's own SETTINGS_MAX_CONCURRENT_STREAMS; below this, the
/// stream waits inside h2 for one to end.
const H2_STREAMS: usize = 100;

/// Pooled HTTP/1.1 and HTTP/2 connections.
#[derive(Clone)]
pub struct Forwarder {
    h1: h1::H1Pool,
    h2: h2::H2Pool,
    /// Our workload certificate, when this sidecar has an identity.
    identity: Option<crate::tls::identity::Current>,
}

impl Forwarder {
    /// New clients with empty pools; `tls` enables mTLS to endpoints that
    /// publish an identity.
    /// `state` supplies per-endpoint connection-attempt limits.
    /// `meter` counts the connections it opens.
    pub fn new(
        tls: Option<TlsContext>,
        state: Arc<ArcSwap<State>>,
        meter: Option<Arc<crate::telemetry::meter::Meter>>,
    ) -> Self {
        let h1 = h1::H1Pool::new(
            Connector::new(tls.clone(), crate::tls::HTTP1, state.clone(), meter.clone()),
            IDLE,
        );
        let identity = tls.as_ref().map(|t| t.identity.clone());
        let h2 = h2::H2Pool::new(
            Connector::new(tls, crate::tls::H2, state, meter),
            H2_STREAMS,
            IDLE,
        );
        Forwarder { h1, h2, identity }
    }

    /// Sends `req` to `authority` (over mTLS when `secure`). The upstream
    /// still sees the name the app used: over HTTP/1.1 in the Host header
    /// (the request target goes in origin form, RFC 9112 §3.2.1), over
    /// HTTP/2 as `:authority`, which a retained Host must agree with (RFC
    /// 9113 §8.3.1).
    pub async fn forward(
        &self,
        mut req: Request<ReqBody>,
        authority: &Authority,
        secure: bool,
    ) -> Result<Response<Upstream>, Error> {
        // Without our certificate yet, mTLS cannot start: say so, rather
        // than fail a connect that would be held against the endpoint (and
        // never fall back to plaintext).
        if secure
            && self
                .identity
                .as_ref()
                .is_none_or(|current| current.load().is_none())
        {
            return Err(Error::NoCertificate(authority.to_string()));
        }
        let h2 = req.version() == Version::HTTP_2;
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        // An absolute-form target's authority is the one that counts: a
        // proxy "MUST ... replace any existing Host field value with the
        // authority of the request target" (RFC 9112 §3.2.2).
        if !h2
            && let Some(target) = &parts.authority
            && let Ok(host) = http::HeaderValue::from_str(target.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if h2 {
            parts.scheme = Some(if secure { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority = parts
                .authority
                .take()
                .or_else(|| host_authority(req.headers()))
                .or_else(|| Some(authority.clone()));
        } else {
            parts.scheme = None;
            parts.authority = None;
        }
        *req.uri_mut() = Uri::from_parts(parts).expect("a path, and a scheme with an authority");
        strip_hop_by_hop(req.headers_mut());
        // A body the client broke (already, while it was buffered, or on
        // the way) makes the failure the client's.
        let broke = req.body().client_broke();
        if let Some(reason) = broke.as_ref().and_then(|b| b.reason()) {
            return Err(Error::ClientBody(reason.to_string()));
        }
        let sent = if h2 {
            self.h2.send(req, authority, secure).await
        } else {
            self.h1.send(req, authority, secure).await
        };
        let mut resp = match (sent, broke.as_ref().and_then(|b| b.reason())) {
            (Err(_), Some(reason)) => return Err(Error::ClientBody(reason.to_string())),
            (sent, _) => sent?,
        };
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }
}

/// The Host header as an authority, for an HTTP/2 request that came without
/// `:authority`.
fn host_authority(headers: &HeaderMap) -> Option<Authority> {
    headers.get(header::HOST)?.to_str().ok()?.parse().ok()
}

/// Removes headers that describe one hop, not the message (RFC 9110 §7.6.1),
/// including any the Connection header names. `te: trailers` is end-to-end
/// for gRPC and stays.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    {
        for name in conn.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_end_to_end_ones_stay() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-app", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(
            h.get("x-hop").is_none()
                && h.get("keep-alive").is_none()
                && h.get(header::CONNECTION).is_none()
        );
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-app"], "1");
        let mut h = HeaderMap::new();
        h.insert(header::TE, "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::TE).is_none());
    }
}
