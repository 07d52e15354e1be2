//! The book of subscribed sidecars: who each says it is, which config
//! version it ACKed or NACKed (and why), how long its last push took, and
//! when it was last seen; and the wait for a version to reach them all.
//! Its own locks: the writer never holds them while it works.

use mesh_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A proxy subscribed over discovery.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Who it said it is.
    pub node: pb::Node,
    /// Last version it ACKed.
    pub acked: Option<u64>,
    /// Last version it NACKed, and why.
    pub nacked: Option<(u64, String)>,
    /// From publishing (or its stream opening, if later) to its ACK, for
    /// the last version it ACKed.
    pub last_push: Option<Duration>,
    /// Its last ACK, NACK, heartbeat or subscription.
    pub last_seen: Instant,
    connected: Instant,
}

/// Every subscribed sidecar.
pub struct Proxies {
    proxies: Mutex<BTreeMap<u64, Proxy>>,
    /// When recent versions were published, for push latency.
    published: Mutex<BTreeMap<u64, Instant>>,
    /// Bumped on every ACK/NACK/disconnect so waiters re-check propagation.
    acks: watch::Sender<u64>,
}

impl Default for Proxies {
    fn default() -> Self {
        Proxies {
            proxies: Mutex::default(),
            published: Mutex::default(),
            acks: watch::channel(0).0,
        }
    }
}

impl Proxies {
    /// Notes that `version` was published now.
    pub fn published(&self, version: u64) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        published.insert(version, Instant::now());
        // A sidecar ACKs within seconds; older versions only matter as "unknown".
        while published.len() > 64 {
            published.pop_first();
        }
    }

    /// Marks a sidecar as alive now (a heartbeat, or a telemetry report from
    /// a sidecar that has no app to heartbeat for).
    pub fn seen(&self, namespace: &str, instance_id: &str) {
        let now = Instant::now();
        for p in self.proxies_lock().values_mut() {
            if p.node.instance_id == instance_id && p.node.namespace == namespace {
                p.last_seen = now;
            }
        }
    }

    /// Tracks a new discovery stream as `id`.
    pub fn add(&self, id: u64, node: pb::Node) {
        self.proxies_lock().insert(
            id,
            Proxy {
                node,
                acked: None,
                nacked: None,
                last_push: None,
                last_seen: Instant::now(),
                connected: Instant::now(),
            },
        );
    }

    /// Forgets a closed discovery stream.
    pub fn remove(&self, id: u64) {
        self.proxies_lock().remove(&id);
        self.acks.send_modify(|n| *n += 1);
    }

    /// Records an ACK (`error` is None) or NACK of `version`.
    pub fn record_reply(&self, id: u64, version: u64, error: Option<String>) {
        let now = Instant::now();
        let published = self
            .published
            .lock()
            .expect("published lock")
            .get(&version)
            .copied();
        if let Some(p) = self.proxies_lock().get_mut(&id) {
            p.last_seen = now;
            match error {
                None => {
                    // A version published before the stream opened was pushed
                    // when it opened.
                    if p.acked != Some(version) {
                        p.last_push = published.map(|at| now - at.max(p.connected));
                    }
                    p.acked = Some(version);
                    if p.nacked.as_ref().is_some_and(|(v, _)| *v <= version) {
                        p.nacked = None;
                    }
                }
                Some(reason) => p.nacked = Some((version, reason)),
            }
        }
        self.acks.send_modify(|n| *n += 1);
    }

    /// Records that a proxy holds what `version` gives it without a push:
    /// nothing it receives changed since what it last ACKed.
    pub fn record_current(&self, id: u64, version: u64) {
        let mut proxies = self.proxies_lock();
        let Some(p) = proxies.get_mut(&id) else {
            return;
        };
        if p.acked.is_some_and(|v| v < version) {
            p.acked = Some(version);
            drop(proxies);
            self.acks.send_modify(|n| *n += 1);
        }
    }

    /// Subscribed proxies.
    pub fn list(&self) -> Vec<Proxy> {
        self.proxies_lock().values().cloned().collect()
    }

    fn proxies_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Proxy>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every subscribed proxy other than `except_instance` has
    /// answered `version` or later, or `timeout` passes. Returns whether
    /// every one of them ACKed such a version. A proxy that NACKed it still
    /// runs its older config, where the instance may be an endpoint, so it
    /// does not count as propagated; once only such proxies are left there
    /// is nothing more to wait for, and the answer is `false` at once.
    pub async fn wait_propagated(
        &self,
        version: u64,
        except_instance: &str,
        timeout: Duration,
    ) -> bool {
        let mut acks = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (mut answered, mut acked) = (true, true);
            for p in self.proxies_lock().values() {
                if p.node.instance_id == except_instance {
                    continue;
                }
                let ack = p.acked.is_some_and(|v| v >= version);
                let nack = p.nacked.as_ref().is_some_and(|(v, _)| *v >= version);
                answered &= ack || nack;
                acked &= ack;
            }
            if answered {
                return acked;
            }
            if tokio::time::timeout_at(deadline, acks.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}
