//! Clusters as the data path uses them: the ready endpoints of one backend
//! service, its balancing and ejection policy, and the statistics the
//! balancer keeps per endpoint. The statistics live in one store
//! ([`EndpointStats`]) that the single writer owns and lends to each
//! conversion, so they outlive snapshots: an endpoint keeps what was
//! learned about it while it is in the config, and for `RETAIN` after it
//! leaves, so one that comes back (a health flap, a restart) resumes.

use crate::balance;
use http::uri::Authority;
use mesh_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

/// How long a departed endpoint's statistics are kept.
pub const RETAIN: Duration = Duration::from_secs(300);

/// The ready endpoints of one backend service.
#[derive(Debug)]
pub struct Cluster {
    /// `<service>.<namespace>`.
    pub name: crate::name::Name,
    /// Content version.
    pub resource_version: String,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// What this sidecar knows of each endpoint, in endpoint order.
    pub stats: Vec<Arc<balance::Stats>>,
    /// How callers treat it.
    pub policy: balance::Policy,
    /// Requests in flight to it from this sidecar (kept across snapshots).
    pub in_flight: Arc<AtomicU32>,
    /// Endpoints left out because they prove no identity and this mTLS
    /// sidecar may not reach them in plaintext.
    pub refused_plaintext: usize,
    rr: AtomicU64,
}

/// One instance's inbound sidecar listener.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Socket address.
    pub addr: SocketAddr,
    /// The same, ready to put in a URI without reparsing per request.
    pub authority: Authority,
    /// Instance id.
    pub instance_id: String,
    /// Version label.
    pub version: crate::name::Name,
    /// SPIFFE ID it presents over mTLS; `None` means plaintext.
    pub identity: Option<crate::name::Name>,
}

impl Cluster {
    /// An endpoint by the backend's policy, skipping ejected ones and, when
    /// there is a choice, `avoid`.
    pub fn pick(&self, avoid: Option<usize>) -> Result<usize, balance::NoPick> {
        balance::pick(&self.stats, &self.policy, &self.rr, avoid)
    }

    /// Converts one cluster, taking each endpoint's statistics from
    /// `stats` and the in-flight count from the previous snapshot's
    /// cluster of the same name. Problems go to `errors`, naming the cluster.
    /// An `mtls` sidecar leaves out endpoints without an identity unless the
    /// backend's policy allows plaintext: nothing it sends reaches a
    /// registration that cannot prove who it is.
    pub(super) fn from_proto(
        c: &pb::Cluster,
        in_flight: Option<Arc<AtomicU32>>,
        stats: &mut EndpointStats,
        now: Instant,
        mtls: bool,
        errors: &mut Vec<String>,
    ) -> Cluster {
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        let mut records = Vec::with_capacity(c.endpoints.len());
        let plaintext_ok = !mtls || c.policy.as_ref().is_some_and(|p| p.allow_plaintext);
        let mut refused_plaintext = 0;
        for e in &c.endpoints {
            let (Ok(addr), Ok(authority)) = (
                e.address.parse::<SocketAddr>(),
                e.address.parse::<Authority>(),
            ) else {
                errors.push(format!(
                    "cluster {}: endpoint address {:?} is not ip:port",
                    c.name, e.address
                ));
                continue;
            };
            let identity = (!e.identity.is_empty()).then(|| e.identity.clone());
            if let Some(id) = &identity
                && !id.starts_with("spiffe://")
            {
                errors.push(format!(
                    "cluster {}: endpoint {addr} identity {id:?} is not a SPIFFE ID",
                    c.name
                ));
            }
            if identity.is_none() && !plaintext_ok {
                refused_plaintext += 1;
                continue;
            }
            // One record per instance, shared by every cluster it is in
            // (echo and echo-v1), so what one learns the other knows.
            records.push(stats.get(addr, now));
            endpoints.push(Endpoint {
                addr,
                authority,
                instance_id: e.instance_id.clone(),
                version: e.version.clone().into(),
                identity: identity.map(Into::into),
            });
        }
        Cluster {
            name: c.name.clone().into(),
            resource_version: c.resource_version.clone(),
            endpoints,
            stats: records,
            policy: balance::Policy::from_proto(c.policy.as_ref()),
            in_flight: in_flight.unwrap_or_default(),
            refused_plaintext,
            rr: AtomicU64::new(0),
        }
    }
}

/// Every endpoint's statistics, kept across snapshots by the single writer.
#[derive(Debug, Default)]
pub struct EndpointStats {
    entries: HashMap<SocketAddr, Kept>,
}

