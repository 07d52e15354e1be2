//! Who may speak for a sidecar: every discovery, heartbeat and telemetry
//! call carries a node (namespace, service, instance), and only a caller
//! whose verified workload identity is of that namespace and of the
//! service's account may send it. The account of a service is the one its
//! Workload document names, else the service's own name (what a sidecar's
//! `MESH_PROXY_SERVICE_ACCOUNT` defaults to). Instances listed in Service
//! documents belong to no caller. Which caller owns which registered
//! instance, and how many each may hold, is the leases' to keep.

use super::{Catalog, ServiceKey, Source};
use crate::identity::workload;
use std::collections::{HashMap, HashSet};

/// Why a call may not speak for its node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No client certificate.
    #[error(
        "{call} needs a workload certificate from the mesh CA (a sidecar gets one with Certify and its bootstrap token)"
    )]
    Anonymous {
        /// The gRPC method.
        call: &'static str,
    },
    /// A certificate, but not a workload identity of this trust domain.
    #[error("{caller} is not a workload identity of trust domain {trust_domain}")]
    NotWorkload {
        /// Verified SPIFFE ID (or what the certificate had).
        caller: String,
        /// This mesh's trust domain.
        trust_domain: String,
    },
    /// The node's namespace is not the caller's.
    #[error("{caller} may not speak for namespace {namespace}: it belongs to {own}")]
    Namespace {
        /// Caller.
        caller: String,
        /// The node's namespace.
        namespace: String,
        /// The caller's own namespace.
        own: String,
    },
    /// The node's service runs under another account.
    #[error(
        "{caller} may not speak for service {namespace}/{service}: that service runs as service account {account}"
    )]
    Account {
        /// Caller.
        caller: String,
        /// Namespace.
        namespace: String,
        /// The node's service.
        service: String,
        /// Its account.
        account: String,
    },
    /// The heartbeat claims an inbound identity that is not the caller's.
    #[error("heartbeat claims identity {claimed} but the caller is {caller}")]
    Claimed {
        /// Caller.
        caller: String,
        /// What the heartbeat said its inbound presents.
        claimed: String,
    },
    /// The instance id is listed in a Service document.
    #[error(
        "instance {namespace}/{instance} is listed in a Service document; {caller} may not register it"
    )]
    Static {
        /// Namespace.
        namespace: String,
        /// Instance id.
        instance: String,
        /// Caller.
        caller: String,
    },
    /// Another identity registered this instance id.
    #[error(
        "instance {namespace}/{instance} is registered by {owner}; {caller} may not speak for it"
    )]
    Owned {
        /// Namespace.
        namespace: String,
        /// Instance id.
        instance: String,
        /// Who registered it.
        owner: String,
        /// Caller.
        caller: String,
    },
    /// The caller holds as many registrations as it may.
    #[error(
        "{caller} already holds {max} registrations, the most one identity may (mesh-control --max-registrations-per-identity)"
    )]
    Cap {
        /// Caller.
        caller: String,
        /// The limit.
        max: usize,
    },
}

impl Refusal {
    /// A label for metrics: which rule refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Anonymous { .. } => "anonymous",
            Refusal::NotWorkload { .. } => "not_workload",
            Refusal::Namespace { .. } => "namespace",
            Refusal::Account { .. } => "service_account",
            Refusal::Claimed { .. } => "claimed_identity",
            Refusal::Static { .. } => "static",
            Refusal::Owned { .. } => "owned",
            Refusal::Cap { .. } => "cap",
        }
    }
}

/// What the registry's documents say about who may register: fixed at
/// startup (apply refuses Service and Workload documents).
#[derive(Debug, Clone, Default)]
pub struct Claims {
    trust_domain: String,
    accounts: HashMap<ServiceKey, String>,
    statics: HashSet<(String, String)>,
    /// Most registered instances one identity may hold.
    pub max_per_identity: usize,
}

impl Claims {
    /// The rules of `registry` (its declared accounts and static instances)
    /// for `trust_domain`.
    pub fn new(
        registry: &impl Catalog,
        accounts: HashMap<ServiceKey, String>,
        trust_domain: &str,
        max_per_identity: usize,
    ) -> Claims {
        let statics = registry
            .instances()
            .filter(|i| i.source == Source::Static)
            .map(|i| (i.namespace.clone(), i.instance_id.clone()))
            .collect();
        Claims {
            trust_domain: trust_domain.to_string(),
            accounts,
            statics,
            max_per_identity,
        }
    }

