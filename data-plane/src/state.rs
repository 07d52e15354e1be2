//! The sidecar's live routing state as domain types, converted from proto
//! once per snapshot. The data path reads it through an `ArcSwap` and never
//! touches prost structs. A snapshot with any unusable resource is rejected
//! whole, with every reason, so the previous config keeps serving.

pub use crate::route::{Backend, Route};

use crate::balance;
use crate::retry::Budget;
use crate::route;
use http::uri::Authority;
use mesh_proto::v1 as pb;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
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
    identities: HashMap<SocketAddr, String>,
    /// Endpoints whose backends cap connection attempts: the limit.
    pending_limits: HashMap<SocketAddr, (Arc<balance::Stats>, u32)>,
    /// This sidecar's own limit, carried from snapshot to snapshot.
    pub regex_limit: RegexLimit,
    /// Statistics of endpoints that left (unhealthy, restarted), kept for
    /// `RETAIN` so one that comes back resumes with what was learned
    /// instead of an unmeasured estimate that P2C would avoid.
    retired: HashMap<SocketAddr, (Arc<balance::Stats>, Instant)>,
}

/// How long a departed endpoint's statistics are kept.
const RETAIN: std::time::Duration = std::time::Duration::from_secs(300);

/// Most bytes one compiled route regex may take in this sidecar (a memory
/// guard, like Envoy's `re2.max_program_size`). The control plane cannot
/// know each sidecar's limit, so a regex over it is NACKed, naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegexLimit(pub usize);

impl Default for RegexLimit {
    fn default() -> Self {
        RegexLimit(1024 * 1024)
    }
}

impl State {
    /// The empty state of a sidecar with this regex limit.
    pub fn with_regex_limit(limit: RegexLimit) -> State {
        State {
            regex_limit: limit,
            ..State::default()
        }
    }
}

/// Routes for one service.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Content version.
    pub resource_version: String,
    /// In order; first match wins.
    pub routes: Vec<Route>,
    /// Who may call it; `None` means everyone.
    pub authorization: Option<Authorization>,
}

/// An authorization policy, enforced on inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Policy name, for logs.
    pub policy: String,
    /// Any match allows.
    pub allow: Vec<Allow>,
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Exactly this SPIFFE ID.
    Identity(String),
    /// Any service account in this namespace.
    Namespace(String),
    /// Any SPIFFE ID with this suffix.
    Suffix(String),
}

impl Authorization {
    /// Whether `client` (a verified SPIFFE ID, or `None` for plaintext) may
    /// call; on refusal, the reason.
    pub fn check(&self, client: Option<&str>) -> Result<(), String> {
        let Some(id) = client else {
            return Err(format!(
                "policy {} requires an mTLS client identity; the caller has none",
                self.policy
            ));
        };
        let namespace = id
            .split("/ns/")
            .nth(1)
            .and_then(|rest| rest.split('/').next());
        let allowed = self.allow.iter().any(|rule| match rule {
            Allow::Identity(exact) => id == exact,
            Allow::Namespace(ns) => namespace == Some(ns.as_str()),
            Allow::Suffix(suffix) => id.ends_with(suffix.as_str()),
        });
        if allowed {
            Ok(())
        } else {
            Err(format!("policy {} does not allow {id}", self.policy))
        }
    }

    fn from_proto(a: &pb::Authorization) -> Authorization {
        use pb::allow_rule::Match;
        Authorization {
            policy: a.policy.clone(),
            allow: a
                .allow
                .iter()
                .filter_map(|r| match r.r#match.as_ref()? {
                    Match::Identity(v) => Some(Allow::Identity(v.clone())),
                    Match::Namespace(v) => Some(Allow::Namespace(v.clone())),
                    Match::IdentitySuffix(v) => Some(Allow::Suffix(v.clone())),
                })
                .collect(),
        }
    }
}

