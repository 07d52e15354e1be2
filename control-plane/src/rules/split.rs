//! SMI TrafficSplit as a validated domain type: each split alone (weights
//! whole and non-negative, not all zero, no self-reference), one split per
//! root service taking the unmatched traffic, and the arithmetic of
//! `release shift`. Pure: no I/O, no locks.

use super::problems::Problems;
use super::route::model::Backend;
use crate::manifest::smi::TrafficSplit;
use crate::manifest::{self, Document, Located};
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

impl Split {
    /// `namespace/name`, the split's identity.
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// This split with `backend` at `percent`%; the rest goes to the other
    /// backends in proportion to their current weights (equally if they are
    /// all 0). Weights of the result sum to 100.
    pub fn shifted(
        &self,
        backend: &str,
        percent: u32,
        rest_to: Option<&str>,
    ) -> Result<Split, ShiftError> {
        let label = format!("split {}/{}", self.namespace, self.name);
        Ok(Split {
            backends: shifted(&self.backends, backend, percent, rest_to, &label)?,
            ..self.clone()
        })
    }
}

/// `backends` with `backend` at `percent`%, the rest shared by the others
/// in proportion to their weights (equally if all are 0), or all of it to
/// `rest_to` when given (a release's stable), summing to 100. `rule` names
/// whose backends they are, for the error.
pub(super) fn shifted(
    backends: &[Backend],
    backend: &str,
    percent: u32,
    rest_to: Option<&str>,
    rule: &str,
) -> Result<Vec<Backend>, ShiftError> {
    check_percent(percent)?;
    if let Some(missing) = std::iter::once(backend)
        .chain(rest_to)
        .find(|name| !backends.iter().any(|b| b.service == *name))
    {
        return Err(ShiftError::UnknownBackend {
            backend: missing.into(),
            rule: rule.into(),
            known: backends
                .iter()
                .map(|b| b.service.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let others: Vec<&Backend> = backends.iter().filter(|b| b.service != backend).collect();
    let rest = 100 - percent;
    let shares = if others.is_empty() {
        Vec::new()
    } else {
        let total: u64 = others.iter().map(|b| u64::from(b.weight)).sum();
        let basis: Vec<u64> = if let Some(stable) = rest_to {
            others
                .iter()
                .map(|b| u64::from(b.service == stable))
                .collect()
        } else if total == 0 {
            vec![1; others.len()]
        } else {
            others.iter().map(|b| u64::from(b.weight)).collect()
        };
        largest_remainder(u64::from(rest), &basis)
    };
    let mut updated = backends.to_vec();
    let mut it = shares.into_iter();
    for b in &mut updated {
        b.weight = if b.service == backend {
            percent
        } else {
            it.next().unwrap_or(0) as u32
        };
    }
    // A lone backend must carry everything, whatever was asked.
    if others.is_empty() {
        updated[0].weight = 100;
    }
    Ok(updated)
}

/// A shift gives a percentage: 0 to 100.
pub(super) fn check_percent(percent: u32) -> Result<(), ShiftError> {
    if percent > 100 {
        return Err(ShiftError::Percent(percent));
    }
    Ok(())
}

/// Errors from `release shift`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShiftError {
    /// No TrafficSplit or HTTPRoute routes this service.
    #[error("no TrafficSplit or HTTPRoute routes service {namespace}/{service}; apply one first")]
    NoSplit {
        /// Namespace.
        namespace: String,
        /// Root service.
        service: String,
    },
    /// The named backend is not part of the rule a release moves.
    #[error("{backend:?} is not a backend of {rule}; its backends are {known}")]
    UnknownBackend {
        /// Requested backend.
        backend: String,
        /// Whose backends: "split default/echo", "HTTPRoute default/r rule w".
        rule: String,
        /// Comma-separated backend names.
        known: String,
    },
    /// Percent outside 0..=100.
    #[error("weight {0} is out of range; give a percentage from 0 to 100")]
    Percent(u32),
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
    if let Err(mut e) = check_unique_roots(out.iter(), |s| Some(located_of(docs, s))) {
        errors.append(&mut e);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

pub(super) fn located_of<'a>(docs: &'a [Located], s: &Split) -> &'a Located {
    manifest::find(docs, "TrafficSplit", &s.namespace, &s.name)
        .expect("every split came from a document")
}

fn split_from(at: &Located, ts: &TrafficSplit) -> Result<Split, Vec<manifest::Error>> {
    let mut problems = Problems::new(
        at,
        format!(
            "TrafficSplit {}/{}",
            ts.metadata.namespace, ts.metadata.name
        ),
    );
    let mut err = |field: String, problem: String| problems.add(field, problem);
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
    let errors = problems.into_errors();
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
pub(super) fn check_unique_roots<'a>(
    splits: impl Iterator<Item = &'a Split>,
    at: impl Fn(&Split) -> Option<&'a Located>,
) -> Result<(), Vec<manifest::Error>> {
    let mut seen: BTreeMap<(&str, &str), &Split> = BTreeMap::new();
    let mut errors = Vec::new();
    // Matched splits may share a root; only one may take the rest.
    for s in splits.filter(|s| s.matches.is_empty()) {
        let root = (s.namespace.as_str(), s.service.as_str());
        match seen.get(&root) {
            // Where the split came from is looked up only for an error:
            // a linear search per split would make a large apply quadratic.
            Some(other) if other.name != s.name => errors.push(manifest::Error::about(
                at(s),
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

/// Divides `total` in proportion to `basis` with whole numbers that sum to `total`.
pub(super) fn largest_remainder(total: u64, basis: &[u64]) -> Vec<u64> {
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
