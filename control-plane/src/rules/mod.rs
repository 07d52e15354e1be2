//! The rules in force: every validated rule kind, keyed by namespace and
//! name (`RuleSet`), how one apply merges into it (all or nothing, like
//! `kubectl apply`), and `release shift`. Pure: no I/O, no locks. The kinds
//! validate themselves one document at a time in the files beside this
//! one; the checks across documents live here, except the services rules
//! name (`named.rs`), which need the registry too.

mod named;
mod policy;
mod problems;
pub mod route;
mod split;

pub use named::check_named_services;
pub use policy::{Policy, policies_from};
pub use route::model::{Backend, HttpRoute, Mirror, RouteGroup, Routing, TrafficPolicy};
pub use route::routing_from;
pub use split::{ShiftError, Split, splits_from};

use crate::manifest::{self, Located};
use split::{check_percent, check_unique_roots, located_of};
use std::collections::{BTreeMap, BTreeSet};

/// The rules of one apply, validated one document at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incoming {
    /// TrafficSplits.
    pub splits: Vec<Split>,
    /// AuthorizationPolicies.
    pub policies: Vec<Policy>,
    /// HTTPRouteGroups, HTTPRoutes and TrafficPolicies.
    pub routing: Routing,
}

/// Every rule kind from documents, every problem of every kind at once.
pub fn rules_from(docs: &[Located]) -> Result<Incoming, Vec<manifest::Error>> {
    match (splits_from(docs), policies_from(docs), routing_from(docs)) {
        (Ok(splits), Ok(policies), Ok(routing)) => Ok(Incoming {
            splits,
            policies,
            routing,
        }),
        (s, p, r) => {
            let mut all = s.err().unwrap_or_default();
            all.extend(p.err().unwrap_or_default());
            all.extend(r.err().unwrap_or_default());
            Err(all)
        }
    }
}

/// The rules in force, each kind keyed by `(namespace, name)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    /// Splits by identity.
    pub splits: BTreeMap<(String, String), Split>,
    /// Authorization policies by identity.
    pub policies: BTreeMap<(String, String), Policy>,
    /// SMI HTTPRouteGroups by identity.
    pub route_groups: BTreeMap<(String, String), RouteGroup>,
    /// Gateway API HTTPRoutes by identity.
    pub http_routes: BTreeMap<(String, String), HttpRoute>,
    /// TrafficPolicies by identity.
    pub traffic_policies: BTreeMap<(String, String), TrafficPolicy>,
    /// Releases under way that shield their canary, by service.
    pub shields: BTreeMap<(String, String), Shield>,
}

/// A release's canary and stable: while it is under way, an idempotent
/// request that fails on the canary is retried once on the stable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shield {
    /// Namespace of the service.
    pub namespace: String,
    /// The service released.
    pub service: String,
    /// Its canary backend.
    pub canary: String,
    /// Its stable backend.
    pub stable: String,
}

/// What an apply did to each rule it was given, e.g. `("trafficsplit default/echo", Created)`.
pub type Outcomes = Vec<(String, Outcome)>;

/// What an apply (or a delete) did to one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New rule.
    Created,
    /// Existing rule with new content.
    Configured,
    /// Identical to what was in force.
    Unchanged,
    /// Removed.
    Deleted,
}

impl Outcome {
    /// As `kubectl` words it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
        }
    }
}

/// The rule kinds, as YAML spells them.
pub const KINDS: [&str; 5] = [
    "TrafficSplit",
    "HTTPRouteGroup",
    "HTTPRoute",
    "TrafficPolicy",
    "AuthorizationPolicy",
];

/// A rule named for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Kind, as YAML spells it (one of [`KINDS`]).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The problems of the documents `mine` applied beside `others`, the
/// rules in force, as `meshctl apply` judges a file against the rules in
/// force (one TrafficSplit per root service, one AuthorizationPolicy per
/// service). A set in force that does not validate itself is not held
/// against `mine`, which is then judged alone.
pub fn beside(mine: &[Located], others: &[Located]) -> Vec<manifest::Error> {
    let current = rules_from(others)
        .and_then(|incoming| RuleSet::default().apply(&incoming, others))
        .map(|(set, _)| set)
        .unwrap_or_default();
    rules_from(mine)
        .and_then(|incoming| current.apply(&incoming, mine))
        .err()
        .unwrap_or_default()
}