/// The ready endpoints of one backend service.
#[derive(Debug)]
pub struct Cluster {
    /// `<service>.<namespace>`.
    pub name: String,
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
    pub version: String,
    /// SPIFFE ID it presents over mTLS; `None` means plaintext.
    pub identity: Option<String>,
}

/// Why a snapshot was rejected (one line per bad resource).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.join("; "))]
pub struct Rejected(pub Vec<String>);

impl Cluster {
    /// An endpoint by the backend's policy, skipping ejected ones and, when
    /// there is a choice, `avoid`.
    pub fn pick(&self, avoid: Option<usize>) -> Result<usize, balance::NoPick> {
        balance::pick(&self.stats, &self.policy, &self.rr, avoid)
    }
}

impl Service {
    /// The first route matching the request.
    pub fn route<B>(&self, req: &http::Request<B>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req))
    }
}

impl State {
    /// The service an authority names, with or without port. Short names
    /// resolve in the sidecar's own namespace, as Kubernetes DNS does.
    pub fn resolve(&self, authority: &str) -> Option<&Arc<Service>> {
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        self.by_host.get(host).or_else(|| {
            // Avoid allocating on the hot path unless the host needs lowercasing.
            if host.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&host.to_ascii_lowercase())
            } else {
                None
            }
        })
    }

    /// The connection-attempt limit for `addr`, with its statistics, if its
    /// backend sets one.
    pub fn pending_limit(&self, addr: &SocketAddr) -> Option<&(Arc<balance::Stats>, u32)> {
        self.pending_limits.get(addr)
    }

    /// The identity the endpoint at `addr` must present, if it speaks mTLS.
    pub fn identity_of(&self, addr: &SocketAddr) -> Option<&str> {
        self.identities.get(addr).map(String::as_str)
    }

    /// Converts a snapshot. `namespace` is the sidecar's own, for short names.
    /// Statistics, in-flight counts and retry budgets carry over from `prev`.
    pub fn from_proto(
        resp: &pb::DiscoveryResponse,
        namespace: &str,
        prev: &State,
    ) -> Result<State, Rejected> {
        let mut carried = prev.carried();
        let mut errors = Vec::new();
        // An empty version is what "no config yet" looks like; never accept it as config.
        if resp.version_info.is_empty() {
            errors.push("snapshot has no version_info".to_string());
        }
        let mut clusters = BTreeMap::new();
        let mut identities = HashMap::new();
        for c in &resp.clusters {
            let mut endpoints = Vec::with_capacity(c.endpoints.len());
            let mut stats = Vec::with_capacity(c.endpoints.len());
            for e in &c.endpoints {
                match (
                    e.address.parse::<SocketAddr>(),
                    e.address.parse::<Authority>(),
                ) {
                    (Ok(addr), Ok(authority)) => {
                        let identity = (!e.identity.is_empty()).then(|| e.identity.clone());
                        if let Some(id) = &identity {
                            if !id.starts_with("spiffe://") {
                                errors.push(format!("cluster {}: endpoint {addr} identity {id:?} is not a SPIFFE ID", c.name));
                            }
                            identities.insert(addr, id.clone());
                        }
                        // One record per instance, shared by every cluster it is in
                        // (echo and echo-v1), so what one learns the other knows.
                        stats.push(Arc::clone(carried.stats.entry(addr).or_default()));
                        endpoints.push(Endpoint {
                            addr,
                            authority,
                            instance_id: e.instance_id.clone(),
                            version: e.version.clone(),
                            identity,
                        })
                    }
                    _ => errors.push(format!(
                        "cluster {}: endpoint address {:?} is not ip:port",
                        c.name, e.address
                    )),
                }
            }
            if clusters
                .insert(
                    c.name.clone(),
                    Arc::new(Cluster {
                        name: c.name.clone(),
                        resource_version: c.resource_version.clone(),
                        endpoints,
                        stats,
                        policy: balance::Policy::from_proto(c.policy.as_ref()),
                        in_flight: carried.in_flight.get(&c.name).cloned().unwrap_or_default(),
                        rr: AtomicU64::new(0),
                    }),
                )
                .is_some()
            {
                errors.push(format!("cluster {} appears twice", c.name));
            }
        }
        let mut services = Vec::new();
        let mut by_host = HashMap::new();
        for s in &resp.services {
            let id = format!("service {}/{}", s.namespace, s.name);
            if s.name.is_empty() || s.namespace.is_empty() {
                errors.push(format!("{id}: name and namespace are required"));
                continue;
            }
            if s.routes.is_empty() {
                errors.push(format!("{id}: has no routes"));
                continue;
            }
            let cx = route::Context {
                clusters: &clusters,
                budgets: &carried.budgets,
                regex_limit: prev.regex_limit.0,
            };
            let mut routes = Vec::new();
            for r in &s.routes {
                match Route::from_proto(r, &id, &cx) {
                    Ok(r) => routes.push(r),
                    Err(mut e) => errors.append(&mut e),
                }
            }
            let svc = Arc::new(Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                resource_version: s.resource_version.clone(),
                routes,
                authorization: s.authorization.as_ref().map(Authorization::from_proto),
            });
            let fq = format!("{}.{}", s.name, s.namespace);
            for host in [
                format!("{fq}.svc.cluster.local"),
                format!("{fq}.svc"),
                fq.clone(),
            ] {
                by_host.insert(host, svc.clone());
            }
            if s.namespace == namespace {
                by_host.insert(s.name.clone(), svc.clone());
            }
            services.push(svc);
        }
        if !errors.is_empty() {
            return Err(Rejected(errors));
        }
        let mut pending_limits: HashMap<SocketAddr, (Arc<balance::Stats>, u32)> = HashMap::new();
        for c in clusters.values().filter(|c| c.policy.max_pending > 0) {
            for (e, st) in c.endpoints.iter().zip(&c.stats) {
                let limit = c.policy.max_pending;
                let entry = pending_limits
                    .entry(e.addr)
                    .or_insert_with(|| (Arc::clone(st), limit));
                entry.1 = entry.1.min(limit);
            }
        }
        // Whatever was carried and is not in this snapshot retires now (or
        // stays retired since when it left), until RETAIN runs out.
        let now = Instant::now();
        let retired = carried
            .stats
            .into_iter()
            .filter(|(addr, _)| !pending_limits.contains_key(addr))
            .map(|(addr, st)| {
                let since = prev.retired.get(&addr).map_or(now, |(_, t)| *t);
                (addr, (st, since))
            })
            .filter(|(_, (_, since))| now.duration_since(*since) < RETAIN)
            .collect();
        Ok(State {
            retired,
            version: resp.version_info.clone(),
            by_host,
            services,
            clusters,
            identities,
            pending_limits,
            regex_limit: prev.regex_limit,
        })
    }

    /// What a new snapshot inherits: endpoint statistics by address,
    /// in-flight counts by cluster, and retry budgets by `service/route`.
    fn carried(&self) -> Carried {
        let mut c = Carried::default();
        for (addr, (st, _)) in &self.retired {
            c.stats.insert(*addr, Arc::clone(st));
        }
        for cl in self.clusters.values() {
            c.in_flight
                .insert(cl.name.clone(), Arc::clone(&cl.in_flight));
            for (e, st) in cl.endpoints.iter().zip(&cl.stats) {
                c.stats.insert(e.addr, Arc::clone(st));
            }
        }
        for s in &self.services {
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
        Dump {
            version: self.version.clone(),
            services: self
                .services
                .iter()
                .map(|s| DumpService {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    resource_version: s.resource_version.clone(),
                    routes: s.routes.iter().map(Route::dump).collect(),
                })
                .collect(),
            clusters: self
                .clusters
                .values()
                .map(|c| DumpCluster {
                    name: c.name.clone(),
                    resource_version: c.resource_version.clone(),
                    policy: c.policy.clone(),
                    endpoints: c
                        .endpoints
                        .iter()
                        .zip(&c.stats)
                        .map(|(e, st)| DumpEndpoint {
                            stats: st.dump(),
                            address: e.addr.to_string(),
                            instance_id: e.instance_id.clone(),
                            version: e.version.clone(),
                            identity: e.identity.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct Carried {
    stats: HashMap<SocketAddr, Arc<balance::Stats>>,
    in_flight: HashMap<String, Arc<AtomicU32>>,
    budgets: HashMap<String, Arc<Budget>>,
}

/// `/config_dump` body.
#[derive(Debug, Serialize)]
pub struct Dump {
    version: String,
    services: Vec<DumpService>,
    clusters: Vec<DumpCluster>,
}

#[derive(Debug, Serialize)]
struct DumpService {
    name: String,
    namespace: String,
    resource_version: String,
    routes: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct DumpCluster {
    name: String,
    resource_version: String,
    policy: balance::Policy,
    endpoints: Vec<DumpEndpoint>,
}

#[derive(Debug, Serialize)]
struct DumpEndpoint {
    address: String,
    instance_id: String,
    version: String,
    identity: Option<String>,
    stats: balance::StatsDump,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(v1_eps: &[&str], v2_eps: &[&str], w1: u32, w2: u32) -> pb::DiscoveryResponse {
        let cluster = |name: &str, eps: &[&str]| pb::Cluster {
            name: name.into(),
            resource_version: "r".into(),
            endpoints: eps
                .iter()
                .map(|a| pb::Endpoint {
                    address: (*a).into(),
                    instance_id: format!("i-{a}"),
                    version: String::new(),
                    identity: String::new(),
                })
                .collect(),
            policy: None,
        };
        pb::DiscoveryResponse {
            version_info: "7".into(),
            nonce: "7.1".into(),
            services: vec![pb::ServiceConfig {
                name: "echo".into(),
                namespace: "default".into(),
                resource_version: "r".into(),
                authorization: None,
                routes: vec![pb::Route {
                    name: "split".into(),
                    backends: vec![
                        pb::WeightedBackend {
                            cluster: "echo-v1.default".into(),
                            weight: w1,
                        },
                        pb::WeightedBackend {
                            cluster: "echo-v2.default".into(),
                            weight: w2,
                        },
                    ],
                    ..Default::default()
                }],
            }],
            clusters: vec![
                cluster("echo-v1.default", v1_eps),
                cluster("echo-v2.default", v2_eps),
            ],
        }
    }

    #[test]
    fn resolves_every_name_form() {
        let s = State::from_proto(
            &snapshot(&["127.0.0.1:1"], &[], 1, 1),
            "default",
            &State::default(),
        )
        .unwrap();
        for host in [
            "echo",
            "echo:80",
            "ECHO",
            "echo.default",
            "echo.default.svc.cluster.local:8080",
        ] {
            assert!(s.resolve(host).is_some(), "{host}");
        }
        let other = State::from_proto(
            &snapshot(&["127.0.0.1:1"], &[], 1, 1),
            "prod",
            &State::default(),
        )
        .unwrap();
        assert!(other.resolve("echo").is_none());
        assert!(other.resolve("echo.default").is_some());
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let s = State::from_proto(
            &snapshot(&["127.0.0.1:1"], &["127.0.0.1:2"], 80, 20),
            "default",
            &State::default(),
        )
        .unwrap();
        let route = s
            .resolve("echo")
            .unwrap()
            .route(&http::Request::new(()))
            .unwrap();
        let n = 20_000;
        let v2 = (0..n)
            .filter(|_| route.pick_backend().unwrap().cluster.name == "echo-v2.default")
            .count();
        // Binomial(20000, 0.2): sd ≈ 57; 6 sd either side.
        assert!((3660..=4340).contains(&v2), "{v2}");
    }

    #[test]
    fn empty_backend_hands_its_share_on() {
        let s = State::from_proto(
            &snapshot(&[], &["127.0.0.1:2"], 100, 0),
            "default",
            &State::default(),
        )
        .unwrap();
        let route = s
            .resolve("echo")
            .unwrap()
            .route(&http::Request::new(()))
            .unwrap();
        for _ in 0..100 {
            assert_eq!(
                route.pick_backend().unwrap().cluster.name,
                "echo-v2.default"
            );
        }
        let none =
            State::from_proto(&snapshot(&[], &[], 1, 1), "default", &State::default()).unwrap();
        assert!(
            none.resolve("echo")
                .unwrap()
                .route(&http::Request::new(()))
                .unwrap()
                .pick_backend()
                .is_none()
        );
    }

    #[test]
    fn authorization_matches_identity_namespace_and_suffix() {
        let auth = Authorization {
            policy: "p".into(),
            allow: vec![
                Allow::Identity("spiffe://td/ns/default/sa/client".into()),
                Allow::Namespace("prod".into()),
                Allow::Suffix("/sa/web".into()),
            ],
        };
        for ok in [
            "spiffe://td/ns/default/sa/client",
            "spiffe://td/ns/prod/sa/any",
            "spiffe://td/ns/dev/sa/web",
        ] {
            assert_eq!(auth.check(Some(ok)), Ok(()), "{ok}");
        }
        let denied = auth
            .check(Some("spiffe://td/ns/default/sa/other"))
            .unwrap_err();
        assert!(
            denied.contains("does not allow spiffe://td/ns/default/sa/other"),
            "{denied}"
        );
        assert!(
            auth.check(None)
                .unwrap_err()
                .contains("requires an mTLS client identity")
        );
        // "prod" must not match "production" or a service account named prod.
        assert!(auth.check(Some("spiffe://td/ns/production/sa/x")).is_err());
        assert!(auth.check(Some("spiffe://td/ns/dev/sa/prod")).is_err());
        let nobody = Authorization {
            policy: "p".into(),
            allow: vec![],
        };
        assert!(
            nobody
                .check(Some("spiffe://td/ns/default/sa/client"))
                .is_err()
        );
    }

    #[test]
    fn round_robin_over_endpoints() {
        let s = State::from_proto(
            &snapshot(&["127.0.0.1:1", "127.0.0.1:2"], &[], 1, 0),
            "default",
            &State::default(),
        )
        .unwrap();
        let c = &s.clusters["echo-v1.default"];
        // Unmeasured endpoints cost the same, so P2C spreads over both.
        let firsts = (0..200).filter(|_| c.pick(None) == Ok(0)).count();
        assert!((40..=160).contains(&firsts), "{firsts}");
    }

    #[test]
    fn statistics_survive_a_new_snapshot() {
        let snap = snapshot(&["127.0.0.1:1", "127.0.0.1:2"], &[], 1, 0);
        let a = State::from_proto(&snap, "default", &State::default()).unwrap();
        let b = State::from_proto(&snap, "default", &a).unwrap();
        let (ca, cb) = (
            &a.clusters["echo-v1.default"],
            &b.clusters["echo-v1.default"],
        );
        assert!(Arc::ptr_eq(&ca.stats[1], &cb.stats[1]));
        // The same instance in two clusters has one record.
        let snap = snapshot(&["127.0.0.1:1"], &["127.0.0.1:1"], 1, 1);
        let c = State::from_proto(&snap, "default", &State::default()).unwrap();
        assert!(Arc::ptr_eq(
            &c.clusters["echo-v1.default"].stats[0],
            &c.clusters["echo-v2.default"].stats[0]
        ));
        assert!(Arc::ptr_eq(&ca.in_flight, &cb.in_flight));
    }

    /// An endpoint that leaves (health check failed) and comes back keeps
    /// what was learned about it; a never-seen one starts fresh.
    #[test]
    fn a_returning_endpoint_resumes_its_statistics() {
        let both = snapshot(&["127.0.0.1:1", "127.0.0.1:2"], &[], 1, 0);
        let one = snapshot(&["127.0.0.1:2"], &[], 1, 0);
        let a = State::from_proto(&both, "default", &State::default()).unwrap();
        let gone = State::from_proto(&one, "default", &a).unwrap();
        let still_gone = State::from_proto(&one, "default", &gone).unwrap();
        let back = State::from_proto(&both, "default", &still_gone).unwrap();
        let stats = |s: &State, i: usize| Arc::clone(&s.clusters["echo-v1.default"].stats[i]);
        assert!(Arc::ptr_eq(&stats(&a, 0), &stats(&back, 0)));
        assert!(Arc::ptr_eq(&stats(&a, 1), &stats(&back, 1)));
        let fresh = State::from_proto(&both, "default", &State::default()).unwrap();
        assert!(!Arc::ptr_eq(&stats(&a, 0), &stats(&fresh, 0)));
    }

    #[test]
    fn routes_match_path_method_and_headers() {
        use pb::request_match::Path;
        let mut snap = snapshot(&["127.0.0.1:1"], &["127.0.0.1:2"], 1, 0);
        let mut canary = snap.services[0].routes[0].clone();
        canary.name = "canary".into();
        canary.backends[0].weight = 0;
        canary.backends[1].weight = 1;
        canary.matches = vec![pb::RequestMatch {
            path: Some(Path::PathPrefix("/api".into())),
            method: "GET".into(),
            headers: vec![pb::HeaderMatch {
                name: "x-canary".into(),
                value: Some(pb::header_match::Value::Regex("true|yes".into())),
            }],
        }];
        snap.services[0].routes.insert(0, canary);
        let s = State::from_proto(&snap, "default", &State::default()).unwrap();
        let svc = s.resolve("echo").unwrap();
        let req = |m: &str, path: &str, canary: Option<&str>| {
            let mut b = http::Request::builder().method(m).uri(path);
            if let Some(v) = canary {
                b = b.header("x-canary", v);
            }
            b.body(()).unwrap()
        };
        let name = |r: http::Request<()>| svc.route(&r).unwrap().name.clone();
        assert_eq!(name(req("GET", "/api/x", Some("yes"))), "canary");
        assert_eq!(name(req("GET", "/api", Some("true"))), "canary");
        assert_eq!(name(req("GET", "/apix", Some("true"))), "split");
        assert_eq!(name(req("GET", "/api", Some("truer"))), "split");
        assert_eq!(name(req("POST", "/api", Some("true"))), "split");
        assert_eq!(name(req("GET", "/api", None)), "split");
    }

    #[test]
    fn a_bad_route_policy_rejects_the_snapshot_naming_the_route() {
        let mut snap = snapshot(&["127.0.0.1:1"], &[], 1, 0);
        let r = &mut snap.services[0].routes[0];
        r.matches = vec![pb::RequestMatch {
            headers: vec![pb::HeaderMatch {
                name: "x-canary".into(),
                value: Some(pb::header_match::Value::Regex("([a-z".into())),
            }],
            ..Default::default()
        }];
        r.retry = Some(pb::RetryPolicy {
            max_retries: 1,
            retry_on: vec!["sometimes".into()],
            ..Default::default()
        });
        r.mirror = Some(pb::Mirror {
            cluster: "ghost.default".into(),
            percent: 5.0,
        });
        let err = State::from_proto(&snap, "default", &State::default()).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        for e in &err.0 {
            assert!(e.starts_with("service default/echo: route split:"), "{e}");
        }
        let text = err.to_string();
        assert!(
            text.contains("does not compile")
                && text.contains("sometimes")
                && text.contains("ghost"),
            "{text}"
        );
    }

    #[test]
    fn bad_resources_reject_the_snapshot_with_every_reason() {
        let mut snap = snapshot(&["not-an-address"], &[], 1, 1);
        snap.services[0].routes[0]
            .backends
            .push(pb::WeightedBackend {
                cluster: "ghost.default".into(),
                weight: 1,
            });
        let err = State::from_proto(&snap, "default", &State::default()).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.to_string().contains("not-an-address"));
        assert!(err.to_string().contains("ghost.default"));
    }
}
