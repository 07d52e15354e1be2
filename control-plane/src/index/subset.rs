//! PURE: which part of a view one sidecar receives. A sidecar subscribes to
//! services by the names its app uses (or to all of them); it receives
//! those services, its own (its inbound enforces its authorization), and
//! the clusters their routes name. What it already holds, resource by
//! resource, decides what a response carries.

use super::View;
use mesh_proto::v1 as pb;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// The most names one sidecar may subscribe to: more than any workload
/// calls, few enough that a hostile stream cannot make the control plane
/// hold an unbounded set.
pub const MAX_NAMES: usize = 10_000;

/// The longest name taken: a DNS name's limit (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 253;

/// A view's resources by every key a subscription or a reply uses.
#[derive(Debug, Default)]
pub struct Lookup {
    services: HashMap<(String, String), usize>,
    virtual_ips: HashMap<IpAddr, usize>,
    clusters: HashMap<String, usize>,
}

impl Lookup {
    /// The lookup of `view`.
    pub fn new(view: &View) -> Self {
        let mut l = Lookup::default();
        for (i, s) in view.services.iter().enumerate() {
            l.services.insert((s.namespace.clone(), s.name.clone()), i);
            for ip in s.virtual_ips.iter().filter_map(|v| v.parse().ok()) {
                l.virtual_ips.insert(ip, i);
            }
        }
        for (i, c) in view.clusters.iter().enumerate() {
            l.clusters.insert(c.name.clone(), i);
        }
        l
    }
}

/// What one sidecar subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Its own namespace (short names resolve there) and service.
    namespace: String,
    service: String,
    /// Every service.
    all: bool,
    /// The names it asked for, as it asked.
    names: BTreeSet<String>,
}

/// Why a subscription change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// A name longer than a DNS name can be.
    #[error("subscribed name is {0} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    /// An empty name.
    #[error("subscribed name is empty")]
    Empty,
    /// More names than one sidecar may hold.
    #[error("a sidecar may subscribe to at most {MAX_NAMES} names")]
    TooMany,
}

impl Subscription {
    /// The subscription of the sidecar of `namespace/service` that asked
    /// for `names` first: none means every service, as `*` does.
    pub fn new(namespace: &str, service: &str, names: &[String]) -> Result<Self, Refused> {
        let mut s = Subscription {
            namespace: namespace.to_string(),
            service: service.to_string(),
            all: names.is_empty(),
            names: BTreeSet::new(),
        };
        s.change(names, &[])?;
        Ok(s)
    }

    /// Adds `add` and drops `drop`, all or nothing; whether anything changed.
    pub fn change(&mut self, add: &[String], drop: &[String]) -> Result<bool, Refused> {
        for n in add {
            if n.is_empty() {
                return Err(Refused::Empty);
            }
            if n.len() > MAX_NAME_LEN {
                return Err(Refused::TooLong(n.len()));
            }
        }
        let mut names = self.names.clone();
        let mut all = self.all;
        for n in add {
            if n == "*" {
                all = true;
            } else {
                names.insert(n.to_ascii_lowercase());
            }
        }
        for n in drop {
            names.remove(&n.to_ascii_lowercase());
        }
        if names.len() > MAX_NAMES {
            return Err(Refused::TooMany);
        }
        let changed = names != self.names || all != self.all;
        (self.names, self.all) = (names, all);
        Ok(changed)
    }

    /// Whether it takes every service.
    pub fn all(&self) -> bool {
        self.all
    }

    /// Its services and clusters in `view` (indices, in view order), and
    /// the names that resolve to no service, in order.
    pub fn select(&self, view: &View, lookup: &Lookup) -> Selected {
        if self.all {
            return Selected {
                services: (0..view.services.len()).collect(),
                clusters: (0..view.clusters.len()).collect(),
                unknown: Vec::new(),
            };
        }
        let mut services = BTreeSet::new();
        let mut unknown = Vec::new();
        if let Some(&i) = lookup
            .services
            .get(&(self.namespace.clone(), self.service.clone()))
        {
            services.insert(i);
        }
        for name in &self.names {
            match self.resolve(name, lookup) {
                Some(i) => {
                    services.insert(i);
                }
                None => unknown.push(name.clone()),
            }
        }
        let clusters: BTreeSet<usize> = services
            .iter()
            .flat_map(|&i| named_clusters(&view.services[i]))
            .filter_map(|c| lookup.clusters.get(c).copied())
            .collect();
        Selected {
            services: services.into_iter().collect(),
            clusters: clusters.into_iter().collect(),
            unknown,
        }
    }

