//! Incremental discovery responses, both halves: what changed between two
//! snapshots (the control plane sends it) and the full snapshot it gives on
//! top of the one before (the sidecar applies it). One definition, so the
//! planes cannot disagree on what a delta means.
//!
//! A response with `base_version` set carries only the services and
//! clusters that differ from that version, and the keys of those that are
//! gone; everything else stays as it was. A full response leaves
//! `base_version` empty.

use crate::v1::{Cluster, DiscoveryResponse, ServiceConfig};
use std::borrow::Borrow;
use std::collections::BTreeMap;

/// A service's key in `removed_services`: `<namespace>/<name>`.
pub fn service_key(s: &ServiceConfig) -> String {
    format!("{}/{}", s.namespace, s.name)
}

/// The incremental response taking the snapshot `base` (at `base_version`)
/// to `next` (at `version`): the services and clusters of `next` that
/// `base` lacks or holds with other content, and the keys of those `next`
/// lacks. The nonce is left to the caller.
pub fn between<S: Borrow<ServiceConfig>, C: Borrow<Cluster>>(
    base: (&[S], &[C]),
    next: (&[S], &[C]),
    base_version: &str,
    version: &str,
) -> DiscoveryResponse {
    let (services, gone) = changed(base.0, next.0, |s| (s.namespace.as_str(), s.name.as_str()));
    let removed_services = gone.into_iter().map(service_key).collect();
    let (clusters, gone) = changed(base.1, next.1, |c| c.name.as_str());
    let removed_clusters = gone.into_iter().map(|c| c.name.clone()).collect();
    DiscoveryResponse {
        version_info: version.to_string(),
        nonce: String::new(),
        services,
        clusters,
        base_version: base_version.to_string(),
        removed_services,
        removed_clusters,
        unknown: Vec::new(),
    }
}

/// Whether an incremental response changes nothing.
pub fn is_empty(delta: &DiscoveryResponse) -> bool {
    delta.services.is_empty()
        && delta.clusters.is_empty()
        && delta.removed_services.is_empty()
        && delta.removed_clusters.is_empty()
}