    /// The service account `namespace/service` runs as.
    pub fn account<'a>(&'a self, namespace: &str, service: &'a str) -> &'a str {
        self.accounts
            .get(&(namespace.to_string(), service.to_string()))
            .map_or(service, String::as_str)
    }

    /// Whether `caller` (its verified SPIFFE ID, `None` without a
    /// certificate) may make `call` for a node of `namespace/service`.
    /// Returns the caller's ID.
    pub fn speaks_for<'c>(
        &self,
        call: &'static str,
        caller: Option<&'c str>,
        namespace: &str,
        service: &str,
    ) -> Result<&'c str, Refusal> {
        let caller = caller.ok_or(Refusal::Anonymous { call })?;
        let who = workload(caller, &self.trust_domain).ok_or_else(|| Refusal::NotWorkload {
            caller: caller.to_string(),
            trust_domain: self.trust_domain.clone(),
        })?;
        if who.namespace != namespace {
            return Err(Refusal::Namespace {
                caller: caller.to_string(),
                namespace: namespace.to_string(),
                own: who.namespace.to_string(),
            });
        }
        let account = self.account(namespace, service);
        if who.service_account != account {
            return Err(Refusal::Account {
                caller: caller.to_string(),
                namespace: namespace.to_string(),
                service: service.to_string(),
                account: account.to_string(),
            });
        }
        Ok(caller)
    }

    /// Whether `caller`, already allowed to speak for the node, may
    /// register instance `key` with an inbound presenting `claimed` (empty:
    /// a plaintext inbound).
    pub fn may_register(
        &self,
        caller: &str,
        key: &(String, String),
        claimed: &str,
    ) -> Result<(), Refusal> {
        if self.statics.contains(key) {
            return Err(Refusal::Static {
                namespace: key.0.clone(),
                instance: key.1.clone(),
                caller: caller.to_string(),
            });
        }
        if !claimed.is_empty() && claimed != caller {
            return Err(Refusal::Claimed {
                caller: caller.to_string(),
                claimed: claimed.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::local::Registry;

    const ECHO: &str = "spiffe://cluster.local/ns/default/sa/echo";

    fn claims() -> Claims {
        let accounts = [(("default".into(), "web".into()), "frontend".into())].into();
        Claims::new(&Registry::default(), accounts, "cluster.local", 2)
    }

    #[test]
    fn a_caller_speaks_only_for_its_namespace_and_account() {
        let c = claims();
        assert_eq!(
            c.speaks_for("Heartbeat", Some(ECHO), "default", "echo"),
            Ok(ECHO)
        );
        let frontend = "spiffe://cluster.local/ns/default/sa/frontend";
        assert!(
            c.speaks_for("Subscribe", Some(frontend), "default", "web")
                .is_ok()
        );
        let refused = |caller: Option<&str>, ns: &str, service: &str| {
            c.speaks_for("Heartbeat", caller, ns, service)
                .unwrap_err()
                .reason()
        };
        assert_eq!(refused(None, "default", "echo"), "anonymous");
        assert_eq!(refused(Some(ECHO), "prod", "echo"), "namespace");
        assert_eq!(refused(Some(ECHO), "default", "web"), "service_account");
        assert_eq!(
            refused(Some(frontend), "default", "echo"),
            "service_account"
        );
        for foreign in [
            "spiffe://other.domain/ns/default/sa/echo",
            "spiffe://cluster.local/ns/default/sa/echo/extra",
            "spiffe://cluster.local/ns//sa/echo",
            "spiffe://cluster.local.evil/ns/default/sa/echo",
        ] {
            assert_eq!(refused(Some(foreign), "default", "echo"), "not_workload");
        }
        let message = c
            .speaks_for("Heartbeat", Some(ECHO), "default", "web")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(ECHO) && message.contains("service account frontend"),
            "{message}"
        );
    }

    #[test]
    fn a_heartbeat_may_claim_only_the_callers_identity() {
        let c = claims();
        let key = ("default".to_string(), "echo-1".to_string());
        assert!(c.may_register(ECHO, &key, ECHO).is_ok());
        assert!(
            c.may_register(ECHO, &key, "").is_ok(),
            "a plaintext inbound"
        );
        let other = "spiffe://cluster.local/ns/default/sa/other";
        assert_eq!(
            c.may_register(ECHO, &key, other).unwrap_err().reason(),
            "claimed_identity"
        );
    }
}