    /// The service `name` means: a virtual IP, or a host in one of the
    /// forms Kubernetes DNS answers (`svc`, `svc.ns`, `svc.ns.svc`,
    /// `svc.ns.svc.cluster.local`), a short one in the sidecar's namespace.
    fn resolve(&self, name: &str, lookup: &Lookup) -> Option<usize> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return lookup.virtual_ips.get(&ip).copied();
        }
        let fq = name
            .strip_suffix(".svc.cluster.local")
            .or_else(|| name.strip_suffix(".svc"))
            .unwrap_or(name);
        let key = match fq.split_once('.') {
            Some((svc, ns)) if !ns.contains('.') => (ns.to_string(), svc.to_string()),
            Some(_) => return None,
            None => (self.namespace.clone(), fq.to_string()),
        };
        lookup.services.get(&key).copied()
    }
}

/// Every cluster `sc`'s routes name: backends (a release's canary and
/// stable among them), mirrors and fallbacks.
pub fn named_clusters(sc: &pb::ServiceConfig) -> impl Iterator<Item = &str> {
    sc.routes.iter().flat_map(|r| {
        r.backends
            .iter()
            .map(|b| b.cluster.as_str())
            .chain(r.mirror.iter().map(|m| m.cluster.as_str()))
            .chain(r.fallback.iter().filter_map(|f| match &f.target {
                Some(pb::fallback::Target::Cluster(c)) => Some(c.as_str()),
                _ => None,
            }))
    })
}

/// A subscription's part of one view.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Indices into the view's services.
    pub services: Vec<usize>,
    /// Indices into the view's clusters.
    pub clusters: Vec<usize>,
    /// Names subscribed that resolve to no service.
    pub unknown: Vec<String>,
}

/// What a sidecar holds: each resource's `resource_version`, services by
/// `<namespace>/<name>`, clusters by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// By `<namespace>/<name>`.
    pub services: HashMap<String, String>,
    /// By name.
    pub clusters: HashMap<String, String>,
}

/// What takes a sidecar from what it holds to `selected`: the services and
/// clusters (indices into `view`) that it lacks or holds at another
/// version, and the keys of those it holds but no longer receives.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Services to send, as indices into the view.
    pub services: Vec<usize>,
    /// Clusters to send, as indices into the view.
    pub clusters: Vec<usize>,
    /// Keys of the services it should drop.
    pub removed_services: Vec<String>,
    /// Names of the clusters it should drop.
    pub removed_clusters: Vec<String>,
}

impl Change {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.clusters.is_empty()
            && self.removed_services.is_empty()
            && self.removed_clusters.is_empty()
    }
}

impl Held {
    /// [`Held::update`] for a `view` with the same resources in the same
    /// order as `prev`, which `selected` was selected from and this holds
    /// as of: only the resources it does not share with `prev` are looked
    /// at, so the cost is in what changed, not in the part.
    pub fn update_shared(&mut self, prev: &View, view: &View, selected: &Selected) -> Change {
        let mut change = Change::default();
        for &i in &selected.services {
            if Arc::ptr_eq(&prev.services[i], &view.services[i]) {
                continue;
            }
            let s = &view.services[i];
            let key = mesh_proto::incremental::service_key(s);
            if self.services.get(&key) != Some(&s.resource_version) {
                self.services.insert(key, s.resource_version.clone());
                change.services.push(i);
            }
        }
        for &i in &selected.clusters {
            if Arc::ptr_eq(&prev.clusters[i], &view.clusters[i]) {
                continue;
            }
            let c = &view.clusters[i];
            match self.clusters.get_mut(&c.name) {
                Some(v) if *v == c.resource_version => {}
                Some(v) => {
                    v.clone_from(&c.resource_version);
                    change.clusters.push(i);
                }
                None => {
                    self.clusters
                        .insert(c.name.clone(), c.resource_version.clone());
                    change.clusters.push(i);
                }
            }
        }
        change
    }

