//! ServiceAccount tokens and TokenReview, as the API server has them:
//! tokens shaped as projected ones are (a JWT whose claims carry `aud`,
//! `exp`, `sub: system:serviceaccount:<ns>:<name>` and the `kubernetes.io`
//! namespace and serviceaccount, "Bound service account tokens",
//! https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens),
//! signed here with HMAC-SHA256 by the server's own key; and TokenReview
//! (https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/):
//! the signature, the expiry, the audiences asked for and the existence of
//! the ServiceAccount decide `authenticated`, and a refusal says why in
//! `status.error`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

pub struct Signer {
    key: ring::hmac::Key,
}

impl Default for Signer {
    fn default() -> Self {
        let secret: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
        Signer {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Signer {
    /// A token for `namespace/account`, valid for `audiences` until
    /// `ttl_secs` from now (negative: already expired).
    pub fn issue(
        &self,
        namespace: &str,
        account: &str,
        audiences: &[&str],
        ttl_secs: i64,
    ) -> String {
        let header = B64.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
        let iat = now();
        let claims = json!({
            "aud": audiences,
            "exp": iat + ttl_secs,
            "iat": iat,
            "nbf": iat,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account}},
        });
        let body = format!("{header}.{}", B64.encode(claims.to_string()));
        let sig = ring::hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", B64.encode(sig.as_ref()))
    }

    /// The claims of a token this server signed, or why not.
    fn verify(&self, token: &str) -> Result<Value, String> {
        let invalid = || "invalid bearer token".to_string();
        let (body, sig) = token.rsplit_once('.').ok_or_else(invalid)?;
        let sig = B64.decode(sig).map_err(|_| invalid())?;
        ring::hmac::verify(&self.key, body.as_bytes(), &sig).map_err(|_| invalid())?;
        let claims = body.split_once('.').ok_or_else(invalid)?.1;
        let claims = B64.decode(claims).map_err(|_| invalid())?;
        serde_json::from_slice(&claims).map_err(|_| invalid())
    }

    /// The status of a TokenReview of `review` (its spec); `account_exists`
    /// says whether a ServiceAccount is still there.
    pub fn review(&self, review: &Value, account_exists: impl Fn(&str, &str) -> bool) -> Value {
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or("");
        let wanted: Vec<String> = review
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let refuse = |why: String| json!({"authenticated": false, "error": why});
        let claims = match self.verify(token) {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        if claims["exp"].as_i64().unwrap_or(0) <= now() {
            return refuse("[invalid bearer token, service account token has expired]".into());
        }
        let aud: Vec<String> = claims["aud"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        // With spec.audiences, the token must be valid for at least one;
        // status.audiences is the intersection.
        let granted: Vec<String> = if wanted.is_empty() {
            aud.clone()
        } else {
            wanted.iter().filter(|w| aud.contains(w)).cloned().collect()
        };
        if granted.is_empty() {
            return refuse(format!(
                "[invalid bearer token, token audiences {aud:?} is invalid for the target audiences {wanted:?}]"
            ));
        }
        let ns = claims
            .pointer("/kubernetes.io/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let sa = claims
            .pointer("/kubernetes.io/serviceaccount/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !account_exists(ns, sa) {
            return refuse(format!(
                "[invalid bearer token, service account {ns}/{sa} has been deleted]"
            ));
        }
        json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{ns}:{sa}"),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            },
            "audiences": granted,
        })
    }
}
