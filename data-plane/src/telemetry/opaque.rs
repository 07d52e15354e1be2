//! Opaque TCP connections' metrics, by peer identity: opened, closed, open
//! now, and bytes each way (added when the connection closes: the copy
//! counts them as it goes and reports once). The TCP meter beside them
//! counts every connection of a listener; these say who an opaque one was
//! with.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// An opaque connection's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpaqueLabels {
    /// `outbound` (the app's connection to a service) or `inbound` (a
    /// peer's to the app).
    pub direction: &'static str,
    /// The peer's verified SPIFFE ID; empty for plaintext.
    pub peer_identity: String,
}

/// Bytes of an opaque connection, by way.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpaqueBytesLabels {
    /// As for the connection.
    pub direction: &'static str,
    /// As for the connection.
    pub peer_identity: String,
    /// `to_peer` or `from_peer`.
    pub way: &'static str,
}

/// The families, registered once.
#[derive(Clone, Debug, Default)]
pub struct Opaque {
    opened: Family<OpaqueLabels, Counter>,
    closed: Family<OpaqueLabels, Counter>,
    open: Family<OpaqueLabels, Gauge>,
    bytes: Family<OpaqueBytesLabels, Counter>,
}

/// One opaque connection being counted; `closed` reports it.
pub struct Counted<'a> {
    opaque: &'a Opaque,
    labels: OpaqueLabels,
}

impl Opaque {
    /// Registers the families in `r`.
    pub fn register(r: &mut Registry) -> Opaque {
        let o = Opaque::default();
        r.register(
            "tcp_opaque_opened",
            "Opaque TCP connections opened, by direction and peer identity",
            o.opened.clone(),
        );
        r.register(
            "tcp_opaque_closed",
            "Opaque TCP connections closed, by direction and peer identity",
            o.closed.clone(),
        );
        r.register(
            "tcp_opaque_open",
            "Opaque TCP connections open now, by direction and peer identity",
            o.open.clone(),
        );
        r.register(
            "tcp_opaque_bytes",
            "Bytes of opaque TCP connections by direction, peer identity and way (counted at close)",
            o.bytes.clone(),
        );
        o
    }

    /// Counts a connection opened with `peer_identity`.
    pub fn opened(&self, direction: &'static str, peer_identity: &str) -> Counted<'_> {
        let labels = OpaqueLabels {
            direction,
            peer_identity: peer_identity.to_string(),
        };
        self.opened.get_or_create(&labels).inc();
        self.open.get_or_create(&labels).inc();
        Counted {
            opaque: self,
            labels,
        }
    }
}

impl Counted<'_> {
    /// Counts the connection closed, `to_peer` and `from_peer` bytes moved.
    pub fn closed(self, to_peer: u64, from_peer: u64) {
        let o = self.opaque;
        o.closed.get_or_create(&self.labels).inc();
        o.open.get_or_create(&self.labels).dec();
        for (way, n) in [("to_peer", to_peer), ("from_peer", from_peer)] {
            o.bytes
                .get_or_create(&OpaqueBytesLabels {
                    direction: self.labels.direction,
                    peer_identity: self.labels.peer_identity.clone(),
                    way,
                })
                .inc_by(n);
        }
    }
}
