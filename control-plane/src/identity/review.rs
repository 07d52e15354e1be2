//! Kubernetes proofs of identity: a sidecar's projected ServiceAccount
//! token, checked by the API server with a TokenReview
//! (https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/)
//! for the audience `mesh`. The answer names the ServiceAccount
//! (`system:serviceaccount:<namespace>:<name>`), and that alone is the
//! identity the CA signs; the token itself is never kept.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};

/// The audience a projected token for mesh must carry.
pub const AUDIENCE: &str = "mesh";

/// Why a token proves nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// Not even shaped like a JWT: never sent to the API server.
    #[error(
        "the token is not a JWT (a projected ServiceAccount token is three base64url parts joined by dots)"
    )]
    NotJwt,
    /// The API server did not authenticate it (expired, wrong audience,
    /// unknown account, bad signature), in its own words.
    #[error("the API server refused the token: {0}")]
    Unauthenticated(String),
    /// Authenticated, but not for this audience.
    #[error("the token is for audiences {0:?}, not {AUDIENCE:?}")]
    Audience(Vec<String>),
    /// Authenticated as a user, not a ServiceAccount.
    #[error("the token belongs to {0:?}, not a ServiceAccount")]
    NotServiceAccount(String),
    /// The TokenReview itself failed.
    #[error("TokenReview failed: {0}")]
    Review(String),
}

/// The ServiceAccount a token proves, as `(namespace, name)`.
pub async fn review(client: &kube::Client, token: &str) -> Result<(String, String), Refused> {
    let parts: Vec<&str> = token.split('.').collect();
    let b64url = |p: &&str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if parts.len() != 3 || !parts.iter().all(b64url) {
        return Err(Refused::NotJwt);
    }
    let api = kube::Api::<TokenReview>::all(client.clone());
    let asked = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![AUDIENCE.to_string()]),
        },
        ..Default::default()
    };
    let answer = api
        .create(&kube::api::PostParams::default(), &asked)
        .await
        .map_err(|e| Refused::Review(e.to_string()))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(Refused::Unauthenticated(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    // "If spec.audiences is set, status.audiences is the subset the token
    // is valid for"; an empty answer from a server that ignores audiences
    // proves nothing about ours.
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(Refused::Audience(audiences));
    }
    let user = status.user.and_then(|u| u.username).unwrap_or_default();
    service_account(&user).ok_or(Refused::NotServiceAccount(user))
}

/// `system:serviceaccount:<namespace>:<name>` split.
fn service_account(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(':');
    (plain(ns) && plain(name)).then(|| (ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_usernames_name_an_identity() {
        assert_eq!(
            service_account("system:serviceaccount:default:echo"),
            Some(("default".into(), "echo".into()))
        );
        for bad in [
            "alice",
            "system:serviceaccount:default",
            "system:serviceaccount::echo",
            "system:serviceaccount:a:b:c",
        ] {
            assert_eq!(service_account(bad), None, "{bad}");
        }
    }
}
