//! AuthorizationPolicy as a domain type: which callers (by verified SPIFFE
//! ID) a service accepts. Validated here; enforced by the service's own
//! sidecars on inbound. Pure: no I/O.

use super::problems::Problems;
use crate::manifest::policy::AllowRule;
use crate::manifest::{self, Document, Located};
use serde::{Deserialize, Serialize};

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, also the protected service's.
    pub namespace: String,
    /// Protected service.
    pub service: String,
    /// Allow rules; each has exactly one field set.
    pub allow: Vec<AllowRule>,
}

impl Policy {
    /// `(namespace, name)`.
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

/// Converts parsed documents into policies, reporting every problem at once.
pub fn policies_from(docs: &[Located]) -> Result<Vec<Policy>, Vec<manifest::Error>> {
    let mut out: Vec<Policy> = Vec::new();
    let mut errors = Vec::new();
    for at in docs {
        let Document::AuthorizationPolicy(p) = &at.doc else {
            continue;
        };
        let mut problems = Problems::new(
            at,
            format!(
                "AuthorizationPolicy {}/{}",
                p.metadata.namespace, p.metadata.name
            ),
        );
        let mut err = |field: String, problem: String| problems.add(field, problem);
        if p.spec.service.is_empty() {
            err(
                "spec.service".into(),
                "must name the service to protect".into(),
            );
        }
        for (i, r) in p.spec.allow.iter().enumerate() {
            let field = format!("spec.allow[{i}]");
            let set = [&r.identity, &r.namespace, &r.identity_suffix]
                .iter()
                .filter(|f| f.is_some())
                .count();
            if set != 1 {
                err(
                    field.clone(),
                    "set exactly one of identity, namespace, identitySuffix".into(),
                );
            }
            if let Some(id) = &r.identity
                && !id.starts_with("spiffe://")
            {
                err(
                    format!("{field}.identity"),
                    format!("{id:?} is not a SPIFFE ID (spiffe://…)"),
                );
            }
            for (name, v) in [
                ("namespace", &r.namespace),
                ("identitySuffix", &r.identity_suffix),
            ] {
                if v.as_deref() == Some("") {
                    err(format!("{field}.{name}"), "must not be empty".into());
                }
            }
        }
        if let Some(other) = out.iter().find(|o| {
            o.namespace == p.metadata.namespace
                && o.service == p.spec.service
                && o.name != p.metadata.name
        }) {
            err(
                "spec.service".into(),
                format!(
                    "service {:?} already has AuthorizationPolicy {}/{}",
                    p.spec.service, other.namespace, other.name
                ),
            );
        }
        errors.append(&mut problems.into_errors());
        out.push(Policy {
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            service: p.spec.service.clone(),
            allow: p.spec.allow.clone(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<Policy>, Vec<manifest::Error>> {
        policies_from(&manifest::parse("p.yaml", yaml).unwrap())
    }

    const GOOD: &str = "apiVersion: mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: echo-callers
spec:
  service: echo
  allow:
  - identity: spiffe://cluster.local/ns/default/sa/client
  - namespace: prod
  - identitySuffix: /sa/web
";

    #[test]
    fn valid_policy() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p[0].allow.len(), 3);
        assert_eq!(p[0].namespace, "default");
    }

    #[test]
    fn bad_rules_are_named() {
        let bad = GOOD
            .replace(
                "  - namespace: prod\n",
                "  - namespace: prod\n    identitySuffix: /x\n",
            )
            .replace("spiffe://cluster.local/ns/default/sa/client", "client");
        let errs = parse(&bad).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("spec.allow[0].identity") && t.contains("not a SPIFFE ID")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("spec.allow[1]") && t.contains("exactly one")),
            "{text:?}"
        );
        let two = format!("{GOOD}---\n{}", GOOD.replace("echo-callers", "other"));
        assert!(
            parse(&two).unwrap_err()[0]
                .to_string()
                .contains("already has AuthorizationPolicy")
        );
    }
}
