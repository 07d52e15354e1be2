//! The sidecar's live routing state as domain types, converted from proto
//! once per snapshot. The data path reads it through an `ArcSwap` and never
//! touches prost structs. A snapshot with any unusable resource is rejected
//! whole, with every reason, so the previous config keeps serving.
//!
//! The snapshot itself lives here; its parts beside it: `service` (routes
//! of one service and its names), `route` (matching, weighted backends,
//! policies), `cluster` (endpoints and the statistics store), `authz`
//! (inbound authorization), `fallback` (what answers when no backend can)
//! and `dump` (`/config_dump`).

mod authz;
mod cluster;
mod dump;
mod fallback;
mod route;
mod service;
pub mod shield;

pub use authz::{Allow, Authorization};
pub use cluster::{Cluster, Endpoint, EndpointStats, RETAIN};
pub use dump::Dump;
pub use fallback::{Fallback, StaticResponse};
pub use route::{Backend, Fault, Mirror, Route};
pub use service::Service;

use crate::balance;
use crate::config::RegexLimit;
use crate::retry::Budget;
use mesh_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

/// One applied snapshot.
#[derive(Debug, Default)]
pub struct State {
    /// Control-plane version of the snapshot.
    pub version: String,
    /// Services by every name the app may use for them.
    by_host: HashMap<String, Arc<Service>>,
    /// Services in a stable order, for dumps.
    services: Vec<Arc<Service>>,
    /// Endpoint sets by cluster name.
    clusters: BTreeMap<String, Arc<Cluster>>,
    /// The SPIFFE ID each mTLS endpoint must present, for the connector.
    identities: HashMap<SocketAddr, crate::name::Name>,
    /// Endpoints whose backends cap connection attempts: the limit.
    pending_limits: HashMap<SocketAddr, (Arc<balance::Stats>, u32)>,
    /// This sidecar's own limit, carried from snapshot to snapshot.
    pub regex_limit: RegexLimit,
    /// This sidecar has a workload identity: it reaches only endpoints that
    /// prove one, unless their backend allows plaintext. Carried too.
    pub mtls: bool,
    /// Names it subscribed to that the control plane knows no service for.
    unknown: HashSet<String>,
}

/// Why a snapshot was rejected (one line per bad resource).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.join("; "))]
pub struct Rejected(pub Vec<String>);

impl State {
    /// The empty state of a sidecar with this regex limit.
    pub fn with_regex_limit(limit: RegexLimit) -> State {
        State {
            regex_limit: limit,
            ..State::default()
        }
    }

    /// The empty state of a sidecar with this regex limit that speaks mTLS
    /// (`mtls`: it has a workload identity) or not.
    pub fn for_sidecar(limit: RegexLimit, mtls: bool) -> State {
        State {
            regex_limit: limit,
            mtls,
            ..State::default()
        }
    }

