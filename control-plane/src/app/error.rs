//! Why mesh-control could not start: each error fatal, naming its cause.

use std::net::SocketAddr;

/// Startup errors; each one is fatal and names its cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mesh file does not parse or validate.
    #[error("invalid mesh config:\n{}", .0.join("\n"))]
    Config(Vec<String>),
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The releases on disk cannot be read.
    #[error(transparent)]
    Releases(#[from] crate::release::Error),
    /// The CA could not be loaded or created.
    #[error(transparent)]
    Ca(#[from] crate::identity::ca::Error),
    /// The admin listener's TLS or the operator credentials could not be made.
    #[error("TLS: {0}")]
    Tls(#[from] crate::mtls::Error),
    /// The bootstrap tokens file is invalid.
    #[error(transparent)]
    Tokens(#[from] crate::identity::tokens::Error),
    /// The CA Secret could not be read or created.
    #[error(transparent)]
    CaSecret(#[from] crate::kubernetes::ca_secret::Error),
    /// The Kubernetes registry's client could not be made.
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::Error),
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}
