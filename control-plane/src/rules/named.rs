//! What the rules name must exist: the services that mirrors and fallbacks
//! send to, checked against the registry and the rules together.

use super::route::model::{Fallback, Routing};
use crate::manifest::{self, Located};

/// Refuses mirrors and fallbacks to services nothing serves or declares: a
/// mirror that silently copies to nowhere would make a shadow test
/// meaningless, and a fallback to nowhere is no fallback.
pub fn check_named_services(
    new: &Routing,
    docs: &[Located],
    knows: impl Fn(&str, &str) -> bool,
) -> Result<(), Vec<manifest::Error>> {
    let mut errors = Vec::new();
    let mut check = |kind: &str, ns: &str, name: &str, field: String, what: &str, svc: &str| {
        if !knows(ns, svc) {
            errors.push(manifest::Error::about(
                manifest::find(docs, kind, ns, name),
                &format!("{kind} {ns}/{name}"),
                field,
                format!("{what} names unknown service {ns}/{svc}"),
            ));
        }
    };
    for r in &new.routes {
        for (i, rule) in r.rules.iter().enumerate() {
            if let Some(m) = &rule.mirror {
                check(
                    "HTTPRoute",
                    &r.namespace,
                    &r.name,
                    format!("spec.rules[{i}].filters"),
                    "mirror",
                    &m.service,
                );
            }
        }
    }
    for p in &new.policies {
        if let Some(m) = &p.mirror {
            check(
                "TrafficPolicy",
                &p.namespace,
                &p.name,
                "spec.mirror.service".into(),
                "mirror",
                &m.service,
            );
        }
        if let Some(Fallback::Service(svc)) = &p.fallback {
            check(
                "TrafficPolicy",
                &p.namespace,
                &p.name,
                "spec.fallback.service".into(),
                "fallback",
                svc,
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