    /// What `selected` changes for a sidecar holding this, which then
    /// holds `selected`.
    pub fn update(&mut self, view: &View, selected: &Selected) -> Change {
        let mut change = Change::default();
        let mut services = HashMap::with_capacity(selected.services.len());
        for &i in &selected.services {
            let s = &view.services[i];
            let key = mesh_proto::incremental::service_key(s);
            if self.services.remove(&key).as_ref() != Some(&s.resource_version) {
                change.services.push(i);
            }
            services.insert(key, s.resource_version.clone());
        }
        let mut clusters = HashMap::with_capacity(selected.clusters.len());
        for &i in &selected.clusters {
            let c = &view.clusters[i];
            if self.clusters.remove(&c.name).as_ref() != Some(&c.resource_version) {
                change.clusters.push(i);
            }
            clusters.insert(c.name.clone(), c.resource_version.clone());
        }
        change.removed_services = std::mem::replace(&mut self.services, services)
            .into_keys()
            .collect();
        change.removed_clusters = std::mem::replace(&mut self.clusters, clusters)
            .into_keys()
            .collect();
        change.removed_services.sort();
        change.removed_clusters.sort();
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ns: &str, name: &str, backends: &[&str], vip: &str) -> pb::ServiceConfig {
        pb::ServiceConfig {
            name: name.into(),
            namespace: ns.into(),
            resource_version: "1".into(),
            routes: vec![pb::Route {
                backends: backends
                    .iter()
                    .map(|b| pb::WeightedBackend {
                        cluster: b.to_string(),
                        weight: 1,
                    })
                    .collect(),
                ..Default::default()
            }],
            virtual_ips: (!vip.is_empty())
                .then(|| vip.to_string())
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn cluster(name: &str) -> pb::Cluster {
        pb::Cluster {
            name: name.into(),
            resource_version: "1".into(),
            ..Default::default()
        }
    }

    /// client (the sidecar's own), echo (split over two versions), db in
    /// another namespace, and other.
    fn view() -> View {
        View {
            services: [
                service("default", "client", &["client.default"], ""),
                service(
                    "default",
                    "echo",
                    &["echo-v1.default", "echo-v2.default"],
                    "10.96.0.5",
                ),
                service("default", "other", &["other.default"], ""),
                service("store", "db", &["db.store"], ""),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
            clusters: [
                "client.default",
                "db.store",
                "echo-v1.default",
                "echo-v2.default",
                "other.default",
            ]
            .into_iter()
            .map(|c| Arc::new(cluster(c)))
            .collect(),
        }
    }

    fn names(view: &View, s: &Selected) -> (Vec<String>, Vec<String>) {
        (
            s.services
                .iter()
                .map(|&i| mesh_proto::incremental::service_key(&view.services[i]))
                .collect(),
            s.clusters
                .iter()
                .map(|&i| view.clusters[i].name.clone())
                .collect(),
        )
    }

    fn subscribed(names: &[&str]) -> Subscription {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        Subscription::new("default", "client", &names).unwrap()
    }

    #[test]
    fn a_sidecar_gets_what_it_names_its_own_service_and_their_clusters_only() {
        let v = view();
        let l = Lookup::new(&v);
        let s = subscribed(&["echo"]).select(&v, &l);
        assert_eq!(
            names(&v, &s),
            (
                vec!["default/client".to_string(), "default/echo".to_string()],
                vec![
                    "client.default".to_string(),
                    "echo-v1.default".to_string(),
                    "echo-v2.default".to_string()
                ]
            )
        );
        assert!(s.unknown.is_empty());
    }

    #[test]
    fn every_name_kubernetes_dns_answers_and_a_virtual_ip_resolve() {
        let v = view();
        let l = Lookup::new(&v);
        for name in [
            "echo",
            "Echo.default",
            "echo.default.svc",
            "echo.default.svc.cluster.local",
            "10.96.0.5",
        ] {
            let s = subscribed(&[name]).select(&v, &l);
            assert_eq!(
                names(&v, &s).0,
                ["default/client", "default/echo"],
                "{name}"
            );
        }
        // A short name is the sidecar's own namespace's; another's needs its namespace.
        let s = subscribed(&["db", "db.store", "echo.nowhere", "a.b.c", "10.0.0.9"]).select(&v, &l);
        assert_eq!(names(&v, &s).0, ["default/client", "store/db"]);
        assert_eq!(s.unknown, ["10.0.0.9", "a.b.c", "db", "echo.nowhere"]);
    }

    #[test]
    fn no_name_or_a_star_takes_every_service() {
        let v = view();
        let l = Lookup::new(&v);
        for s in [subscribed(&[]), subscribed(&["echo", "*"])] {
            assert!(s.all());
            let sel = s.select(&v, &l);
            assert_eq!((sel.services.len(), sel.clusters.len()), (4, 5));
        }
    }

    #[test]
    fn what_is_held_decides_what_a_response_carries() {
        let mut v = view();
        let mut held = Held::default();
        let sub = subscribed(&["echo"]);
        let first = held.update(&v, &sub.select(&v, &Lookup::new(&v)));
        assert_eq!((first.services.len(), first.clusters.len()), (2, 3));
        assert!(first.removed_services.is_empty() && first.removed_clusters.is_empty());

        // Unchanged: nothing. Another service's change: still nothing.
        assert!(
            held.update(&v, &sub.select(&v, &Lookup::new(&v)))
                .is_empty()
        );
        Arc::make_mut(&mut v.clusters[4]).resource_version = "2".into();
        assert!(
            held.update(&v, &sub.select(&v, &Lookup::new(&v)))
                .is_empty()
        );

        // One of its clusters changes: that cluster alone.
        Arc::make_mut(&mut v.clusters[2]).resource_version = "2".into();
        let c = held.update(&v, &sub.select(&v, &Lookup::new(&v)));
        assert_eq!((c.services, c.clusters), (vec![], vec![2]));

        // Its route drops a backend: the service, and the cluster removed.
        let echo = Arc::make_mut(&mut v.services[1]);
        echo.routes[0].backends.pop();
        echo.resource_version = "2".into();
        let c = held.update(&v, &sub.select(&v, &Lookup::new(&v)));
        assert_eq!(c.services, vec![1]);
        assert_eq!(c.removed_clusters, ["echo-v2.default"]);
    }

    #[test]
    fn against_a_view_it_shares_resources_with_only_the_unshared_are_looked_at() {
        let before = view();
        let sub = subscribed(&["echo"]);
        let selected = sub.select(&before, &Lookup::new(&before));
        let mut held = Held::default();
        held.update(&before, &selected);
        let mut after = before.clone();
        // other's cluster is not its part; echo-v1's is.
        Arc::make_mut(&mut after.clusters[4]).resource_version = "2".into();
        Arc::make_mut(&mut after.clusters[2]).resource_version = "2".into();
        let mut by_update = held.clone();
        let c = held.update_shared(&before, &after, &selected);
        assert_eq!((c.services.len(), c.clusters.as_slice()), (0, &[2][..]));
        assert_eq!(
            c,
            by_update.update(&after, &selected),
            "what a full look finds"
        );
        assert_eq!(held, by_update);
        assert!(held.update_shared(&after, &after, &selected).is_empty());
    }

    #[test]
    fn names_are_bounded_and_a_refused_change_changes_nothing() {
        let mut s = subscribed(&["echo"]);
        assert_eq!(s.change(&["".into()], &[]), Err(Refused::Empty));
        assert_eq!(
            s.change(&["a".repeat(254)], &[]),
            Err(Refused::TooLong(254))
        );
        let many: Vec<String> = (0..MAX_NAMES).map(|i| format!("s{i}")).collect();
        assert_eq!(s.change(&many, &[]), Err(Refused::TooMany));
        assert_eq!(s, subscribed(&["echo"]));
        assert_eq!(s.change(&["echo".into()], &[]), Ok(false));
        assert_eq!(s.change(&[], &["ECHO".into()]), Ok(true));
        assert!(Subscription::new("default", "client", &["".into()]).is_err());
    }
}
