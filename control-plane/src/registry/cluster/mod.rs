//! The cluster's registry as data: Services, EndpointSlices and Pods turned
//! into the same instances local mode has, so every rule works unchanged.
//! Pure: the watchers that keep the objects current are in
//! `crate::kubernetes::registry`.
//!
//! - A Service is a declared service of its namespace.
//! - Each endpoint of an EndpointSlice (`kubernetes.io/service-name`) is an
//!   instance at its first address and the slice's mesh port: the first
//!   TCP port whose appProtocol or name says HTTP, HTTP/2 or gRPC, else the
//!   first TCP port.
//! - It is ready when its `ready` condition is (nil means ready) and it is
//!   not terminating: a terminating endpoint leaves new-request rotation,
//!   and the sidecars finish what they already sent it.
//! - Its Pod (`targetRef`) gives its version (`app.kubernetes.io/version`,
//!   else `version`) and its identity (the ServiceAccount's SPIFFE ID).
//!
//! What cannot be used is skipped and said once per object in `problems`.

use super::{Catalog, Instance, ServiceKey, Source};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Version labels, in order of preference.
pub const VERSION_LABELS: [&str; 2] = ["app.kubernetes.io/version", "version"];

/// Services and instances of the cluster at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    instances: Vec<Instance>,
    declared: BTreeSet<ServiceKey>,
    /// The ServiceAccount each service's pods run as.
    accounts: HashMap<ServiceKey, String>,
    /// Each Service's ClusterIPs (none for a headless one).
    cluster_ips: BTreeMap<ServiceKey, Vec<String>>,
}

impl Catalog for Cluster {
    fn instances(&self) -> Box<dyn Iterator<Item = &Instance> + '_> {
        Box::new(self.instances.iter())
    }

    fn declared(&self) -> Box<dyn Iterator<Item = &ServiceKey> + '_> {
        Box::new(self.declared.iter())
    }

    fn virtual_ips(&self) -> BTreeMap<ServiceKey, Vec<String>> {
        self.cluster_ips.clone()
    }
}

impl Cluster {
    /// The ServiceAccount `namespace/service`'s pods run as, when known.
    pub fn account(&self, namespace: &str, service: &str) -> Option<&str> {
        self.accounts
            .get(&(namespace.to_string(), service.to_string()))
            .map(String::as_str)
    }
}