/// What of `next` differs from `base` (by key and content), and what of
/// `base` `next` lacks. Keys are borrowed: this runs on every change of a
/// mesh of thousands of services. A resource shared by both (the same
/// one, behind an `Arc`) is the same without a look at its content.
fn changed<'a, T: Clone + PartialEq + 'a, B: Borrow<T>, K: Ord>(
    base: &'a [B],
    next: &'a [B],
    key: impl Fn(&'a T) -> K,
) -> (Vec<T>, Vec<&'a T>) {
    let mut before: BTreeMap<K, &T> = base.iter().map(|t| (key(t.borrow()), t.borrow())).collect();
    let mut out = Vec::new();
    for t in next.iter().map(Borrow::borrow) {
        let same = before
            .remove(&key(t))
            .is_some_and(|b| std::ptr::eq(b, t) || b == t);
        if !same {
            out.push(t.clone());
        }
    }
    (out, before.into_values().collect())
}

/// The full snapshot `delta` describes on top of `base`, the last full
/// snapshot applied. Refused, naming why, when `delta` builds on another
/// version than `base`'s or removes what `base` does not hold: the sidecar
/// then keeps `base` and says so, and the control plane answers in full.
/// Services come out ordered by key and clusters by name, as the control
/// plane orders a full snapshot.
pub fn apply(
    base: &DiscoveryResponse,
    delta: &DiscoveryResponse,
) -> Result<DiscoveryResponse, String> {
    if delta.base_version != base.version_info {
        return Err(format!(
            "incremental response {} builds on version {}, but this sidecar runs version {}",
            delta.version_info, delta.base_version, base.version_info
        ));
    }
    let services = merge(
        &base.services,
        &delta.services,
        &delta.removed_services,
        service_key,
    )
    .map_err(|k| {
        format!(
            "incremental response {} removes service {k}, which version {} does not hold",
            delta.version_info, base.version_info
        )
    })?;
    let clusters = merge(
        &base.clusters,
        &delta.clusters,
        &delta.removed_clusters,
        |c| c.name.clone(),
    )
    .map_err(|k| {
        format!(
            "incremental response {} removes cluster {k}, which version {} does not hold",
            delta.version_info, base.version_info
        )
    })?;
    Ok(DiscoveryResponse {
        version_info: delta.version_info.clone(),
        nonce: delta.nonce.clone(),
        services,
        clusters,
        base_version: String::new(),
        removed_services: Vec::new(),
        removed_clusters: Vec::new(),
        // Not a resource: each response says it anew.
        unknown: delta.unknown.clone(),
    })
}

/// `base` with `removed` taken out and `changed` put in, ordered by key;
/// the first removed key `base` lacks is the error.
fn merge<T: Clone>(
    base: &[T],
    changed: &[T],
    removed: &[String],
    key: impl Fn(&T) -> String,
) -> Result<Vec<T>, String> {
    let mut all: BTreeMap<String, T> = base.iter().map(|t| (key(t), t.clone())).collect();
    for k in removed {
        if all.remove(k).is_none() {
            return Err(k.clone());
        }
    }
    for t in changed {
        all.insert(key(t), t.clone());
    }
    Ok(all.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Endpoint;

    fn service(ns: &str, name: &str, rv: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            namespace: ns.into(),
            resource_version: rv.into(),
            ..Default::default()
        }
    }

    fn cluster(name: &str, addrs: &[&str]) -> Cluster {
        Cluster {
            name: name.into(),
            endpoints: addrs
                .iter()
                .map(|a| Endpoint {
                    address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn full(
        version: &str,
        services: Vec<ServiceConfig>,
        clusters: Vec<Cluster>,
    ) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            services,
            clusters,
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_carries_only_what_changed_and_applies_back_to_the_next_snapshot() {
        let base = full(
            "1",
            vec![
                service("a", "x", "1"),
                service("a", "y", "1"),
                service("b", "x", "1"),
            ],
            vec![
                cluster("x.a", &["10.0.0.1:80"]),
                cluster("y.a", &["10.0.0.2:80"]),
            ],
        );
        let next = full(
            "2",
            vec![
                service("a", "x", "2"),
                service("b", "x", "1"),
                service("c", "z", "1"),
            ],
            vec![
                cluster("x.a", &["10.0.0.1:80", "10.0.0.3:80"]),
                cluster("y.a", &["10.0.0.2:80"]),
            ],
        );
        let d = between(
            (&base.services, &base.clusters),
            (&next.services, &next.clusters),
            "1",
            "2",
        );
        let keys: Vec<String> = d.services.iter().map(service_key).collect();
        assert_eq!(keys, ["a/x", "c/z"]);
        assert_eq!(d.removed_services, ["a/y"]);
        assert_eq!(d.clusters.len(), 1);
        assert_eq!(d.clusters[0].name, "x.a");
        assert!(d.removed_clusters.is_empty());
        assert!(!is_empty(&d));
        assert_eq!(apply(&base, &d).unwrap(), next);
    }

    #[test]
    fn an_unchanged_snapshot_gives_an_empty_delta() {
        let s = full(
            "1",
            vec![service("a", "x", "1")],
            vec![cluster("x.a", &["10.0.0.1:80"])],
        );
        let d = between(
            (&s.services, &s.clusters),
            (&s.services, &s.clusters),
            "1",
            "2",
        );
        assert!(d.services.is_empty() && d.clusters.is_empty());
        assert!(d.removed_services.is_empty() && d.removed_clusters.is_empty());
        assert!(is_empty(&d));
        assert_eq!(apply(&s, &d).unwrap().services, s.services);
    }

    #[test]
    fn a_delta_on_another_base_is_refused_naming_both_versions() {
        let base = full("3", vec![], vec![]);
        let d = DiscoveryResponse {
            version_info: "5".into(),
            base_version: "4".into(),
            ..Default::default()
        };
        let e = apply(&base, &d).unwrap_err();
        assert!(
            e.contains("builds on version 4") && e.contains("runs version 3"),
            "{e}"
        );
    }

    #[test]
    fn removing_what_the_base_lacks_is_refused() {
        let base = full("3", vec![service("a", "x", "1")], vec![]);
        let d = DiscoveryResponse {
            version_info: "4".into(),
            base_version: "3".into(),
            removed_clusters: vec!["gone.a".into()],
            ..Default::default()
        };
        let e = apply(&base, &d).unwrap_err();
        assert!(e.contains("removes cluster gone.a"), "{e}");
    }
}
