//! The sidecar's settings for connections the pod's redirect rules bring
//! it: how long protocol detection waits for a client's first bytes, and
//! the ports whose connections skip detection (opaque from the first
//! byte), parsed with the rest of `MESH_PROXY_*`.

use super::parse::Parser;
use std::time::Duration;

/// How long a redirected connection's client may stay silent before it is
/// taken for a server-speaks-first protocol and proxied opaque, in ms.
pub const ENV_DETECT_TIMEOUT_MS: &str = "MESH_PROXY_DETECT_TIMEOUT_MS";
const DEFAULT_DETECT_TIMEOUT_MS: u64 = 100;
/// Ports (and ranges) whose connections skip detection: opaque at once.
pub const ENV_OPAQUE_PORTS: &str = "MESH_PROXY_OPAQUE_PORTS";
/// smtp, submission, mysql, nats, postgres, redis, memcached: their
/// servers speak first, or their clients' bytes say nothing of HTTP.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4222,5432,6379,11211";

/// Interception settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intercept {
    /// Protocol detection's deadline.
    pub detect_timeout: Duration,
    /// Ports that skip it.
    pub opaque_ports: Vec<(u16, u16)>,
}

impl Intercept {
    /// Whether connections to `port` skip detection.
    pub fn opaque(&self, port: u16) -> bool {
        self.opaque_ports
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&port))
    }
}

impl Parser<'_> {
    pub(super) fn intercept(&mut self) -> Intercept {
        let list = self
            .string(ENV_OPAQUE_PORTS)
            .unwrap_or_else(|| DEFAULT_OPAQUE_PORTS.into());
        let opaque_ports = mesh_proto::lists::ports(&list).unwrap_or_else(|e| {
            self.errors
                .push(format!("{ENV_OPAQUE_PORTS}={list:?}: {e}"));
            Vec::new()
        });
        Intercept {
            detect_timeout: self.millis(ENV_DETECT_TIMEOUT_MS, DEFAULT_DETECT_TIMEOUT_MS),
            opaque_ports,
        }
    }
}
