//! A TrafficSplit's weights moved in the cluster, for `meshctl release
//! shift` and the release controller alike: the object read fresh, its
//! backends shifted by the same arithmetic as a local shift, and patched
//! only if nobody changed it meanwhile. The merge patch carries the
//! resourceVersion read, which the API server takes as a precondition
//! (409 Conflict on a newer object: "Resource versions" and "Patch and
//! Apply" in https://kubernetes.io/docs/reference/using-api/api-concepts/);
//! a conflict is redone from the newer version, a few times.

use crate::rules::{ShiftError, Split, splits_from};
use kube::api::{DynamicObject, Patch, PatchParams};

/// Conflicts redone before giving up.
const TRIES: usize = 5;

/// Why the weights did not move.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("TrafficSplit {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        source: kube::Error,
    },
    /// The object as stored does not validate.
    #[error("TrafficSplit {0} does not validate as stored: {1}")]
    Invalid(String, String),
    /// The shift itself (an unknown backend, a bad percent).
    #[error(transparent)]
    Shift(#[from] ShiftError),
    /// Others kept changing it.
    #[error("TrafficSplit {0} changed under every one of {TRIES} tries; try again")]
    Busy(String),
}

/// The TrafficSplit API resource.
fn resource() -> kube::api::ApiResource {
    super::rules::resource(&super::rules::KINDS[0])
}

/// Gives `backend` `percent`% of TrafficSplit `namespace/name` (the rest
/// to `rest_to` alone when given, else shared as the split shares it);
/// returns the split as shifted and the object as stored.
pub async fn shift(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    backend: &str,
    percent: u32,
    rest_to: Option<&str>,
) -> Result<(Split, DynamicObject), Error> {
    let ar = resource();
    let api = kube::Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &ar);
    let api_error = |source| Error::Api {
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    let what = format!("{namespace}/{name}");
    for _ in 0..TRIES {
        let current = api.get(name).await.map_err(api_error)?;
        let (_, parsed) = super::rules::document(&ar, &current);
        let split = parsed
            .and_then(|docs| splits_from(&docs))
            .map_err(|problems| {
                let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
                Error::Invalid(what.clone(), all.join("; "))
            })?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid(what.clone(), "no split in it".into()))?;
        let shifted = split.shifted(backend, percent, rest_to)?;
        let backends: Vec<serde_json::Value> = shifted
            .backends
            .iter()
            .map(|b| serde_json::json!({"service": b.service, "weight": b.weight}))
            .collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"backends": backends},
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
