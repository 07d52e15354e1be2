//! Why a release call was refused, or a release's weight did not apply.

use super::machine;
use crate::manifest;
use crate::store;

/// Why a release call was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec has problems (every one named).
    #[error("the release spec has {} problem(s)", .0.len())]
    Invalid(Vec<manifest::Error>),
    /// One release per service at a time.
    #[error("a release of {service} is already {phase}; abort or finish it first")]
    UnderWay {
        /// Whose.
        service: String,
        /// Its phase.
        phase: &'static str,
    },
    /// Nothing under way to act on.
    #[error("no release of {0} under way")]
    Missing(String),
    /// Nothing to show.
    #[error("{0} has never had a release")]
    Never(String),
    /// The service's split cannot carry the release.
    #[error("{0}")]
    Split(String),
    /// A command the release's phase does not allow.
    #[error(transparent)]
    Refused(#[from] machine::Refused),
    /// An action name nobody knows.
    #[error(
        "unknown release action {0:?}; expected pause, resume, promote, promote-full, abort or rollback"
    )]
    Action(String),
    /// `promote --full` while the current window does not pass.
    #[error("promote --full needs the current window to pass its checks; it has: {0}")]
    NotPassing(String),
    /// A pre-rollout hook did not pass.
    #[error("the release did not start: {0}")]
    Webhook(String),
    /// The rules refused the weight.
    #[error(transparent)]
    State(#[from] crate::state::Error),
    /// The state directory failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Kubernetes mode: releases are objects of the cluster, not calls.
    #[error(
        "in Kubernetes mode a release is a Release object: create it with kubectl apply (or meshctl --kubeconfig release start) and command it with meshctl --kubeconfig release {0} (or the mesh.dev/release-command annotation)"
    )]
    Cluster(&'static str),
    /// Kubernetes mode: the TrafficSplit's weights were not patched.
    #[error(transparent)]
    Weights(#[from] crate::kubernetes::weights::Error),
    /// Kubernetes mode: a Release object's status was not written.
    #[error("Release {object}: status not written: {source}")]
    Status {
        /// `namespace/name`.
        object: String,
        /// Cause.
        source: kube::Error,
    },
}
