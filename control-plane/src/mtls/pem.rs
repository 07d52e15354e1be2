//! What both sides of the control plane's TLS read: certificates and
//! roots from PEM, the one crypto provider, the SPIFFE ID a certificate
//! proves, and the errors that name what they concern.

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS problems, each naming what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A credentials file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A credentials file does not hold usable PEM.
    #[error("{path}: {reason}")]
    Pem {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The CA could not issue.
    #[error(transparent)]
    Ca(#[from] crate::identity::ca::Error),
}

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn certs(pems: &[String], path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    pems.iter()
        .map(|p| {
            CertificateDer::from_pem_slice(p.as_bytes()).map_err(|e| Error::Pem {
                path: path.into(),
                reason: e.to_string(),
            })
        })
        .collect()
}

pub(super) fn roots(pems: &[String], path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for der in certs(pems, path)? {
        store.add(der)?;
    }
    Ok(Arc::new(store))
}

/// The single URI SAN of a certificate, if it is a SPIFFE ID.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let first = uris.next()?;
    (uris.next().is_none() && first.starts_with("spiffe://")).then(|| first.to_string())
}
