//! TCP-level metrics: a stream wrapper that counts a connection's opening,
//! closing and bytes read and written, on the counters of its direction
//! (inbound/outbound) and peer (`src`: a connection we accepted; `dst`: one
//! we opened). The counters are resolved once per listener or connector,
//! so a read or write costs one atomic add.

use hyper_util::client::legacy::connect::{Connected, Connection};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The counters of one (direction, peer).
#[derive(Clone, Debug)]
pub struct Meter {
    pub(crate) open: Counter,
    pub(crate) close: Counter,
    pub(crate) open_now: Gauge,
    pub(crate) read: Counter,
    pub(crate) write: Counter,
    /// Connections refused at the listener's limit.
    pub(crate) refused: Counter,
}

/// A stream whose traffic is counted (when metered).
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    meter: Option<Arc<Meter>>,
}

impl<S> Metered<S> {
    /// Counts a new connection; `None` counts nothing (telemetry off).
    pub fn new(inner: S, meter: Option<&Arc<Meter>>) -> Self {
        if let Some(m) = meter {
            m.open.inc();
            m.open_now.inc();
        }
        Metered {
            inner,
            meter: meter.cloned(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        if let Some(m) = &self.meter {
            m.close.inc();
            m.open_now.dec();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(m)) = (&polled, &this.meter) {
            m.read.inc_by((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(m)) = (&polled, &this.meter) {
            m.write.inc_by(*n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(m)) = (&polled, &this.meter) {
            m.write.inc_by(*n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connection> Connection for Metered<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_open_close_and_bytes_each_way() {
        let m = crate::telemetry::metrics::Metrics::default();
        let meter = m.tcp("inbound", "src").unwrap();
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = Metered::new(a, Some(&meter));
        assert_eq!((meter.open.get(), meter.open_now.get()), (1, 1));
        s.write_all(b"hello").await.unwrap();
        b.write_all(b"hi!").await.unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!((meter.write.get(), meter.read.get()), (5, 3));
        drop(s);
        assert_eq!((meter.close.get(), meter.open_now.get()), (1, 0));
        let text = m.render();
        assert!(
            text.contains("mesh_tcp_write_bytes_total{direction=\"inbound\",peer=\"src\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("mesh_tcp_open_connections{direction=\"inbound\",peer=\"src\"} 0"),
            "{text}"
        );
    }
}
