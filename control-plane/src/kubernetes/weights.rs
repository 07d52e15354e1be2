//! A service's weights moved in the cluster, for `meshctl release shift`
//! and the release controller alike: the object that routes it (a
//! TrafficSplit, or a Gateway API HTTPRoute's rule a release moves) read
//! fresh, its backends shifted by the same arithmetic as a local shift,
//! and patched only if nobody changed it meanwhile. The merge patch
//! carries the resourceVersion read, which the API server takes as a
//! precondition (409 Conflict on a newer object: "Resource versions" and
//! "Patch and Apply" in
//! https://kubernetes.io/docs/reference/using-api/api-concepts/); a
//! conflict is redone from the newer version, a few times.

use crate::manifest::Located;
use crate::rules::{RuleSet, ShiftError, Split, rules_from, splits_from};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};

/// Conflicts redone before giving up.
const TRIES: usize = 5;

/// Why the weights did not move.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("{what}: {source}")]
    Api {
        /// The object ("TrafficSplit default/echo").
        what: String,
        /// Cause.
        source: kube::Error,
    },
    /// The object as stored does not validate.
    #[error("{0} does not validate as stored: {1}")]
    Invalid(String, String),
    /// The shift itself (an unknown backend, a bad percent).
    #[error(transparent)]
    Shift(#[from] ShiftError),
    /// Others kept changing it.
    #[error("{0} changed under every one of {TRIES} tries; try again")]
    Busy(String),
}

/// The object whose weights route a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Router {
    /// A TrafficSplit, by name.
    Split(String),
    /// An HTTPRoute with the Service as parent, by name.
    Route(String),
}

impl Router {
    /// What routes `namespace/service` in `rules`: its TrafficSplit (the
    /// one without matches), else its HTTPRoute.
    pub fn of(rules: &RuleSet, namespace: &str, service: &str) -> Option<Router> {
        let split = rules
            .splits
            .values()
            .find(|s| s.namespace == namespace && s.service == service && s.matches.is_empty());
        match split {
            Some(s) => Some(Router::Split(s.name.clone())),
            None => rules
                .http_route_for(namespace, service)
                .map(|r| Router::Route(r.name.clone())),
        }
    }

    fn resource(&self) -> ApiResource {
        match self {
            Router::Split(_) => super::rules::resource(&super::rules::KINDS[0]),
            Router::Route(_) => super::gateway::resource(),
        }
    }

    fn name(&self) -> &str {
        match self {
            Router::Split(n) | Router::Route(n) => n,
        }
    }
}

/// Gives `backend` `percent`% of what `router` sends `namespace`'s
/// service (the rest to `rest_to` alone when given, else shared as the
/// object shares it); returns the backends as shifted and the object as
/// stored.
pub async fn shift(
    client: &kube::Client,
    namespace: &str,
    router: &Router,
    backend: &str,
    percent: u32,
    rest_to: Option<&str>,
) -> Result<(Split, DynamicObject), Error> {
    let ar = router.resource();
    let api = kube::Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar);
    let name = router.name();
    let what = format!("{} {namespace}/{name}", ar.kind);
    let api_error = |source| Error::Api {
        what: what.clone(),
        source,
    };
    for _ in 0..TRIES {
        let current = api.get(name).await.map_err(api_error)?;
        let (_, parsed) = super::rules::document(&ar, &current);
        let docs = parsed.map_err(|p| invalid(&what, p))?;
        let (shifted, spec) = match router {
            Router::Split(_) => split_patch(&docs, &what, backend, percent, rest_to)?,
            Router::Route(_) => route_patch(&docs, &current, &what, backend, percent, rest_to)?,
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": spec,
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(stored) => return Ok((shifted, stored)),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(api_error(e)),
        }
    }
    Err(Error::Busy(what))
}

fn invalid(what: &str, problems: Vec<crate::manifest::Error>) -> Error {
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Error::Invalid(what.to_string(), all.join("; "))
}

/// A TrafficSplit's backends shifted, and the spec that says so.
fn split_patch(
    docs: &[Located],
    what: &str,
    backend: &str,
    percent: u32,
    rest_to: Option<&str>,
) -> Result<(Split, serde_json::Value), Error> {
    let split = splits_from(docs)
        .map_err(|p| invalid(what, p))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Invalid(what.into(), "no split in it".into()))?;
    let shifted = split.shifted(backend, percent, rest_to)?;
    let backends: Vec<serde_json::Value> = shifted
        .backends
        .iter()
        .map(|b| serde_json::json!({"service": b.service, "weight": b.weight}))
        .collect();
    Ok((shifted, serde_json::json!({"backends": backends})))
}

/// An HTTPRoute's release rule (`HttpRoute::release_rule`) shifted, and
/// the spec that says so: every rule as stored, that rule's backendRefs
/// with their new weights. A merge patch replaces a list whole (a custom
/// resource has no strategic merge), so the rules go back entire.
fn route_patch(
    docs: &[Located],
    current: &DynamicObject,
    what: &str,
    backend: &str,
    percent: u32,
    rest_to: Option<&str>,
) -> Result<(Split, serde_json::Value), Error> {
    let incoming = rules_from(docs).map_err(|p| invalid(what, p))?;
    let (set, _) = RuleSet::default()
        .apply(&incoming, docs)
        .map_err(|p| invalid(what, p))?;
    let route = set
        .http_routes
        .values()
        .next()
        .ok_or_else(|| Error::Invalid(what.into(), "no route in it".into()))?;
    let rule = route
        .release_rule()
        .ok_or_else(|| Error::Invalid(what.into(), "no rules".into()))?;
    let (_, shifted, _) = set.shift(&route.namespace, &route.service, backend, percent, rest_to)?;
    let mut rules = current
        .data
        .pointer("/spec/rules")
        .cloned()
        .unwrap_or_default();
    let refs = rules
        .get_mut(rule)
        .and_then(|r| r.get_mut("backendRefs"))
        .and_then(|r| r.as_array_mut())
        .ok_or_else(|| {
            Error::Invalid(
                what.into(),
                format!("spec.rules[{rule}] has no backendRefs"),
            )
        })?;
    for r in refs {
        let name = r.get("name").and_then(|n| n.as_str()).unwrap_or_default();
        if let Some(b) = shifted.backends.iter().find(|b| b.service == name) {
            r["weight"] = serde_json::json!(b.weight);
        }
    }
    Ok((shifted, serde_json::json!({"rules": rules})))
}
