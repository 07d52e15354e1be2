//! Bodies as the sidecar sends them. Requests: streamed through untouched,
//! or buffered (up to `REPLAY_LIMIT`) so a retry or a mirror can send the
//! same bytes again; a body that outgrows the limit keeps streaming, with the
//! part already read sent first, and is then never replayed. Responses: the
//! upstream's stream or our own bytes, optionally watched to the end (bytes
//! sent, gRPC status in trailers) for an access-log line; an upstream's
//! stream holds its place on a shared HTTP/2 connection until it is done.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// Largest body kept for replay.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Request body bytes read from the client. Put in a request's extensions
/// when its access-log line needs them; the body reader adds to it.
#[derive(Clone, Debug, Default)]
pub struct BytesIn(pub Arc<AtomicU64>);

/// Set once the client's body failed (cut short, malformed chunking, the
/// client gone), with what went wrong: the request's failure is then the
/// client's, never the upstream's.
#[derive(Clone, Debug, Default)]
pub struct ClientBroke(Arc<std::sync::OnceLock<String>>);

impl ClientBroke {
    /// What went wrong, once it has.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// The client's request body, counted into `BytesIn` when there is one.
#[derive(Debug)]
pub struct Source {
    body: Incoming,
    counted: Option<BytesIn>,
    /// None for a body that is over before it starts (a GET's), which
    /// cannot break: no allocation for it.
    broke: Option<ClientBroke>,
}

impl Source {
    /// Reads `body`, counting into `counted`.
    pub fn new(body: Incoming, counted: Option<BytesIn>) -> Self {
        Source {
            broke: (!body.is_end_stream()).then(ClientBroke::default),
            body,
            counted,
        }
    }
}

impl Body for Source {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match (&polled, &this.counted) {
            (Poll::Ready(Some(Ok(f))), Some(c)) => {
                if let Some(d) = f.data_ref() {
                    c.0.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            (Poll::Ready(Some(Err(e))), _) => {
                let reason = match std::error::Error::source(e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                if let Some(b) = &this.broke {
                    let _ = b.0.set(reason);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A body the forwarder can send.
#[derive(Debug)]
pub enum ReqBody {
    /// Streamed from the client.
    Stream(Source),
    /// Fully buffered.
    Replay(Replay),
    /// Read past the limit: the buffered head, then the rest of the stream.
    Overflow(Option<Bytes>, Source),
}

impl ReqBody {
    /// Where a failure of the client's own body shows, for a body that is
    /// still read from the client.
    pub fn client_broke(&self) -> Option<ClientBroke> {
        match self {
            ReqBody::Stream(s) | ReqBody::Overflow(_, s) => s.broke.clone(),
            ReqBody::Replay(_) => None,
        }
    }
}

/// A buffered body: clone it per attempt.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// Bytes in the body.
    pub fn len(&self) -> usize {
        self.data.as_ref().map_or(0, Bytes::len)
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads `body` into memory if it fits in `REPLAY_LIMIT`. Otherwise gives
/// back a body that sends everything read so far and then streams the rest.
pub async fn buffer(mut body: Source) -> Result<Replay, ReqBody> {
    if body.is_end_stream() {
        return Ok(Replay::default());
    }
    if body.size_hint().lower() > REPLAY_LIMIT as u64 {
        return Err(ReqBody::Stream(body));
    }
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client broke off; send what we have and let the stream
            // report its error to the upstream as it would have.
            return Err(ReqBody::Overflow(Some(buf.freeze()), body));
        };
        match frame.into_data() {
            Ok(d) => {
                buf.extend_from_slice(&d);
                if buf.len() > REPLAY_LIMIT {
                    return Err(ReqBody::Overflow(Some(buf.freeze()), body));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Replay {
        data: (!buf.is_empty()).then(|| buf.freeze()),
        trailers,
    })
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Stream(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Replay(r) => Poll::Ready(match (r.data.take(), r.trailers.take()) {
                (Some(d), _) => Some(Ok(Frame::data(d))),
                (None, Some(t)) => Some(Ok(Frame::trailers(t))),
                (None, None) => None,
            }),
            ReqBody::Overflow(head, rest) => match head.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Stream(b) => b.is_end_stream(),
            ReqBody::Replay(r) => r.data.is_none() && r.trailers.is_none(),
            ReqBody::Overflow(head, rest) => head.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Stream(b) => b.size_hint(),
            ReqBody::Replay(r) => SizeHint::with_exact(r.len() as u64),
            ReqBody::Overflow(head, rest) => {
                let head = head.as_ref().map_or(0, |h| h.len() as u64);
                let mut hint = rest.size_hint();
                hint.set_lower(hint.lower() + head);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
        }
    }
}

/// How a response body ended, for whoever watches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct End {
    /// Data bytes sent.
    pub bytes: u64,
    /// `grpc-status` from the trailers, when they carried one.
    pub grpc_status: Option<i32>,
    /// Whether the body reached its end (false: the client went away or
    /// the upstream broke off).
    pub complete: bool,
    /// Whether the upstream broke off (an error reading its body).
    pub broken: bool,
}

impl End {
    /// The gRPC status of a stream that ended this way: its trailers' or,
    /// cut short without them, CANCELLED (1) when the client went away and
    /// UNAVAILABLE (14) when the upstream broke off ("Status codes and their
    /// use in gRPC": CANCELLED, "the operation was cancelled, typically by
    /// the caller"; UNAVAILABLE for a transport that failed mid-call).
    pub fn grpc_code(&self) -> Option<i32> {
        match self.grpc_status {
            Some(code) => Some(code),
            None if !self.complete => Some(if self.broken { 14 } else { 1 }),
            None => None,
        }
    }
}

/// One place in a count, given back when dropped: an HTTP/2 connection's
/// open streams, held from checkout until the response body is done.
#[derive(Debug)]
pub struct Held(Arc<AtomicUsize>);

impl Held {
    /// Takes a place in `count`.
    pub fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream's response body, with the stream place it holds (HTTP/2)
/// until its end is read or it is dropped.
#[derive(Debug)]
pub struct Upstream {
    body: Incoming,
    held: Option<Held>,
}

impl Upstream {
    /// `body`, holding `held` while it lasts.
    pub fn new(body: Incoming, held: Option<Held>) -> Self {
        Upstream { body, held }
    }
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Called once when a watched response body is done.
pub type OnEnd = Box<dyn FnOnce(End) + Send>;

/// Every response body the sidecar returns.
pub struct ResBody {
    inner: http_body_util::Either<Upstream, http_body_util::Full<Bytes>>,
    watch: Option<(End, OnEnd)>,
}

impl ResBody {
    /// The upstream's body, streamed.
    pub fn stream(b: Upstream) -> Self {
        ResBody {
            inner: http_body_util::Either::Left(b),
            watch: None,
        }
    }

    /// Bytes of our own.
    pub fn full(b: Bytes) -> Self {
        ResBody {
            inner: http_body_util::Either::Right(http_body_util::Full::new(b)),
            watch: None,
        }
    }

    /// Calls `f` once the body is done (or dropped unfinished).
    pub fn on_end(mut self, f: OnEnd) -> Self {
        self.watch = Some((End::default(), f));
        self
    }
}

impl std::fmt::Debug for ResBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResBody")
            .field("watched", &self.watch.is_some())
            .finish()
    }
}

impl Drop for ResBody {
    fn drop(&mut self) {
        if let Some((mut end, f)) = self.watch.take() {
            // hyper stops polling once the length it was promised is sent.
            end.complete |= self.inner.is_end_stream();
            f(end);
        }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            http_body_util::Either::Left(b) => Pin::new(b).poll_frame(cx),
            http_body_util::Either::Right(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never| match never {}))),
        };
        if let Some((end, _)) = &mut this.watch {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        end.bytes += d.len() as u64;
                    } else if let Some(t) = frame.trailers_ref() {
                        end.grpc_status = t
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                    }
                }
                Poll::Ready(None) => end.complete = true,
                Poll::Ready(Some(Err(_))) => end.broken = true,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::End;

    #[test]
    fn a_stream_cut_short_has_a_grpc_status() {
        let end = |grpc_status, complete, broken| End {
            bytes: 0,
            grpc_status,
            complete,
            broken,
        };
        assert_eq!(end(Some(0), true, false).grpc_code(), Some(0));
        assert_eq!(end(None, false, false).grpc_code(), Some(1), "cancelled");
        assert_eq!(end(None, false, true).grpc_code(), Some(14), "broken off");
        // Whole, but without a status: nothing to invent.
        assert_eq!(end(None, true, false).grpc_code(), None);
    }
}
