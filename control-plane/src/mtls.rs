//! TLS for the control plane's listeners: the control plane's own
//! certificate (from its CA, renewed while it runs), the handshake that
//! checks a client certificate against the mesh's roots (required on the
//! admin listener; on the sidecars' listener optional, because Certify
//! is how a sidecar gets its first one), the caller's SPIFFE ID as each
//! request sees it, and the client side meshctl uses (present the
//! operator's certificate, accept only the control plane's SPIFFE ID).
//! SPIFFE certificates carry only a URI SAN, so the server name is checked
//! by ID, never by DNS.

use crate::identity::ca::{Ca, Signed, pem_blocks};
use futures::Stream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The namespace of the mesh's own identities.
pub const SYSTEM_NAMESPACE: &str = "mesh-system";

/// `spiffe://<trust domain>/ns/mesh-system/sa/<account>`.
pub fn system_id(trust_domain: &str, account: &str) -> String {
    crate::identity::spiffe_id(trust_domain, SYSTEM_NAMESPACE, account)
}

/// The control plane's own identity.
pub fn control_id(trust_domain: &str) -> String {
    system_id(trust_domain, "mesh-control")
}

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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pems: &[String], path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    pems.iter()
        .map(|p| {
            CertificateDer::from_pem_slice(p.as_bytes()).map_err(|e| Error::Pem {
                path: path.into(),
                reason: e.to_string(),
            })
        })
        .collect()
}

fn roots(pems: &[String], path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut store = RootCertStore::empty();
    for der in certs(pems, path)? {
        store.add(der)?;
    }
    Ok(Arc::new(store))
}

/// Whether a listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Every caller proves an identity (the admin API).
    Required,
    /// A caller without one is served too, and each call decides
    /// (only Certify takes one).
    Optional,
}

/// A listener's TLS: the control plane's certificate, renewed in place,
/// and client certificates checked against the mesh's roots.
pub struct ServerTls {
    config: RwLock<Arc<ServerConfig>>,
    clients: Clients,
    /// Which listener, for logs.
    what: &'static str,
}

impl ServerTls {
    /// Issues the control plane's certificate for `trust_domain`, for the
    /// listener `what`.
    pub fn new(
        ca: &Ca,
        trust_domain: &str,
        clients: Clients,
        what: &'static str,
    ) -> Result<ServerTls, Error> {
        Ok(ServerTls {
            config: RwLock::new(Self::build(ca, trust_domain, clients)?),
            clients,
            what,
        })
    }

    fn build(ca: &Ca, trust_domain: &str, clients: Clients) -> Result<Arc<ServerConfig>, Error> {
        let (signed, key_pem) = ca.issue(&control_id(trust_domain))?;
        let here = Path::new("(control plane certificate)");
        let mut chain = certs(std::slice::from_ref(&signed.certificate_pem), here)?;
        chain.extend(certs(&signed.chain_pem, here)?);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Pem {
            path: here.into(),
            reason: e.to_string(),
        })?;
        let verifier = WebPkiClientVerifier::builder_with_provider(
            roots(&signed.roots_pem, here)?,
            provider(),
        );
        let verifier = match clients {
            Clients::Required => verifier.build()?,
            // A certificate that is presented is still verified in full.
            Clients::Optional => verifier.allow_unauthenticated().build()?,
        };
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A fresh certificate for new connections; open ones keep theirs.
    pub fn renew(&self, ca: &Ca, trust_domain: &str) -> Result<(), Error> {
        let next = Self::build(ca, trust_domain, self.clients)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a request knows of its caller: the SPIFFE ID its client
/// certificate proves (`None` if it is not a SPIFFE certificate).
#[derive(Clone, Debug)]
pub struct Caller {
    /// Verified SPIFFE ID.
    pub identity: Option<String>,
    /// Remote address.
    pub remote: Option<SocketAddr>,
}

/// The verified SPIFFE ID of a call's client certificate, if it had one.
pub fn identity_of<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.identity.clone())
}

