//! The sidecar's workload identity: generates a key pair locally, proves
//! who it is with its bootstrap token, and gets a SPIFFE certificate for the
//! key. The private key never leaves this process: only a CSR is sent. The
//! certificate is renewed at ~70% of its lifetime with a fresh key; a failed
//! renewal keeps the current certificate and retries with backoff.

use arc_swap::ArcSwapOption;
use mesh_proto::v1 as pb;
use mesh_proto::v1::identity_client::IdentityClient;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// Renew when this fraction of the lifetime has passed.
const RENEW_AT: f64 = 0.7;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A certificate and the key it certifies.
pub struct Certified {
    /// SPIFFE ID.
    pub identity: String,
    /// Leaf then intermediates, PEM.
    pub chain_pem: Vec<String>,
    /// The private key, PEM. Never serialized anywhere but into TLS configs.
    pub key_pem: String,
    /// Trust anchors, PEM.
    pub roots_pem: Vec<String>,
    /// When it was issued and when it expires, Unix seconds.
    pub issued_unix: i64,
    /// Expiry, Unix seconds.
    pub not_after_unix: i64,
    /// The leaf's serial number, hex: tells one certificate from the next.
    pub serial: String,
    /// rustls configs for this certificate.
    pub tls: crate::tls::material::Material,
}

/// The current certificate, readable without locks; `None` until the first.
pub type Current = Arc<ArcSwapOption<Certified>>;

/// What `/identity` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The SPIFFE ID of the current certificate; `None` until the first.
    pub identity: Option<String>,
    not_after_unix: Option<i64>,
    expires_in_secs: Option<i64>,
    serial: Option<String>,
    renewals: u64,
    roots_pem: Vec<String>,
}

/// Errors obtaining a certificate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the key or CSR failed.
    #[error("building the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// The CA refused or could not be reached.
    #[error("the CA refused: {0}")]
    Refused(#[from] tonic::Status),
    /// The certificate it returned is unusable.
    #[error("unusable certificate: {0}")]
    Tls(#[from] crate::tls::material::Error),
    /// The token file could not be read.
    #[error("reading the ServiceAccount token {path}: {source}")]
    TokenFile {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Keeps the workload's certificate fresh.
pub struct Agent {
    client: IdentityClient<Channel>,
    proof: crate::config::Proof,
    identity: String,
    current: Current,
    renewals: Arc<AtomicU64>,
    certified: tokio::sync::watch::Sender<bool>,
}

impl Agent {
    /// An agent for `identity`, proving it with `proof` over `channel`
    /// (the bootstrap channel: it needs no certificate of its own).
    pub fn new(channel: Channel, proof: crate::config::Proof, identity: String) -> Self {
        Agent {
            client: IdentityClient::new(channel),
            proof,
            identity,
            current: Arc::new(ArcSwapOption::empty()),
            renewals: Arc::new(AtomicU64::new(0)),
            certified: tokio::sync::watch::channel(false).0,
        }
    }

    /// Turns true once the first certificate is in place.
    pub fn certified(&self) -> tokio::sync::watch::Receiver<bool> {
        self.certified.subscribe()
    }

    /// The shared current certificate.
    pub fn current(&self) -> Current {
        self.current.clone()
    }

    /// A reader for `/identity`.
    pub fn status_fn(&self) -> impl Fn() -> Status + Send + Sync + 'static {
        let (current, renewals) = (self.current.clone(), self.renewals.clone());
        move || {
            let c = current.load();
            Status {
                identity: c.as_ref().map(|c| c.identity.clone()),
                not_after_unix: c.as_ref().map(|c| c.not_after_unix),
                expires_in_secs: c.as_ref().map(|c| c.not_after_unix - now_unix()),
                serial: c.as_ref().map(|c| c.serial.clone()),
                renewals: renewals.load(Ordering::Relaxed),
                roots_pem: c.as_ref().map(|c| c.roots_pem.clone()).unwrap_or_default(),
            }
        }
    }

    /// The proof to send: a projected token is read afresh each time, as
    /// the kubelet rotates it.
    fn token(&self) -> Result<String, Error> {
        match &self.proof {
            crate::config::Proof::Token(t) => Ok(t.clone()),
            crate::config::Proof::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|source| Error::TokenFile {
                    path: path.display().to_string(),
                    source,
                }),
        }
    }

    async fn certify(&mut self) -> Result<Certified, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(self.identity.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let resp = self
            .client
            .certify(pb::CertifyRequest {
                csr_pem: csr,
                token: self.token()?,
            })
            .await?
            .into_inner();
        let mut chain_pem = vec![resp.certificate_pem];
        chain_pem.extend(resp.chain_pem);
        let key_pem = key.serialize_pem();
        let tls = crate::tls::material::Material::new(&chain_pem, &key_pem, &resp.roots_pem)?;
        let serial = leaf_serial(&chain_pem[0]).unwrap_or_default();
        Ok(Certified {
            serial,
            identity: resp.identity,
            chain_pem,
            key_pem,
            roots_pem: resp.roots_pem,
            issued_unix: now_unix(),
            not_after_unix: resp.not_after_unix,
            tls,
        })
    }

    /// Obtains and renews certificates forever.
    pub async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.certify().await {
                Ok(c) => {
                    let lifetime = (c.not_after_unix - c.issued_unix).max(1) as f64;
                    let wait = Duration::from_secs_f64(lifetime * RENEW_AT);
                    tracing::info!(identity = %c.identity, not_after = c.not_after_unix, "certificate obtained");
                    // New connections pick this up; existing ones keep theirs until they close.
                    if self.current.swap(Some(Arc::new(c))).is_some() {
                        self.renewals.fetch_add(1, Ordering::Relaxed);
                    }
                    self.certified.send_replace(true);
                    backoff = FIRST_BACKOFF;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, identity = %self.identity, "certificate request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The serial number of a PEM certificate, as hex.
fn leaf_serial(pem: &str) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.raw_serial_as_string())
}
