//! A `DiscoveryResponse` encoded once and sent as-is on every stream, or
//! put together from resources each encoded once: the server-side
//! Discovery stub in [`server`] streams these; clients decode the same
//! bytes as an ordinary `v1::DiscoveryResponse`.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, skip_field};
use prost::{DecodeError, Message};

/// `DiscoveryResponse.services`' field number.
const SERVICES: u32 = 3;
/// `DiscoveryResponse.clusters`' field number.
const CLUSTERS: u32 = 4;

/// The protobuf encoding of a `v1::DiscoveryResponse`, in pieces that are
/// shared, not copied: protobuf lets a message's fields come in any order
/// and a repeated field's entries be spread out, so a response is its
/// scalar fields followed by already-encoded `services` and `clusters`
/// entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prebuilt(Vec<Bytes>);

/// One `services` or `clusters` entry of a response, encoded with its
/// field key and length, shared by every response that carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry(Bytes);

impl Entry {
    /// `s` as a `services` entry.
    pub fn service(s: &crate::v1::ServiceConfig) -> Self {
        Entry::of(SERVICES, s)
    }

    /// `c` as a `clusters` entry.
    pub fn cluster(c: &crate::v1::Cluster) -> Self {
        Entry::of(CLUSTERS, c)
    }

    fn of(tag: u32, m: &impl Message) -> Self {
        let mut buf = Vec::with_capacity(m.encoded_len() + 8);
        prost::encoding::message::encode(tag, m, &mut buf);
        Entry(Bytes::from(buf))
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Prebuilt {
    /// Encodes `resp` once.
    pub fn new(resp: &crate::v1::DiscoveryResponse) -> Self {
        Prebuilt(vec![Bytes::from(resp.encode_to_vec())])
    }

    /// `head` (whose own `services` and `clusters` should be empty) with
    /// `entries` added to them.
    pub fn assemble<'a>(
        head: &crate::v1::DiscoveryResponse,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Self {
        let mut parts = vec![Bytes::from(head.encode_to_vec())];
        parts.extend(entries.into_iter().map(|e| e.0.clone()));
        Prebuilt(parts)
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }
}

impl Message for Prebuilt {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for part in &self.0 {
            buf.put_slice(part);
        }
    }

    // Only ever encoded by the server; decoding skips everything.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Server-side Discovery stub that streams [`Prebuilt`] responses.
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/prebuilt/mesh.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    #[test]
    fn prebuilt_bytes_decode_as_the_original() {
        let resp = v1::DiscoveryResponse {
            version_info: "7".into(),
            nonce: "7".into(),
            services: vec![v1::ServiceConfig {
                name: "echo".into(),
                ..Default::default()
            }],
            clusters: vec![],
            ..Default::default()
        };
        let pre = Prebuilt::new(&resp);
        assert_eq!(pre.encoded_len(), resp.encoded_len());
        let back = v1::DiscoveryResponse::decode(pre.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn an_assembled_response_decodes_as_one_encoded_whole() {
        let service = v1::ServiceConfig {
            name: "echo".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        let cluster = v1::Cluster {
            name: "echo.shop".into(),
            endpoints: vec![v1::Endpoint {
                address: "10.0.0.1:80".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let head = v1::DiscoveryResponse {
            version_info: "9".into(),
            nonce: "9".into(),
            base_version: "8".into(),
            removed_clusters: vec!["old.shop".into()],
            ..Default::default()
        };
        let (s, c) = (Entry::service(&service), Entry::cluster(&cluster));
        let pre = Prebuilt::assemble(&head, [&c, &s]);
        let whole = v1::DiscoveryResponse {
            services: vec![service],
            clusters: vec![cluster],
            ..head
        };
        assert_eq!(pre.encoded_len(), whole.encoded_len());
        let back = v1::DiscoveryResponse::decode(pre.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, whole);
    }
}