fn ns_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether a port carries HTTP of some kind (appProtocol, or the name
/// conventions `http`, `http-*`, `grpc*`, `h2c`).
fn speaks_http(p: &EndpointPort) -> bool {
    let named = |s: &str| {
        let s = s.to_ascii_lowercase();
        s == "http"
            || s.starts_with("http-")
            || s.starts_with("http2")
            || s.starts_with("grpc")
            || s == "h2c"
    };
    p.app_protocol
        .as_deref()
        .is_some_and(|a| named(a) || a == "kubernetes.io/h2c")
        || p.name.as_deref().is_some_and(named)
}

/// The slice's mesh port.
fn mesh_port(ports: &[EndpointPort]) -> Option<i32> {
    let tcp: Vec<&EndpointPort> = ports
        .iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP" && p.port.is_some())
        .collect();
    tcp.iter()
        .find(|p| speaks_http(p))
        .or(tcp.first())
        .and_then(|p| p.port)
}

/// Builds the cluster's registry; every object that cannot be used is
/// named in the problems returned beside it.
pub fn convert<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    pods: impl IntoIterator<Item = &'a Pod>,
    trust_domain: &str,
) -> (Cluster, Vec<String>) {
    let mut problems = Vec::new();
    let mut cluster = Cluster::default();
    for s in services {
        let key = ns_name(&s.metadata);
        // clusterIPs (dual-stack) else clusterIP; "None" is a headless
        // Service, which has no virtual IP to dial.
        let spec = s.spec.as_ref();
        let ips: Vec<String> = spec
            .and_then(|sp| sp.cluster_ips.clone())
            .or_else(|| spec.and_then(|sp| sp.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .collect();
        if !ips.is_empty() {
            cluster.cluster_ips.insert(key.clone(), ips);
        }
        cluster.declared.insert(key);
    }
    // Looked up once per endpoint: by borrowed names, allocating nothing.
    let pods: HashMap<(&str, &str), &Pod> = pods
        .into_iter()
        .map(|p| {
            let meta = &p.metadata;
            let ns = meta.namespace.as_deref().unwrap_or_default();
            ((ns, meta.name.as_deref().unwrap_or_default()), p)
        })
        .collect();
    // (namespace, service, address) → instance; a pod listed twice (two
    // slices during a slice's replacement) counts once, ready if either says so.
    let mut found: BTreeMap<(String, String, String), Instance> = BTreeMap::new();
    for slice in slices {
        let (namespace, name) = ns_name(&slice.metadata);
        let what = format!("EndpointSlice {namespace}/{name}");
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue; // Not a Service's slice (a custom controller's).
        };
        if !cluster
            .declared
            .contains(&(namespace.clone(), service.clone()))
        {
            problems.push(format!(
                "{what}: Service {namespace}/{service} is unknown; its endpoints are not used"
            ));
            continue;
        }
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            problems.push(format!(
                "{what}: addressType {} is not IPv4 or IPv6; skipped",
                slice.address_type
            ));
            continue;
        }
        let Some(port) = mesh_port(slice.ports.as_deref().unwrap_or_default()) else {
            problems.push(format!("{what}: no TCP port; skipped"));
            continue;
        };
        // Endpoints whose Pod is unknown: said once per slice, not once per
        // endpoint (a slice written by hand may name no Pod at all).
        let mut podless: Option<(usize, String)> = None;
        let mut podless_count = 0;
        for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
            let Some(ip) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            else {
                problems.push(format!("{what}: endpoints[{i}]: no IP address; skipped"));
                continue;
            };
            let address = std::net::SocketAddr::new(ip, port as u16).to_string();
            let cond = ep.conditions.as_ref();
            // "ready ... nil should be interpreted as true"; terminating
            // endpoints report ready false, but an older controller may not.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true)
                && !cond.and_then(|c| c.terminating).unwrap_or(false);
            let pod_ref = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            let pod = pod_ref
                .as_deref()
                .and_then(|p| pods.get(&(namespace.as_str(), p)));
            let (version, identity) = match pod {
                Some(pod) => {
                    let labels = pod.metadata.labels.as_ref();
                    let version = VERSION_LABELS
                        .iter()
                        .find_map(|l| labels.and_then(|m| m.get(*l)))
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    if version.is_empty() {
                        problems.push(format!(
                            "Pod {namespace}/{}: no {} or {} label; it serves {service} only, no version subset",
                            pod_ref.as_deref().unwrap_or(""),
                            VERSION_LABELS[0],
                            VERSION_LABELS[1]
                        ));
                    }
                    let account = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into());
                    cluster
                        .accounts
                        .insert((namespace.clone(), service.clone()), account.clone());
                    (
                        version,
                        crate::identity::spiffe_id(trust_domain, &namespace, &account),
                    )
                }
                None => {
                    // Without its pod nothing proves who serves there: no
                    // identity, so sidecars with one refuse it (no plaintext
                    // by accident) until the pod is seen.
                    podless_count += 1;
                    if podless.is_none() {
                        let pod = pod_ref.as_deref().unwrap_or("(none)");
                        podless = Some((i, format!("({address}): its Pod {pod}")));
                    }
                    (String::new(), String::new())
                }
            };
            let instance = Instance {
                namespace: namespace.clone(),
                service: service.clone(),
                version,
                instance_id: pod_ref.unwrap_or_else(|| format!("{name}/{address}")),
                address: address.clone(),
                ready,
                identity,
                owner: String::new(),
                source: Source::Cluster,
            };
            let key = (namespace.clone(), service.clone(), address);
            match found.get_mut(&key) {
                Some(seen) => seen.ready |= instance.ready,
                None => {
                    found.insert(key, instance);
                }
            }
        }
        if let Some((i, first)) = podless {
            let others = match podless_count - 1 {
                0 => String::new(),
                n => format!(" (and {n} more endpoints like it)"),
            };
            problems.push(format!(
                "{what}: endpoints[{i}] {first} is not known (yet){others}; no version, no identity"
            ));
        }
    }
    cluster.instances = found.into_values().collect();
    (cluster, problems)
}

#[cfg(test)]
mod tests;
