//! PURE: registry + rules → the config every sidecar receives, and the
//! read-only views `meshctl` shows. No I/O, no locks, no clocks.

use crate::registry::{Registry, ServiceKey};
use crate::rules::{RuleSet, Split};
use mesh_proto::v1 as pb;
use prost::Message;
use std::collections::BTreeMap;

/// The discovery payload shared by every subscriber of one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// Route config per service.
    pub services: Vec<pb::ServiceConfig>,
    /// Ready endpoints per backend.
    pub clusters: Vec<pb::Cluster>,
}

/// Cluster name of a service: `<service>.<namespace>`.
pub fn cluster_name(namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}")
}

/// Builds the view from the catalog and the splits.
pub fn build(reg: &Registry, rules: &RuleSet) -> View {
    let catalog = reg.services();
    let mut roots: std::collections::BTreeSet<ServiceKey> = catalog.keys().cloned().collect();
    // A routed or protected service is config-worthy even before it has instances.
    roots.extend(
        rules
            .splits
            .values()
            .map(|s| (s.namespace.clone(), s.service.clone()))
            .chain(
                rules
                    .http_routes
                    .values()
                    .map(|r| (r.namespace.clone(), r.service.clone())),
            )
            .chain(
                rules
                    .policies
                    .values()
                    .map(|p| (p.namespace.clone(), p.service.clone())),
            ),
    );
    let mut clusters: BTreeMap<String, pb::Cluster> = BTreeMap::new();
    let mut cluster_for = |ns: &str, svc: &str| {
        let name = cluster_name(ns, svc);
        clusters.entry(name.clone()).or_insert_with(|| {
            let instances = catalog.get(&(ns.to_string(), svc.to_string()));
            // A version subset (echo-v1) takes its service's TrafficPolicy.
            let parent = instances
                .and_then(|insts| insts.iter().find(|i| i.service != svc))
                .map(|i| i.service.as_str());
            let endpoints = instances
                .map(|insts| {
                    insts
                        .iter()
                        .filter(|i| i.ready)
                        .map(|i| pb::Endpoint {
                            address: i.address.clone(),
                            instance_id: i.instance_id.clone(),
                            version: i.version.clone(),
                            identity: i.identity.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut c = pb::Cluster {
                name: name.clone(),
                resource_version: String::new(),
                endpoints,
                policy: Some(crate::routing::backend_policy(rules, ns, svc, parent)),
            };
            c.resource_version = content_version(&c);
            c
        });
        name
    };
    let mut services = Vec::new();
    for (ns, svc) in roots {
        let routes =
            crate::routing::routes_for(rules, &ns, &svc, &mut |backend| cluster_for(&ns, backend));
        let authorization = rules
            .policies
            .values()
            .find(|p| p.namespace == ns && p.service == svc)
            .map(authorization);
        let mut sc = pb::ServiceConfig {
            name: svc,
            namespace: ns,
            resource_version: String::new(),
            routes,
            authorization,
        };
        sc.resource_version = content_version(&sc);
        services.push(sc);
    }
    View {
        services,
        clusters: clusters.into_values().collect(),
    }
}

/// The proto form of a policy.
fn authorization(p: &crate::policy::Policy) -> pb::Authorization {
    use pb::allow_rule::Match;
    pb::Authorization {
        policy: p.name.clone(),
        allow: p
            .allow
            .iter()
            .filter_map(|r| {
                let m = match (&r.identity, &r.namespace, &r.identity_suffix) {
                    (Some(id), _, _) => Match::Identity(id.clone()),
                    (_, Some(ns), _) => Match::Namespace(ns.clone()),
                    (_, _, Some(suffix)) => Match::IdentitySuffix(suffix.clone()),
                    _ => return None,
                };
                Some(pb::AllowRule { r#match: Some(m) })
            })
            .collect(),
    }
}

/// A stable content hash (FNV-1a over the encoded message), so a resource's
/// version changes exactly when its content does.
fn content_version<M: Message>(m: &M) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in m.encode_to_vec() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Shares in percent after backends without ready endpoints hand theirs on.
/// Mirrors what the sidecar does per request, so `release status` tells the
/// truth about where traffic goes.
pub fn effective_shares(backends: &[(u32, bool)]) -> Vec<f64> {
    let live: u64 = backends
        .iter()
        .filter(|(_, up)| *up)
        .map(|(w, _)| u64::from(*w))
        .sum();
    let live_count = backends.iter().filter(|(_, up)| *up).count();
    backends
        .iter()
        .map(|(w, up)| {
            if !*up {
                0.0
            } else if live == 0 {
                100.0 / live_count as f64
            } else {
                100.0 * f64::from(*w) / live as f64
            }
        })
        .collect()
}

/// Warnings worth showing on apply: backends (or roots) that nothing serves yet.
pub fn warnings(reg: &Registry, split: &Split) -> Vec<String> {
    let mut out = Vec::new();
    if !reg.knows(&split.namespace, &split.service) {
        out.push(format!(
            "TrafficSplit {}/{}: root service {:?} has no instances yet",
            split.namespace, split.name, split.service
        ));
    }
    for b in &split.backends {
        if !reg.knows(&split.namespace, &b.service) {
            out.push(format!(
                "TrafficSplit {}/{}: backend {:?} has no instances yet; its share goes to the other backends until it has ready endpoints",
                split.namespace, split.name, b.service
            ));
        }
    }
    out
}

/// Errors from the read-only views.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Neither a split nor an instance names this service.
    #[error(
        "unknown service {namespace}/{service}: no TrafficSplit routes it and no instance serves it"
    )]
    UnknownService {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
    },
}

/// `release status`: weights, effective shares and endpoints per backend.
pub fn status(
    reg: &Registry,
    rules: &RuleSet,
    namespace: &str,
    service: &str,
) -> Result<pb::ReleaseStatusResponse, Error> {
    let split = rules.for_service(namespace, service);
    // A service routed by HTTPRoute: its catch-all rule (or its last) holds
    // the weights a release moves.
    let http_route = rules
        .http_routes
        .values()
        .find(|r| r.namespace == namespace && r.service == service)
        .and_then(|r| {
            r.rules
                .iter()
                .find(|x| x.matches.is_empty())
                .or(r.rules.last())
        });
    if split.is_none() && http_route.is_none() && !reg.knows(namespace, service) {
        return Err(Error::UnknownService {
            namespace: namespace.into(),
            service: service.into(),
        });
    }
    let catalog = reg.services();
    let pairs: Vec<(String, u32)> =
        match (split.map(|s| &s.backends), http_route.map(|r| &r.backends)) {
            (Some(backends), _) | (None, Some(backends)) => backends
                .iter()
                .map(|b| (b.service.clone(), b.weight))
                .collect(),
            (None, None) => vec![(service.to_string(), 1)],
        };
    let mut backends: Vec<pb::BackendStatus> = pairs
        .iter()
        .map(|(svc, w)| pb::BackendStatus {
            service: svc.clone(),
            weight: *w,
            effective_percent: 0.0,
            endpoints: catalog
                .get(&(namespace.to_string(), svc.clone()))
                .map(|insts| {
                    insts
                        .iter()
                        .map(|i| pb::EndpointStatus {
                            instance_id: i.instance_id.clone(),
                            address: i.address.clone(),
                            ready: i.ready,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let up: Vec<(u32, bool)> = backends
        .iter()
        .map(|b| (b.weight, b.endpoints.iter().any(|e| e.ready)))
        .collect();
    let shares = effective_shares(&up);
    let mut warnings = Vec::new();
    for (b, share) in backends.iter_mut().zip(shares) {
        b.effective_percent = share;
    }
    for (b, (w, live)) in backends.iter().zip(&up) {
        if !live && *w > 0 {
            warnings.push(format!(
                "backend {} has weight {} but NO READY ENDPOINTS: its share goes to the other backends",
                b.service, w
            ));
        }
    }
    if up.iter().all(|(_, live)| !live) {
        warnings.push(format!(
            "service {namespace}/{service} has NO READY ENDPOINTS at all: requests fail with 503"
        ));
    }
    Ok(pb::ReleaseStatusResponse {
        service: service.into(),
        namespace: namespace.into(),
        has_split: split.is_some() || http_route.is_some(),
        backends,
        warnings,
        version: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeId;
    use crate::rules::Backend;
    use std::time::Instant;

    fn reg_with(instances: &[(&str, &str, bool)]) -> Registry {
        let mut r = Registry::default();
        for (i, (id, v, ready)) in instances.iter().enumerate() {
            let node = NodeId {
                namespace: "default".into(),
                service: "echo".into(),
                version: (*v).into(),
                instance_id: (*id).into(),
            };
            r.heartbeat(
                &node,
                &format!("127.0.0.1:{}", 1000 + i),
                *ready,
                "",
                Instant::now(),
            )
            .unwrap();
        }
        r
    }

    fn rules(w1: u32, w2: u32) -> RuleSet {
        let s = Split {
            matches: Vec::new(),
            name: "echo".into(),
            namespace: "default".into(),
            service: "echo".into(),
            backends: vec![
                Backend {
                    service: "echo-v1".into(),
                    weight: w1,
                },
                Backend {
                    service: "echo-v2".into(),
                    weight: w2,
                },
            ],
        };
        let mut set = RuleSet::default();
        set.splits.insert(s.key(), s);
        set
    }

    #[test]
    fn split_routes_to_subset_clusters_with_only_ready_endpoints() {
        let reg = reg_with(&[("a", "v1", true), ("b", "v2", false)]);
        let v = build(&reg, &rules(80, 20));
        let echo = v.services.iter().find(|s| s.name == "echo").unwrap();
        let bs = &echo.routes[0].backends;
        assert_eq!(
            (bs[0].cluster.as_str(), bs[0].weight),
            ("echo-v1.default", 80)
        );
        let v2 = v
            .clusters
            .iter()
            .find(|c| c.name == "echo-v2.default")
            .unwrap();
        assert!(
            v2.endpoints.is_empty(),
            "unready instance must not be an endpoint"
        );
        // Subset services route to themselves.
        let sub = v.services.iter().find(|s| s.name == "echo-v1").unwrap();
        assert_eq!(sub.routes[0].backends[0].cluster, "echo-v1.default");
    }

    #[test]
    fn resource_versions_track_content() {
        let reg = reg_with(&[("a", "v1", true)]);
        let a = build(&reg, &rules(80, 20));
        let b = build(&reg, &rules(50, 50));
        let find = |v: &View| {
            v.services
                .iter()
                .find(|s| s.name == "echo")
                .unwrap()
                .resource_version
                .clone()
        };
        assert_ne!(find(&a), find(&b));
        assert_eq!(a.clusters, b.clusters);
    }

    #[test]
    fn empty_backends_hand_their_share_on() {
        assert_eq!(
            effective_shares(&[(80, true), (20, false)]),
            vec![100.0, 0.0]
        );
        assert_eq!(
            effective_shares(&[(100, false), (0, true)]),
            vec![0.0, 100.0]
        );
        assert_eq!(
            effective_shares(&[(50, true), (50, true)]),
            vec![50.0, 50.0]
        );
    }

    #[test]
    fn status_warns_loudly_about_a_canary_without_endpoints() {
        let reg = reg_with(&[("a", "v1", true)]);
        let st = status(&reg, &rules(90, 10), "default", "echo").unwrap();
        assert_eq!(st.backends[0].effective_percent, 100.0);
        assert!(st.warnings[0].contains("NO READY ENDPOINTS"));
        assert!(matches!(
            status(&reg, &rules(90, 10), "default", "nope"),
            Err(Error::UnknownService { .. })
        ));
    }
}
