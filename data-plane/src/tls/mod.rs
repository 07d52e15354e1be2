//! Workload identity and mTLS: `identity` obtains and renews this
//! sidecar's SPIFFE certificate from the control plane's CA (the private
//! key never leaves the process); `material` builds the rustls client and
//! server configs from it, checking each peer's exact SPIFFE ID.

pub mod identity;
pub mod material;

pub use material::{H2, HTTP1, TCP, handshake_kind, spiffe_id};