/// An accepted, authenticated connection, holding its place under the
/// listener's limit.
pub struct Conn {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    _slot: crate::listen::Slot,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        let (tcp, session) = self.tls.get_ref();
        Caller {
            identity: session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(spiffe_id),
            remote: tcp.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// Accepted connections after their handshakes, which run concurrently
/// (one slow peer never holds up the next) and each within `handshake`
/// (a silent or slow client is closed then). Where certificates are
/// required, a peer without one from the mesh's roots never gets a
/// connection; where optional, one that presents a bad one does not either.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    limit: crate::listen::Limit,
    handshake: Duration,
) -> impl Stream<Item = io::Result<Conn>> {
    crate::listen::prepared(listener, limit, move |tcp, slot| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let what = tls.what;
        async move {
            let peer = tcp.peer_addr().ok();
            match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(Conn {
                    tls: stream,
                    _slot: slot,
                }),
                Ok(Err(e)) => {
                    tracing::info!(listener = what, ?peer, error = %e, "connection refused: TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::info!(
                        listener = what,
                        ?peer,
                        "connection closed: no TLS handshake within the idle timeout"
                    );
                    None
                }
            }
        }
    })
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

/// Writes a client credential for `identity` (certificate, key, roots)
/// into `dir`, as `meshctl` reads it.
pub fn write_credentials(ca: &Ca, identity: &str, dir: &Path) -> Result<Signed, Error> {
    let (signed, key) = ca.issue(identity)?;
    Ca::write_credentials(dir, &signed, &key)?;
    Ok(signed)
}

/// A client's credentials, read from a directory `write_credentials` filled.
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Credentials {
    /// Reads `cert.pem`, `key.pem` and `roots.pem` from `dir`.
    pub fn read(dir: &Path) -> Result<Credentials, Error> {
        let file = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map(|text| (text, path.clone()))
                .map_err(|source| Error::Read { path, source })
        };
        let (cert, cert_path) = file("cert.pem")?;
        let (key, key_path) = file("key.pem")?;
        let (roots_text, roots_path) = file("roots.pem")?;
        let chain = certs(&pem_blocks(&cert), &cert_path)?;
        if chain.is_empty() {
            return Err(Error::Pem {
                path: cert_path,
                reason: "no certificate in it".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| Error::Pem {
            path: key_path,
            reason: e.to_string(),
        })?;
        Ok(Credentials {
            chain,
            key,
            roots: roots(&pem_blocks(&roots_text), &roots_path)?,
        })
    }

    /// The trust domain of these credentials' own SPIFFE ID.
    pub fn trust_domain(&self) -> String {
        spiffe_id(&self.chain[0])
            .and_then(|id| {
                id.strip_prefix("spiffe://")
                    .and_then(|rest| rest.split('/').next())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    /// A client config that presents these credentials and accepts only a
    /// server proving `expected`.
    pub fn client_config(&self, expected: &str) -> Result<Arc<ClientConfig>, Error> {
        let verifier = Arc::new(SpiffeVerifier {
            roots: self.roots.clone(),
            expected: expected.to_string(),
            provider: provider(),
        });
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client config that presents no certificate and accepts only a server
/// chaining to the roots in `roots_file` and proving `expected`: what a
/// sidecar has before its first certificate (it may only call Certify).
pub fn anonymous_config(roots_file: &Path, expected: &str) -> Result<Arc<ClientConfig>, Error> {
    let text = std::fs::read_to_string(roots_file).map_err(|source| Error::Read {
        path: roots_file.into(),
        source,
    })?;
    let verifier = Arc::new(SpiffeVerifier {
        roots: roots(&pem_blocks(&text), roots_file)?,
        expected: expected.to_string(),
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A name for rustls's SNI; the verifier checks the SPIFFE ID instead.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("mesh-control").expect("a valid DNS name")
}

/// Verifies a server chain against the roots, then its SPIFFE ID.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "server identity {} is not the control plane's {}",
                other.as_deref().unwrap_or("(none)"),
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
