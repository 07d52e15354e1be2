//! Validates the routing documents of one apply and compiles them into the
//! route model, every problem at once. SMI HTTPRouteGroups are compiled
//! here; HTTPRoutes in `gateway`, TrafficPolicies in `traffic`.

use super::gateway::http_route;
use super::model::{HeaderMatch, PathMatch, RequestMatch, RouteGroup, Routing};
use super::traffic::traffic_policy;
use crate::manifest::smi::{self, SmiMatch};
use crate::manifest::{self, Document, Located};
use crate::rules::problems::Problems;

/// Every routing document in `docs`, validated; every problem at once.
pub fn routing_from(docs: &[Located]) -> Result<Routing, Vec<manifest::Error>> {
    let mut out = Routing::default();
    let mut errors = Vec::new();
    for at in docs {
        if !matches!(
            at.doc,
            Document::HttpRouteGroup(_) | Document::HttpRoute(_) | Document::TrafficPolicy(_)
        ) {
            continue;
        }
        let (object, meta) = at.doc.kind_and_meta();
        let mut p = Problems::new(at, format!("{object} {}/{}", meta.namespace, meta.name));
        match &at.doc {
            Document::HttpRouteGroup(g) => {
                let group = route_group(&mut p, g);
                out.groups.push(group);
            }
            Document::HttpRoute(r) => {
                if let Some(route) = http_route(&mut p, r) {
                    out.routes.push(route);
                }
            }
            Document::TrafficPolicy(tp) => {
                let policy = traffic_policy(&mut p, tp);
                out.policies.push(policy);
            }
            _ => {}
        }
        errors.append(&mut p.into_errors());
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn route_group(p: &mut Problems<'_>, g: &smi::HttpRouteGroup) -> RouteGroup {
    if g.spec.matches.is_empty() {
        p.add("spec.matches", "needs at least one match");
    }
    let mut matches = Vec::new();
    for (i, m) in g.spec.matches.iter().enumerate() {
        if m.name.is_empty() {
            p.add(format!("spec.matches[{i}].name"), "must not be empty");
        }
        matches.push((m.name.clone(), smi_match(p, i, m)));
    }
    RouteGroup {
        name: g.metadata.name.clone(),
        namespace: g.metadata.namespace.clone(),
        matches,
    }
}

fn smi_match(p: &mut Problems<'_>, i: usize, m: &SmiMatch) -> RequestMatch {
    let field = |f: &str| format!("spec.matches[{i}].{f}");
    let path = m.path_regex.as_ref().map(|re| {
        p.regex(&field("pathRegex"), re);
        PathMatch::Regex(re.clone())
    });
    // SMI lists methods; one method per match here, so several become a regex-free check later.
    let methods: Vec<String> = m
        .methods
        .iter()
        .filter(|m| *m != "*")
        .map(|m| m.to_ascii_uppercase())
        .collect();
    if methods.len() > 1 {
        p.add(
            field("methods"),
            "list one method per match (or *); give each method its own match",
        );
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        p.regex(&field(&format!("headers.{name}")), value);
        headers.push(HeaderMatch {
            name: name.to_ascii_lowercase(),
            value: Err(value.clone()),
        });
    }
    RequestMatch {
        path,
        method: methods.into_iter().next(),
        headers,
    }
}
