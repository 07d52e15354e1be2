//! `release status` and the warnings of an apply: where a service's traffic
//! really goes, given the weights in force and which backends have ready
//! endpoints. Read-only views over the registry and the rules.

use crate::registry::Catalog;
use crate::rules::{RuleSet, Split};
use mesh_proto::v1 as pb;

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

/// Warnings worth showing on apply or shift: backends (or roots) that
/// nothing serves yet. `what` names the rule ("TrafficSplit default/echo").
pub fn warnings(reg: &dyn Catalog, what: &str, split: &Split) -> Vec<String> {
    let mut out = Vec::new();
    if !reg.knows(&split.namespace, &split.service) {
        out.push(format!(
            "{what}: root service {:?} has no instances yet",
            split.service
        ));
    }
    for b in &split.backends {
        if !reg.knows(&split.namespace, &b.service) {
            out.push(format!(
                "{what}: backend {:?} has no instances yet; its share goes to the other backends until it has ready endpoints",
                b.service
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
    reg: &dyn Catalog,
    rules: &RuleSet,
    namespace: &str,
    service: &str,
) -> Result<pb::ReleaseStatusResponse, Error> {
    let split = rules.for_service(namespace, service);
    // A service routed by HTTPRoute: its release rule holds the weights a
    // release moves.
    let http_route = rules
        .http_route_for(namespace, service)
        .and_then(|r| Some((r, &r.rules[r.release_rule()?])));
    let routed_by = match (split, http_route) {
        (Some(s), _) => format!("TrafficSplit {}/{}", s.namespace, s.name),
        (None, Some((r, rule))) => {
            format!("HTTPRoute {}/{} rule {}", r.namespace, r.name, rule.name)
        }
        (None, None) => String::new(),
    };
    let http_route = http_route.map(|(_, rule)| rule);
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
        routed_by,
        backends,
        warnings,
        version: String::new(),
    })
}
