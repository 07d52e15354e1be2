//! Who may call the admin API. Every call comes over mTLS with a client
//! certificate from the mesh CA; reads (get, status, stat, check) need the
//! viewer or the admin identity, writes (apply, delete, shift) the admin
//! one, and anything not listed is refused. Every write is logged, with its
//! caller, under the `audit` target.

use crate::mtls::{Caller, system_id};
use futures::future::BoxFuture;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

/// The operator who may change the mesh.
pub const ADMIN_ACCOUNT: &str = "mesh-admin";
/// An operator who may only look.
pub const VIEWER_ACCOUNT: &str = "mesh-viewer";

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads state.
    Read,
    /// Changes rules or weights.
    Write,
}

/// The access an Admin method needs; `None` for a method this table does
/// not know, which nobody may call.
pub fn access(method: &str) -> Option<Access> {
    match method {
        "Apply" | "Delete" | "Shift" | "StartRelease" | "ControlRelease" => Some(Access::Write),
        "GetSplits" | "GetRoutes" | "GetStats" | "ReleaseStatus" | "ProxyStatus" | "Identities"
        | "GetRelease" | "ReleaseHistory" => Some(Access::Read),
        _ => None,
    }
}

/// Whether `caller` (its verified SPIFFE ID) may call `method`.
pub fn decide(caller: Option<&str>, method: &str, trust_domain: &str) -> Result<Access, Status> {
    let Some(caller) = caller else {
        return Err(Status::unauthenticated(
            "the admin API needs a client certificate from the mesh CA (meshctl --credentials)",
        ));
    };
    let Some(needed) = access(method) else {
        return Err(Status::permission_denied(format!(
            "{method} is not an admin call anyone may make"
        )));
    };
    let admin = system_id(trust_domain, ADMIN_ACCOUNT);
    let viewer = system_id(trust_domain, VIEWER_ACCOUNT);
    match needed {
        _ if caller == admin => Ok(needed),
        Access::Read if caller == viewer => Ok(needed),
        Access::Read => Err(Status::permission_denied(format!(
            "{caller} may not call {method}: reads need {viewer} or {admin}"
        ))),
        Access::Write => Err(Status::permission_denied(format!(
            "{caller} may not call {method}: changes need {admin}"
        ))),
    }
}

/// An admin service that first authorizes each call by its caller.
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    trust_domain: Arc<str>,
}

impl<S> Authorized<S> {
    /// Wraps `inner`, admitting the mesh's operators of `trust_domain`.
    pub fn new(inner: S, trust_domain: &str) -> Self {
        Authorized {
            inner,
            trust_domain: trust_domain.into(),
        }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Authorized<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let caller = req.extensions().get::<Caller>().cloned();
        let identity = caller.as_ref().and_then(|c| c.identity.as_deref());
        match decide(identity, &method, &self.trust_domain) {
            Err(status) => {
                tracing::warn!(
                    caller = identity.unwrap_or("(no certificate)"),
                    method,
                    reason = status.message(),
                    "admin call refused"
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(access) => {
                if access == Access::Write {
                    tracing::info!(
                        target: "audit",
                        caller = identity.unwrap_or(""),
                        remote = ?caller.as_ref().and_then(|c| c.remote),
                        method,
                        "admin write"
                    );
                }
                // The clone that was readied serves this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "cluster.local";

    #[test]
    fn reads_and_writes_are_separate_permissions() {
        let admin = system_id(TD, ADMIN_ACCOUNT);
        let viewer = system_id(TD, VIEWER_ACCOUNT);
        let workload = "spiffe://cluster.local/ns/default/sa/echo";
        assert_eq!(decide(Some(&admin), "Apply", TD).unwrap(), Access::Write);
        assert_eq!(decide(Some(&admin), "GetSplits", TD).unwrap(), Access::Read);
        assert_eq!(
            decide(Some(&viewer), "ProxyStatus", TD).unwrap(),
            Access::Read
        );
        let denied = decide(Some(&viewer), "Shift", TD).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("changes need"), "{denied:?}");
        for method in ["Apply", "Identities"] {
            let denied = decide(Some(workload), method, TD).unwrap_err();
            assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{method}");
            assert!(denied.message().starts_with(workload), "{denied:?}");
        }
        assert_eq!(
            decide(None, "GetSplits", TD).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Another trust domain's admin is nobody here; unknown methods are nobody's.
        let foreign = system_id("other.domain", ADMIN_ACCOUNT);
        assert!(decide(Some(&foreign), "Apply", TD).is_err());
        assert!(decide(Some(&admin), "Reboot", TD).is_err());
    }
}
