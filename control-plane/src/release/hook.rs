//! A release's hooks as the controller keeps them: when each is called,
//! where, and how long it may take; every field checked.

use mesh_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// When a hook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    /// Before the first step; must answer 2xx for the release to start.
    PreRollout,
    /// At each check; anything but 2xx fails the check.
    Rollout,
    /// At the last step; the release waits there until it answers 2xx.
    ConfirmPromotion,
    /// When the release ends; its answer is logged.
    PostRollout,
    /// At each check; a 2xx rolls the release back.
    Rollback,
}

impl Hook {
    /// Its name in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::PreRollout => "pre-rollout",
            Hook::Rollout => "rollout",
            Hook::ConfirmPromotion => "confirm-promotion",
            Hook::PostRollout => "post-rollout",
            Hook::Rollback => "rollback",
        }
    }

    fn parse(s: &str) -> Option<Hook> {
        [
            Hook::PreRollout,
            Hook::Rollout,
            Hook::ConfirmPromotion,
            Hook::PostRollout,
            Hook::Rollback,
        ]
        .into_iter()
        .find(|h| h.as_str() == s)
    }
}

/// One validated hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    /// Unique in the release.
    pub name: String,
    /// When it is called.
    pub hook: Hook,
    /// `http://host:port/path` or `https://…`.
    pub url: String,
    /// Per attempt.
    pub timeout_ms: u64,
    /// Attempts after the first.
    pub retries: u32,
    /// Sent along in the payload.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// https: the roots its certificate must chain to (PEM); None: the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// A hook's attempt when the spec names none.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// The longest attempt allowed.
pub const MAX_WEBHOOK_TIMEOUT_MS: u64 = 60_000;
/// Attempts after the first, by default and at most.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 2;
const MAX_WEBHOOK_RETRIES: u32 = 5;

/// The hooks, each field checked; names unique.
pub(super) fn validate(s: &pb::ReleaseSpec, bad: &mut impl FnMut(&str, String)) -> Vec<Webhook> {
    let mut out: Vec<Webhook> = Vec::new();
    for (i, w) in s.webhooks.iter().enumerate() {
        let at = |f: &str| format!("spec.webhooks[{i}].{f}");
        let mut ok = true;
        if w.name.is_empty() {
            bad(&at("name"), "missing".into());
            ok = false;
        } else if out.iter().any(|o| o.name == w.name) {
            bad(
                &at("name"),
                format!("{:?} is used twice; name each hook once", w.name),
            );
            ok = false;
        }
        let hook = Hook::parse(&w.r#type);
        if hook.is_none() {
            bad(
                &at("type"),
                format!(
                    "{:?} is not a hook; expected pre-rollout, rollout, confirm-promotion, post-rollout or rollback",
                    w.r#type
                ),
            );
        }
        let https = match w.url.parse::<http::Uri>() {
            Ok(u) if u.authority().is_some() && u.scheme_str() == Some("http") => false,
            Ok(u) if u.authority().is_some() && u.scheme_str() == Some("https") => true,
            _ => {
                bad(
                    &at("url"),
                    format!("{:?} is not an http(s)://host:port/path URL", w.url),
                );
                ok = false;
                false
            }
        };
        let ca_pem = if w.ca_bundle.is_empty() {
            None
        } else if !https {
            bad(&at("caBundle"), "a caBundle needs an https:// URL".into());
            ok = false;
            None
        } else {
            let pem = String::from_utf8_lossy(&w.ca_bundle).into_owned();
            if let Err(e) = super::https::bundle(&pem) {
                bad(&at("caBundle"), e);
                ok = false;
            }
            Some(pem)
        };
        let timeout_ms = match w.timeout_ms {
            0 => DEFAULT_WEBHOOK_TIMEOUT_MS,
            t => t,
        };
        if timeout_ms > MAX_WEBHOOK_TIMEOUT_MS {
            bad(
                &at("timeout"),
                format!("{timeout_ms} ms is longer than the {MAX_WEBHOOK_TIMEOUT_MS} ms allowed"),
            );
        }
        let retries = w.retries.unwrap_or(DEFAULT_WEBHOOK_RETRIES);
        if retries > MAX_WEBHOOK_RETRIES {
            bad(
                &at("retries"),
                format!("{retries} is more than the {MAX_WEBHOOK_RETRIES} allowed"),
            );
        }
        if let (Some(hook), true) = (hook, ok) {
            out.push(Webhook {
                name: w.name.clone(),
                hook,
                url: w.url.clone(),
                timeout_ms,
                retries,
                metadata: w.metadata.clone().into_iter().collect(),
                ca_pem,
            });
        }
    }
    out
}
