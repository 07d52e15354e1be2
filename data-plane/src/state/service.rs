//! A service as the data path uses it: its routes in order (first match
//! wins), who may call it, and the host names the app may address it by.
//! Converted from proto once per snapshot.

use super::authz::Authorization;
use super::route::{Context, Route};
use mesh_proto::v1 as pb;

/// Routes for one service.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// `name.namespace`, the service's metric label.
    pub full: crate::name::Name,
    /// Content version.
    pub resource_version: String,
    /// In order; first match wins.
    pub routes: Vec<Route>,
    /// Who may call it; `None` means everyone.
    pub authorization: Option<Authorization>,
    /// The addresses apps dial for it (ClusterIPs, local mode's virtual
    /// IPs): names of it like its host names.
    pub virtual_ips: Vec<std::net::IpAddr>,
    /// Whether it had a request since on-demand discovery last looked;
    /// carried from snapshot to snapshot.
    pub(super) used: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Service {
    /// Notes a request to it. A load before the store: the store, which
    /// takes the cache line, happens once per sweep, not per request.
    pub fn mark_used(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
    }

    /// The first route matching the request.
    pub fn route<B>(&self, req: &http::Request<B>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req))
    }

    /// Converts one service; every problem names it (and its route).
    pub(super) fn from_proto(
        s: &pb::ServiceConfig,
        cx: &Context<'_>,
    ) -> Result<Service, Vec<String>> {
        let id = format!("service {}/{}", s.namespace, s.name);
        if s.name.is_empty() || s.namespace.is_empty() {
            return Err(vec![format!("{id}: name and namespace are required")]);
        }
        if s.routes.is_empty() {
            return Err(vec![format!("{id}: has no routes")]);
        }
        let mut routes = Vec::new();
        let mut errors = Vec::new();
        let mut virtual_ips = Vec::new();
        for ip in &s.virtual_ips {
            match ip.parse() {
                Ok(ip) => virtual_ips.push(ip),
                Err(_) => errors.push(format!("{id}: virtual IP {ip:?} is not an IP address")),
            }
        }
        for r in &s.routes {
            match Route::from_proto(r, &id, cx) {
                Ok(r) => routes.push(r),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            full: format!("{}.{}", s.name, s.namespace).into(),
            resource_version: s.resource_version.clone(),
            routes,
            authorization: s.authorization.as_ref().map(Authorization::from_proto),
            virtual_ips,
            used: Default::default(),
        })
    }

    /// Every name the app may use for this service: fully qualified in
    /// Kubernetes DNS form, and the short name in the sidecar's own
    /// `namespace`, as Kubernetes DNS resolves it.
    pub(super) fn hosts(&self, namespace: &str) -> Vec<String> {
        let fq = format!("{}.{}", self.name, self.namespace);
        let mut hosts = vec![format!("{fq}.svc.cluster.local"), format!("{fq}.svc"), fq];
        if self.namespace == namespace {
            hosts.push(self.name.clone());
        }
        hosts.extend(self.virtual_ips.iter().map(|ip| ip_host(*ip)));
        hosts
    }
}

/// An IP address as the host of an authority: IPv6 in brackets.
pub(super) fn ip_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
