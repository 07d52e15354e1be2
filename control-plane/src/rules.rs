//! TrafficSplit rules as domain types: validation of each split and of the
//! whole set, and the arithmetic of `release shift`. Pure: no I/O, no locks.

use crate::manifest::{self, Document, Located};
use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A validated TrafficSplit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// Root service.
    pub service: String,
    /// Backends in declaration order.
    pub backends: Vec<Backend>,
    /// HTTPRouteGroups whose matches select the split's traffic; empty
    /// means all traffic not taken by a matched split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<String>,
}

/// A backend and its relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Backend service, same namespace as the split.
    pub service: String,
    /// Relative weight.
    pub weight: u32,
}

impl Split {
    /// `namespace/name`, the split's identity.
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// Errors from `release shift`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShiftError {
    /// No TrafficSplit has this root service.
    #[error("no TrafficSplit routes service {namespace}/{service}; apply one first")]
    NoSplit {
        /// Namespace.
        namespace: String,
        /// Root service.
        service: String,
    },
    /// The named backend is not part of the split.
    #[error("{backend:?} is not a backend of split {split}; its backends are {known}")]
    UnknownBackend {
        /// Requested backend.
        backend: String,
        /// `namespace/name` of the split.
        split: String,
        /// Comma-separated backend names.
        known: String,
    },
    /// Percent outside 0..=100.
    #[error("weight {0} is out of range; give a percentage from 0 to 100")]
    Percent(u32),
}

/// The rules of one apply, validated one document at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incoming {
    /// TrafficSplits.
    pub splits: Vec<Split>,
    /// AuthorizationPolicies.
    pub policies: Vec<Policy>,
    /// HTTPRouteGroups, HTTPRoutes and TrafficPolicies.
    pub routing: crate::routing::Routing,
}