#[derive(Debug)]
struct Kept {
    stats: Arc<balance::Stats>,
    /// When the endpoint left the config; `None` while it is in it.
    left: Option<Instant>,
}

impl EndpointStats {
    /// The statistics of `addr`: the record it has (in the config now, or
    /// gone less than `RETAIN` ago), else a fresh one.
    pub fn get(&mut self, addr: SocketAddr, now: Instant) -> Arc<balance::Stats> {
        let kept = self.entries.entry(addr).or_insert_with(|| Kept {
            stats: Arc::default(),
            left: None,
        });
        if kept.left.is_some_and(|t| now.duration_since(t) >= RETAIN) {
            *kept = Kept {
                stats: Arc::default(),
                left: None,
            };
        }
        Arc::clone(&kept.stats)
    }

    /// Records which endpoints the applied snapshot has: they are in the
    /// config, every other one left now (or stays gone since it left), and
    /// those gone for `RETAIN` are forgotten.
    pub fn settle(&mut self, present: &HashSet<SocketAddr>, now: Instant) {
        self.entries.retain(|addr, kept| {
            if present.contains(addr) {
                kept.left = None;
                return true;
            }
            let since = *kept.left.get_or_insert(now);
            now.duration_since(since) < RETAIN
        });
    }

    /// How many endpoints have records (in the config or retained).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no endpoint has a record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The connection-attempt limit of every endpoint whose backend sets one
/// (the smallest, when an endpoint is in several such backends).
pub(super) fn pending_limits<'a>(
    clusters: impl Iterator<Item = &'a Arc<Cluster>>,
) -> HashMap<SocketAddr, (Arc<balance::Stats>, u32)> {
    let mut out: HashMap<SocketAddr, (Arc<balance::Stats>, u32)> = HashMap::new();
    for c in clusters.filter(|c| c.policy.max_pending > 0) {
        for (e, st) in c.endpoints.iter().zip(&c.stats) {
            let limit = c.policy.max_pending;
            let entry = out.entry(e.addr).or_insert_with(|| (Arc::clone(st), limit));
            entry.1 = entry.1.min(limit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The clock is the caller's: an endpoint in the config for 10 minutes
    /// that leaves and returns 4 minutes later resumes its statistics; one
    /// that returns after 6 minutes starts fresh.
    #[test]
    fn a_departed_endpoint_is_remembered_for_retain_and_no_longer() {
        let t0 = Instant::now();
        let min = |m: u64| t0 + Duration::from_secs(60 * m);
        let (a, b) = (addr(1), addr(2));
        let both: HashSet<SocketAddr> = [a, b].into();
        let mut store = EndpointStats::default();
        let (a0, b0) = (store.get(a, t0), store.get(b, t0));
        // Ten minutes in the config, one snapshot a minute: nothing expires
        // while an endpoint is present, however long that is.
        for m in 0..=10 {
            assert!(Arc::ptr_eq(&store.get(a, min(m)), &a0), "minute {m}");
            assert!(Arc::ptr_eq(&store.get(b, min(m)), &b0), "minute {m}");
            store.settle(&both, min(m));
        }
        // Both leave at minute 10; snapshots keep coming without them.
        for m in 10..=16 {
            store.settle(&HashSet::new(), min(m));
            if m == 14 {
                // a returns after 4 minutes: the same record.
                assert!(Arc::ptr_eq(&store.get(a, min(m)), &a0));
                store.settle(&[a].into(), min(m));
            }
        }
        assert!(Arc::ptr_eq(&store.get(a, min(16)), &a0));
        // b returns after 6 minutes: a fresh record.
        assert!(!Arc::ptr_eq(&store.get(b, min(16)), &b0));
    }

    /// Forgetting does not wait for a snapshot: a record past `RETAIN` is
    /// never handed out again, and a settle drops it.
    #[test]
    fn expired_records_are_dropped() {
        let t0 = Instant::now();
        let mut store = EndpointStats::default();
        let a0 = store.get(addr(1), t0);
        store.settle(&[addr(1)].into(), t0);
        store.settle(&HashSet::new(), t0 + Duration::from_secs(1));
        assert_eq!(store.len(), 1);
        let late = t0 + RETAIN + Duration::from_secs(1);
        assert!(!Arc::ptr_eq(&store.get(addr(1), late), &a0));
        // Not in the snapshot that asked for it: it leaves now, and is
        // forgotten `RETAIN` later.
        store.settle(&HashSet::new(), late);
        assert_eq!(store.len(), 1);
        store.settle(&HashSet::new(), late + RETAIN);
        assert!(store.is_empty());
    }
}
