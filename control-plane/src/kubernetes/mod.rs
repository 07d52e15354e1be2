//! The Kubernetes backend (`--registry kubernetes`): the client
//! (`client`), the reflectors that keep the cluster's registry current
//! (`registry`), those that turn rule objects into rule documents
//! (`rules`; Gateway API HTTPRoutes once their CRD is served, `gateway`)
//! and write their `.status.conditions` (`status`), the
//! the TrafficSplit weights a shift patches (`weights`), the
//! admission webhook's answer (`admission`) and the caBundle its
//! configuration carries (`ca_bundle`), leader election among replicas
//! (`leader`) and the CA they share in a Secret (`ca_secret`). What they produce goes out on
//! watch channels; `app` feeds it to the state, so nothing here calls back
//! into its caller.

pub mod admission;
pub mod ca_bundle;
pub mod ca_secret;
pub mod gateway;
pub mod injection;
pub mod leader;
pub mod registry;
pub mod rules;
pub mod status;
pub mod weights;

use std::path::Path;

/// Why the cluster cannot be reached at startup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Path.
        path: String,
        /// Cause.
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig given and none could be inferred.
    #[error("no Kubernetes config: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the config.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or from $KUBECONFIG, ~/.kube/config or the
/// in-cluster service account when None.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let named = |source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(named)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(named)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}