/// Every rule kind from documents, every problem of every kind at once.
pub fn rules_from(docs: &[Located]) -> Result<Incoming, Vec<manifest::Error>> {
    match (
        splits_from(docs),
        crate::policy::policies_from(docs),
        crate::routing::routing_from(docs),
    ) {
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

/// Converts parsed documents into splits, reporting every problem at once.
pub fn splits_from(docs: &[Located]) -> Result<Vec<Split>, Vec<manifest::Error>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for located in docs {
        if let Document::TrafficSplit(ts) = &located.doc {
            match split_from(located, ts) {
                Ok(s) => out.push(s),
                Err(mut e) => errors.append(&mut e),
            }
        }
    }
    if let Err(mut e) = check_unique_roots(out.iter().map(|s| (s, Some(located_of(docs, s))))) {
        errors.append(&mut e);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn located_of<'a>(docs: &'a [Located], s: &Split) -> &'a Located {
    manifest::find(docs, "TrafficSplit", &s.namespace, &s.name)
        .expect("every split came from a document")
}

fn split_from(at: &Located, ts: &manifest::TrafficSplit) -> Result<Split, Vec<manifest::Error>> {
    let object = format!(
        "TrafficSplit {}/{}",
        ts.metadata.namespace, ts.metadata.name
    );
    let mut errors = Vec::new();
    let mut err = |field: String, problem: String| {
        errors.push(manifest::Error::at(at, &object, field, problem))
    };
    if ts.metadata.name.is_empty() {
        err("metadata.name".into(), "must not be empty".into());
    }
    if ts.spec.service.is_empty() {
        err("spec.service".into(), "must name the root service".into());
    }
    for (i, m) in ts.spec.matches.iter().enumerate() {
        if m.kind != "HTTPRouteGroup" {
            err(
                format!("spec.matches[{i}].kind"),
                format!("{:?} is not supported; use HTTPRouteGroup", m.kind),
            );
        }
    }
    if ts.spec.backends.is_empty() {
        err("spec.backends".into(), "needs at least one backend".into());
    }
    let mut backends = Vec::new();
    for (i, b) in ts.spec.backends.iter().enumerate() {
        let field = |f: &str| format!("spec.backends[{i}].{f}");
        if b.service.is_empty() {
            err(field("service"), "must not be empty".into());
        } else if b.service == ts.spec.service {
            err(
                field("service"),
                format!(
                    "{:?} is the split's own root service; SMI forbids self-referential splits",
                    b.service
                ),
            );
        } else if backends.iter().any(|x: &Backend| x.service == b.service) {
            err(field("service"), format!("{:?} is listed twice", b.service));
        }
        match b.weight.as_weight() {
            Ok(w) => backends.push(Backend {
                service: b.service.clone(),
                weight: w,
            }),
            Err(problem) => err(field("weight"), problem),
        }
    }
    if backends.len() == ts.spec.backends.len()
        && !backends.is_empty()
        && backends.iter().all(|b| b.weight == 0)
    {
        err(
            "spec.backends".into(),
            "every weight is 0, so no backend could receive traffic".into(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Split {
        name: ts.metadata.name.clone(),
        namespace: ts.metadata.namespace.clone(),
        service: ts.spec.service.clone(),
        backends,
        matches: ts.spec.matches.iter().map(|m| m.name.clone()).collect(),
    })
}

/// Two splits may not share a root service: which one wins would be arbitrary.
fn check_unique_roots<'a>(
    splits: impl Iterator<Item = (&'a Split, Option<&'a Located>)>,
) -> Result<(), Vec<manifest::Error>> {
    let mut seen: BTreeMap<(String, String), &Split> = BTreeMap::new();
    let mut errors = Vec::new();
    // Matched splits may share a root; only one may take the rest.
    for (s, at) in splits.filter(|(s, _)| s.matches.is_empty()) {
        let root = (s.namespace.clone(), s.service.clone());
        match seen.get(&root) {
            Some(other) if other.name != s.name => errors.push(manifest::Error::about(
                at,
                &format!("TrafficSplit {}/{}", s.namespace, s.name),
                "spec.service".into(),
                format!(
                    "service {:?} already has TrafficSplit {}/{}; one root service takes one split without matches",
                    s.service, other.namespace, other.name
                ),
            )),
            Some(_) => {}
            None => {
                seen.insert(root, s);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The set of splits in force, keyed by `(namespace, name)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    /// Splits by identity.
    pub splits: BTreeMap<(String, String), Split>,
    /// Authorization policies by identity.
    pub policies: BTreeMap<(String, String), Policy>,
    /// SMI HTTPRouteGroups by identity.
    pub route_groups: BTreeMap<(String, String), crate::routing::RouteGroup>,
    /// Gateway API HTTPRoutes by identity.
    pub http_routes: BTreeMap<(String, String), crate::routing::HttpRoute>,
    /// TrafficPolicies by identity.
    pub traffic_policies: BTreeMap<(String, String), crate::routing::TrafficPolicy>,
}

/// What an apply did to each rule it was given, e.g. `("trafficsplit default/echo", Created)`.
pub type Outcomes = Vec<(String, Outcome)>;

/// What an apply did to one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New split.
    Created,
    /// Existing split with new content.
    Configured,
    /// Identical to what was in force.
    Unchanged,
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
        // Report the conflict against the incoming document, not the old split.
        let ordered = new
            .iter()
            .map(|s| (s, Some(located_of(docs, s))))
            .chain(next.splits.values().map(|s| (s, None)));
        let mut dedup: Vec<(&Split, Option<&Located>)> = Vec::new();
        for (s, at) in ordered {
            if !dedup.iter().any(|(d, _)| d.key() == s.key()) {
                dedup.push((s, at));
            }
        }
        // Old splits first, so the incoming one is the one named as the conflict.
        dedup.sort_by_key(|(_, at)| at.is_some());
        check_unique_roots(dedup.into_iter())?;
        outcomes.extend(crate::routing::apply(&mut next, &incoming.routing, docs)?);
        Ok((next, outcomes))
    }

    /// Gives `backend` `percent`% of the split for `namespace/service`; the
    /// rest goes to the other backends in proportion to their current weights
    /// (equally if they are all 0). Weights of the result sum to 100.
    pub fn shift(
        &self,
        namespace: &str,
        service: &str,
        backend: &str,
        percent: u32,
    ) -> Result<(RuleSet, Split), ShiftError> {
        if percent > 100 {
            return Err(ShiftError::Percent(percent));
        }
        let split = self
            .for_service(namespace, service)
            .ok_or_else(|| ShiftError::NoSplit {
                namespace: namespace.into(),
                service: service.into(),
            })?;
        if !split.backends.iter().any(|b| b.service == backend) {
            return Err(ShiftError::UnknownBackend {
                backend: backend.into(),
                split: format!("{}/{}", split.namespace, split.name),
                known: split
                    .backends
                    .iter()
                    .map(|b| b.service.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let others: Vec<&Backend> = split
            .backends
            .iter()
            .filter(|b| b.service != backend)
            .collect();
        let rest = 100 - percent;
        let shares = if others.is_empty() {
            Vec::new()
        } else {
            let total: u64 = others.iter().map(|b| u64::from(b.weight)).sum();
            let basis: Vec<u64> = if total == 0 {
                vec![1; others.len()]
            } else {
                others.iter().map(|b| u64::from(b.weight)).collect()
            };
            largest_remainder(u64::from(rest), &basis)
        };
        let mut updated = split.clone();
        let mut it = shares.into_iter();
        for b in &mut updated.backends {
            b.weight = if b.service == backend {
                percent
            } else {
                it.next().unwrap_or(0) as u32
            };
        }
        // A lone backend must carry everything, whatever was asked.
        if others.is_empty() {
            updated.backends[0].weight = 100;
        }
        let mut next = self.clone();
        next.splits.insert(updated.key(), updated.clone());
        Ok((next, updated))
    }
}

/// Inserts `value` under `key` and says whether that created, changed or kept it.
/// Inserts or replaces, saying which it was.
pub fn upsert<K: Ord, V: PartialEq + Clone>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: &V,
) -> Outcome {
    match map.insert(key, value.clone()) {
        None => Outcome::Created,
        Some(old) if &old == value => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    }
}

/// Divides `total` in proportion to `basis` with whole numbers that sum to `total`.
fn largest_remainder(total: u64, basis: &[u64]) -> Vec<u64> {
    let sum: u64 = basis.iter().sum();
    let mut shares: Vec<u64> = basis.iter().map(|b| total * b / sum).collect();
    let mut order: Vec<usize> = (0..basis.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((total * basis[i]) % sum));
    let mut left = total - shares.iter().sum::<u64>();
    for i in order {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<Split>, Vec<manifest::Error>> {
        let docs = manifest::parse("r.yaml", yaml)?;
        splits_from(&docs)
    }

    fn split_yaml(name: &str, root: &str, backends: &[(&str, &str)]) -> String {
        let mut s = format!(
            "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: {name}\nspec:\n  service: {root}\n  backends:\n"
        );
        for (b, w) in backends {
            s.push_str(&format!("  - service: {b}\n    weight: {w}\n"));
        }
        s
    }

    #[test]
    fn valid_split() {
        let s = parse(&split_yaml(
            "e",
            "echo",
            &[("echo-v1", "80"), ("echo-v2", "20")],
        ))
        .unwrap();
        assert_eq!(
            s[0].backends[1],
            Backend {
                service: "echo-v2".into(),
                weight: 20
            }
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = parse(&split_yaml(
            "e",
            "echo",
            &[("echo", "-1"), ("echo-v2", "1.5")],
        ))
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("spec.backends[0].service") && t.contains("self-referential")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("spec.backends[0].weight") && t.contains("negative")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("spec.backends[1].weight") && t.contains("whole")),
            "{text:?}"
        );
    }

    #[test]
    fn all_zero_weights_rejected() {
        let errs = parse(&split_yaml("e", "echo", &[("a", "0"), ("b", "0")])).unwrap_err();
        assert!(errs[0].problem.contains("every weight is 0"));
    }

    #[test]
    fn two_splits_for_one_root_rejected_in_a_file_and_across_applies() {
        let two = format!(
            "{}---\n{}",
            split_yaml("a", "echo", &[("v1", "1")]),
            split_yaml("b", "echo", &[("v2", "1")])
        );
        let errs = parse(&two).unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("already has TrafficSplit default/a"),
            "{errs:?}"
        );

        let docs_a = manifest::parse("a.yaml", &split_yaml("a", "echo", &[("v1", "1")])).unwrap();
        let (set, _) = RuleSet::default()
            .apply(
                &Incoming {
                    splits: splits_from(&docs_a).unwrap(),
                    ..Default::default()
                },
                &docs_a,
            )
            .unwrap();
        let docs_b = manifest::parse("b.yaml", &split_yaml("b", "echo", &[("v2", "1")])).unwrap();
        let errs = set
            .apply(
                &Incoming {
                    splits: splits_from(&docs_b).unwrap(),
                    ..Default::default()
                },
                &docs_b,
            )
            .unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .starts_with("b.yaml:1: TrafficSplit default/b"),
            "{errs:?}"
        );
        // Re-applying the same name is an update, not a conflict.
        let docs_a2 = manifest::parse(
            "a.yaml",
            &split_yaml("a", "echo", &[("v1", "1"), ("v2", "1")]),
        )
        .unwrap();
        let (_, outcomes) = set
            .apply(
                &Incoming {
                    splits: splits_from(&docs_a2).unwrap(),
                    ..Default::default()
                },
                &docs_a2,
            )
            .unwrap();
        assert_eq!(outcomes[0].1, Outcome::Configured);
    }

    #[test]
    fn shift_sums_to_100_and_keeps_proportions() {
        let docs = manifest::parse(
            "a.yaml",
            &split_yaml("a", "echo", &[("v1", "60"), ("v2", "0"), ("v3", "20")]),
        )
        .unwrap();
        let (set, _) = RuleSet::default()
            .apply(
                &Incoming {
                    splits: splits_from(&docs).unwrap(),
                    ..Default::default()
                },
                &docs,
            )
            .unwrap();
        let (_, s) = set.shift("default", "echo", "v2", 10).unwrap();
        let w: Vec<u32> = s.backends.iter().map(|b| b.weight).collect();
        assert_eq!(w, vec![68, 10, 22]);
        let (_, s) = set.shift("default", "echo", "v2", 100).unwrap();
        assert_eq!(
            s.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            vec![0, 100, 0]
        );
        assert!(matches!(
            set.shift("default", "echo", "v9", 5),
            Err(ShiftError::UnknownBackend { .. })
        ));
        assert!(matches!(
            set.shift("default", "nope", "v1", 5),
            Err(ShiftError::NoSplit { .. })
        ));
        assert!(matches!(
            set.shift("default", "echo", "v1", 101),
            Err(ShiftError::Percent(101))
        ));
    }

    #[test]
    fn shift_from_all_zero_others_splits_equally() {
        assert_eq!(largest_remainder(90, &[1, 1]), vec![45, 45]);
        assert_eq!(largest_remainder(100, &[1, 1, 1]).iter().sum::<u64>(), 100);
    }
}