impl RuleSet {
    /// The split that takes `namespace/service`'s unmatched traffic (the
    /// one `release shift` moves).
    pub fn for_service(&self, namespace: &str, service: &str) -> Option<&Split> {
        self.splits
            .values()
            .find(|s| s.namespace == namespace && s.service == service && s.matches.is_empty())
    }

    /// Upserts `new` (like `kubectl apply`) and validates the merged set.
    /// Returns the new set; `self` is untouched, so a failure applies nothing.
    pub fn apply(
        &self,
        incoming: &Incoming,
        docs: &[Located],
    ) -> Result<(RuleSet, Outcomes), Vec<manifest::Error>> {
        let (new, new_policies) = (&incoming.splits, &incoming.policies);
        let mut next = self.clone();
        let mut outcomes = Vec::new();
        for s in new {
            let outcome = upsert(&mut next.splits, s.key(), s);
            outcomes.push((format!("trafficsplit {}/{}", s.namespace, s.name), outcome));
        }
        let mut errors = Vec::new();
        for p in new_policies {
            let outcome = upsert(&mut next.policies, p.key(), p);
            outcomes.push((
                format!("authorizationpolicy {}/{}", p.namespace, p.name),
                outcome,
            ));
            // One policy per service, across applies too: name the incoming document.
            if let Some(other) = self
                .policies
                .values()
                .find(|o| o.namespace == p.namespace && o.service == p.service && o.name != p.name)
            {
                let at = manifest::find(docs, "AuthorizationPolicy", &p.namespace, &p.name);
                errors.push(manifest::Error::about(
                    at,
                    &format!("AuthorizationPolicy {}/{}", p.namespace, p.name),
                    "spec.service".into(),
                    format!(
                        "service {:?} already has AuthorizationPolicy {}/{}",
                        p.service, other.namespace, other.name
                    ),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Old splits first, then the incoming ones, so a conflict is
        // reported against the incoming document, not the old split.
        let incoming_keys: BTreeSet<(&str, &str)> = new
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        let is_incoming =
            |s: &Split| incoming_keys.contains(&(s.namespace.as_str(), s.name.as_str()));
        let old = next.splits.values().filter(|s| !is_incoming(s));
        check_unique_roots(old.chain(new.iter()), |s| {
            is_incoming(s).then(|| located_of(docs, s))
        })?;
        let mut note = |kind: &str, ns: &str, name: &str, o: Outcome| {
            outcomes.push((format!("{} {ns}/{name}", kind.to_lowercase()), o));
        };
        let routing = &incoming.routing;
        for g in &routing.groups {
            let o = upsert(
                &mut next.route_groups,
                (g.namespace.clone(), g.name.clone()),
                g,
            );
            note("HTTPRouteGroup", &g.namespace, &g.name, o);
        }
        for r in &routing.routes {
            let o = upsert(
                &mut next.http_routes,
                (r.namespace.clone(), r.name.clone()),
                r,
            );
            note("HTTPRoute", &r.namespace, &r.name, o);
        }
        for p in &routing.policies {
            let o = upsert(
                &mut next.traffic_policies,
                (p.namespace.clone(), p.name.clone()),
                p,
            );
            note("TrafficPolicy", &p.namespace, &p.name, o);
        }
        check_routing(&next, docs)?;
        Ok((next, outcomes))
    }

    /// Removes `targets` and validates what remains, as an apply would.
    /// Returns the new set; `self` is untouched, so a failure deletes
    /// nothing. `docs` are the documents that named the targets, if any,
    /// so problems point at them.
    pub fn delete(
        &self,
        targets: &[Target],
        docs: &[Located],
    ) -> Result<(RuleSet, Outcomes), Vec<manifest::Error>> {
        let mut next = self.clone();
        let mut outcomes = Vec::new();
        let mut errors = Vec::new();
        for t in targets {
            let key = (t.namespace.clone(), t.name.clone());
            let object = format!("{} {}/{}", t.kind, t.namespace, t.name);
            let problem = |field: &str, problem: String| match manifest::find(
                docs,
                &t.kind,
                &t.namespace,
                &t.name,
            ) {
                Some(at) => manifest::Error::at(at, &object, field.into(), problem),
                None => manifest::Error {
                    file: "delete".into(),
                    line: 0,
                    object: Some(object.clone()),
                    field: None,
                    problem,
                },
            };
            let removed = match t.kind.as_str() {
                "TrafficSplit" => next.splits.remove(&key).is_some(),
                "HTTPRouteGroup" => next.route_groups.remove(&key).is_some(),
                "HTTPRoute" => next.http_routes.remove(&key).is_some(),
                "TrafficPolicy" => next.traffic_policies.remove(&key).is_some(),
                "AuthorizationPolicy" => next.policies.remove(&key).is_some(),
                other => {
                    errors.push(problem(
                        "kind",
                        format!(
                            "{other:?} is not a rule kind; expected one of {}",
                            KINDS.join(", ")
                        ),
                    ));
                    continue;
                }
            };
            if !removed {
                errors.push(problem("metadata.name", format!("no {object} is in force")));
                continue;
            }
            outcomes.push((
                format!("{} {}/{}", t.kind.to_lowercase(), t.namespace, t.name),
                Outcome::Deleted,
            ));
        }
        // A group still matched by a split that stays would leave that
        // split pointing at nothing: name the split that holds it.
        for t in targets.iter().filter(|t| t.kind == "HTTPRouteGroup") {
            if let Some(s) = next
                .splits
                .values()
                .find(|s| s.namespace == t.namespace && s.matches.contains(&t.name))
            {
                let object = format!("{} {}/{}", t.kind, t.namespace, t.name);
                errors.push(manifest::Error::about(
                    manifest::find(docs, &t.kind, &t.namespace, &t.name),
                    &object,
                    "metadata.name".into(),
                    format!(
                        "still matched by TrafficSplit {}/{}; delete or change that split first",
                        s.namespace, s.name
                    ),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        check_routing(&next, docs)?;
        Ok((next, outcomes))
    }

    /// Gives `backend` `percent`% of what routes `namespace/service`: its
    /// TrafficSplit without matches, or its HTTPRoute's release rule (see
    /// [`HttpRoute::release_rule`]). The rest goes to the other backends in
    /// proportion to their current weights (equally if they are all 0);
    /// weights of the result sum to 100. Returns the new set, the shifted
    /// rule's backends as a split of that name, and what was shifted
    /// ("TrafficSplit default/echo", "HTTPRoute default/r rule w"). With
    /// `rest_to`, the rest goes to that backend alone.
    pub fn shift(
        &self,
        namespace: &str,
        service: &str,
        backend: &str,
        percent: u32,
        rest_to: Option<&str>,
    ) -> Result<(RuleSet, Split, String), ShiftError> {
        check_percent(percent)?;
        let mut next = self.clone();
        if let Some(split) = self.for_service(namespace, service) {
            let updated = split.shifted(backend, percent, rest_to)?;
            next.splits.insert(updated.key(), updated.clone());
            let what = format!("TrafficSplit {}/{}", split.namespace, split.name);
            return Ok((next, updated, what));
        }
        let route = self
            .http_route_for(namespace, service)
            .and_then(|r| Some((r, r.release_rule()?)))
            .ok_or_else(|| ShiftError::NoSplit {
                namespace: namespace.into(),
                service: service.into(),
            })?;
        let (r, i) = route;
        let what = format!(
            "HTTPRoute {}/{} rule {}",
            r.namespace, r.name, r.rules[i].name
        );
        let backends = split::shifted(&r.rules[i].backends, backend, percent, rest_to, &what)?;
        let mut updated = r.clone();
        updated.rules[i].backends = backends.clone();
        next.http_routes
            .insert((r.namespace.clone(), r.name.clone()), updated);
        let view = Split {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            service: r.service.clone(),
            backends,
            matches: Vec::new(),
        };
        Ok((next, view, what))
    }

    /// The HTTPRoute whose parent is `namespace/service`.
    pub fn http_route_for(&self, namespace: &str, service: &str) -> Option<&HttpRoute> {
        self.http_routes
            .values()
            .find(|r| r.namespace == namespace && r.service == service)
    }
}

/// Inserts or replaces `value` under `key`, saying which it was.
fn upsert<K: Ord, V: PartialEq + Clone>(map: &mut BTreeMap<K, V>, key: K, value: &V) -> Outcome {
    match map.insert(key, value.clone()) {
        None => Outcome::Created,
        Some(old) if &old == value => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    }
}

/// Checks the routing rules of the merged set: TrafficSplit matches name
/// existing groups, a service is routed by TrafficSplits or by one
/// HTTPRoute, never both, and has at most one TrafficPolicy.
fn check_routing(next: &RuleSet, docs: &[Located]) -> Result<(), Vec<manifest::Error>> {
    let mut errors = Vec::new();
    for s in next.splits.values() {
        for (i, g) in s.matches.iter().enumerate() {
            if !next
                .route_groups
                .contains_key(&(s.namespace.clone(), g.clone()))
            {
                errors.push(manifest::Error::about(
                    manifest::find(docs, "TrafficSplit", &s.namespace, &s.name),
                    &format!("TrafficSplit {}/{}", s.namespace, s.name),
                    format!("spec.matches[{i}].name"),
                    format!(
                        "no HTTPRouteGroup {}/{g}; apply it in the same file or first",
                        s.namespace
                    ),
                ));
            }
        }
    }
    for r in next.http_routes.values() {
        let at = manifest::find(docs, "HTTPRoute", &r.namespace, &r.name);
        let object = format!("HTTPRoute {}/{}", r.namespace, r.name);
        if let Some(s) = next
            .splits
            .values()
            .find(|s| s.namespace == r.namespace && s.service == r.service)
        {
            // Name whichever of the two this apply brought, as itself.
            let split_at = manifest::find(docs, "TrafficSplit", &s.namespace, &s.name);
            errors.push(match (at, split_at) {
                (None, Some(split_at)) => manifest::Error::at(
                    split_at,
                    &format!("TrafficSplit {}/{}", s.namespace, s.name),
                    "spec.service".into(),
                    format!(
                        "service {:?} is already routed by HTTPRoute {}/{}; use one syntax per service",
                        s.service, r.namespace, r.name
                    ),
                ),
                _ => manifest::Error::about(
                    at,
                    &object,
                    "spec.parentRefs[0].name".into(),
                    format!(
                        "service {:?} is already routed by TrafficSplit {}/{}; use one syntax per service",
                        r.service, s.namespace, s.name
                    ),
                ),
            });
        }
        if let Some(other) = next
            .http_routes
            .values()
            .find(|o| o.namespace == r.namespace && o.service == r.service && o.name < r.name)
        {
            errors.push(manifest::Error::about(
                at,
                &object,
                "spec.parentRefs[0].name".into(),
                format!(
                    "service {:?} already has HTTPRoute {}/{}; put every rule for a service in one HTTPRoute",
                    r.service, other.namespace, other.name
                ),
            ));
        }
    }
    for p in next.traffic_policies.values() {
        if let Some(other) = next
            .traffic_policies
            .values()
            .find(|o| o.namespace == p.namespace && o.service == p.service && o.name < p.name)
        {
            errors.push(manifest::Error::about(
                manifest::find(docs, "TrafficPolicy", &p.namespace, &p.name),
                &format!("TrafficPolicy {}/{}", p.namespace, p.name),
                "spec.service".into(),
                format!(
                    "service {:?} already has TrafficPolicy {}/{}",
                    p.service, other.namespace, other.name
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests;
