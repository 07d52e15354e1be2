//! A `DiscoveryResponse` encoded once and sent as-is on every stream. The
//! server-side Discovery stub in [`server`] streams these; clients decode
//! the same bytes as an ordinary `v1::DiscoveryResponse`.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, skip_field};
use prost::{DecodeError, Message};

/// The protobuf encoding of a `v1::DiscoveryResponse`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prebuilt(Bytes);

impl Prebuilt {
    /// Encodes `resp` once.
    pub fn new(resp: &crate::v1::DiscoveryResponse) -> Self {
        Prebuilt(Bytes::from(resp.encode_to_vec()))
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl Message for Prebuilt {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
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
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
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
}