    /// The service an authority names, with or without port. Short names
    /// resolve in the sidecar's own namespace, as Kubernetes DNS does.
    pub fn resolve(&self, authority: &str) -> Option<&Arc<Service>> {
        let host = crate::http::host_of(authority);
        self.by_host.get(host).or_else(|| {
            // Avoid allocating on the hot path unless the host needs lowercasing.
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&host.to_ascii_lowercase())
            } else {
                None
            }
        })
    }

    /// The service whose virtual IP `ip` is, for a connection the pod's
    /// redirect rules brought here.
    pub fn by_virtual_ip(&self, ip: std::net::IpAddr) -> Option<&Arc<Service>> {
        self.by_host
            .get(&service::ip_host(ip))
            .filter(|s| s.virtual_ips.contains(&ip))
    }

    /// Whether the control plane said it knows no service `name` (a name
    /// this sidecar subscribed to).
    pub fn is_unknown(&self, name: &str) -> bool {
        self.unknown.contains(name)
    }

    /// Whether the service `name` (a host or a virtual IP) means had a
    /// request since the last call; clears the mark.
    pub fn take_used(&self, name: &str) -> bool {
        let service = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => self.by_virtual_ip(ip),
            Err(_) => self.resolve(name),
        };
        service.is_some_and(|s| s.used.swap(false, std::sync::atomic::Ordering::Relaxed))
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The connection-attempt limit for `addr`, with its statistics, if its
    /// backend sets one.
    pub fn pending_limit(&self, addr: &SocketAddr) -> Option<&(Arc<balance::Stats>, u32)> {
        self.pending_limits.get(addr)
    }

    /// The identity the endpoint at `addr` must present, if it speaks mTLS.
    pub fn identity_of(&self, addr: &SocketAddr) -> Option<&str> {
        self.identities.get(addr).map(crate::name::Name::as_str)
    }

    /// Converts a snapshot. `namespace` is the sidecar's own, for short
    /// names. Endpoint statistics come from `stats` (and are settled there
    /// at `now` when the snapshot is accepted); in-flight counts and retry
    /// budgets carry over from `prev`.
    pub fn from_proto(
        resp: &pb::DiscoveryResponse,
        namespace: &str,
        prev: &State,
        stats: &mut EndpointStats,
        now: Instant,
    ) -> Result<State, Rejected> {
        let carried = prev.carried();
        let mut errors = Vec::new();
        // An empty version is what "no config yet" looks like; never accept it as config.
        if resp.version_info.is_empty() {
            errors.push("snapshot has no version_info".to_string());
        }
        let mut clusters = BTreeMap::new();
        for c in &resp.clusters {
            let in_flight = carried.in_flight.get(&c.name).cloned();
            let cluster = Cluster::from_proto(c, in_flight, stats, now, prev.mtls, &mut errors);
            if clusters.insert(c.name.clone(), Arc::new(cluster)).is_some() {
                errors.push(format!("cluster {} appears twice", c.name));
            }
        }
        let cx = route::Context {
            clusters: &clusters,
            budgets: &carried.budgets,
            regex_limit: prev.regex_limit.0,
        };
        let mut services = Vec::new();
        for s in &resp.services {
            match Service::from_proto(s, &cx) {
                Ok(mut svc) => {
                    if let Some(used) = carried.used.get(&(s.namespace.as_str(), s.name.as_str())) {
                        svc.used = Arc::clone(used);
                    }
                    services.push(Arc::new(svc))
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(Rejected(errors));
        }
        let mut by_host = HashMap::new();
        for svc in &services {
            for host in svc.hosts(namespace) {
                by_host.insert(host, Arc::clone(svc));
            }
        }
        let endpoints = || clusters.values().flat_map(|c| &c.endpoints);
        let identities = endpoints()
            .filter_map(|e| Some((e.addr, e.identity.clone()?)))
            .collect();
        let present: HashSet<SocketAddr> = endpoints().map(|e| e.addr).collect();
        stats.settle(&present, now);
        Ok(State {
            version: resp.version_info.clone(),
            by_host,
            services,
            pending_limits: cluster::pending_limits(clusters.values()),
            clusters,
            identities,
            regex_limit: prev.regex_limit,
            mtls: prev.mtls,
            unknown: resp.unknown.iter().cloned().collect(),
        })
    }

    /// What a new snapshot inherits: in-flight counts by cluster, retry
    /// budgets by `service/route`, and services' request marks.
    fn carried(&self) -> Carried<'_> {
        let mut c = Carried::default();
        for cl in self.clusters.values() {
            c.in_flight
                .insert(cl.name.to_string(), Arc::clone(&cl.in_flight));
        }
        for s in &self.services {
            c.used
                .insert((s.namespace.as_str(), s.name.as_str()), &s.used);
            for r in &s.routes {
                if let Some((_, b)) = &r.retry {
                    let key = format!("service {}/{}/{}", s.namespace, s.name, r.name);
                    c.budgets.insert(key, Arc::clone(b));
                }
            }
        }
        c
    }

    /// A JSON-friendly view for `/config_dump`.
    pub fn dump(&self) -> Dump {
        Dump::new(&self.version, &self.services, self.clusters.values())
    }
}

#[derive(Default)]
struct Carried<'a> {
    in_flight: HashMap<String, Arc<AtomicU32>>,
    budgets: HashMap<String, Arc<Budget>>,
    used: HashMap<(&'a str, &'a str), &'a Arc<std::sync::atomic::AtomicBool>>,
}

#[cfg(test)]
mod tests;
