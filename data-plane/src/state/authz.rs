//! Authorization policies as the inbound side enforces them: which callers,
//! by verified SPIFFE ID, may reach this service. Converted from proto once
//! per snapshot; checked per request without allocating unless it refuses.

use mesh_proto::v1 as pb;

/// An authorization policy, enforced on inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Policy name, for logs.
    pub policy: String,
    /// Any match allows.
    pub allow: Vec<Allow>,
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// Exactly this SPIFFE ID.
    Identity(String),
    /// Any service account in this namespace.
    Namespace(String),
    /// Any SPIFFE ID with this suffix.
    Suffix(String),
}

impl Authorization {
    /// Whether `client` (a verified SPIFFE ID, or `None` for plaintext) may
    /// call; on refusal, the reason.
    pub fn check(&self, client: Option<&str>) -> Result<(), String> {
        let Some(id) = client else {
            return Err(format!(
                "policy {} requires an mTLS client identity; the caller has none",
                self.policy
            ));
        };
        let namespace = id
            .split("/ns/")
            .nth(1)
            .and_then(|rest| rest.split('/').next());
        let allowed = self.allow.iter().any(|rule| match rule {
            Allow::Identity(exact) => id == exact,
            Allow::Namespace(ns) => namespace == Some(ns.as_str()),
            Allow::Suffix(suffix) => id.ends_with(suffix.as_str()),
        });
        if allowed {
            Ok(())
        } else {
            Err(format!("policy {} does not allow {id}", self.policy))
        }
    }

    pub(super) fn from_proto(a: &pb::Authorization) -> Authorization {
        use pb::allow_rule::Match;
        Authorization {
            policy: a.policy.clone(),
            allow: a
                .allow
                .iter()
                .filter_map(|r| match r.r#match.as_ref()? {
                    Match::Identity(v) => Some(Allow::Identity(v.clone())),
                    Match::Namespace(v) => Some(Allow::Namespace(v.clone())),
                    Match::IdentitySuffix(v) => Some(Allow::Suffix(v.clone())),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_matches_identity_namespace_and_suffix() {
        let auth = Authorization {
            policy: "p".into(),
            allow: vec![
                Allow::Identity("spiffe://td/ns/default/sa/client".into()),
                Allow::Namespace("prod".into()),
                Allow::Suffix("/sa/web".into()),
            ],
        };
        for ok in [
            "spiffe://td/ns/default/sa/client",
            "spiffe://td/ns/prod/sa/any",
            "spiffe://td/ns/dev/sa/web",
        ] {
            assert_eq!(auth.check(Some(ok)), Ok(()), "{ok}");
        }
        let denied = auth
            .check(Some("spiffe://td/ns/default/sa/other"))
            .unwrap_err();
        assert!(
            denied.contains("does not allow spiffe://td/ns/default/sa/other"),
            "{denied}"
        );
        assert!(
            auth.check(None)
                .unwrap_err()
                .contains("requires an mTLS client identity")
        );
        // "prod" must not match "production" or a service account named prod.
        assert!(auth.check(Some("spiffe://td/ns/production/sa/x")).is_err());
        assert!(auth.check(Some("spiffe://td/ns/dev/sa/prod")).is_err());
        let nobody = Authorization {
            policy: "p".into(),
            allow: vec![],
        };
        assert!(
            nobody
                .check(Some("spiffe://td/ns/default/sa/client"))
                .is_err()
        );
    }
}
