//! The client side of the control plane's TLS, as meshctl and the
//! sidecars use it: present an operator's or workload's certificate (or
//! none, before Certify), and accept only a server chaining to the mesh's
//! roots that proves the control plane's SPIFFE ID.

use super::pem::{Error, certs, provider, roots, spiffe_id};
use crate::identity::ca::{Signed, pem_blocks};
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use tonic::transport::Uri;

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

    /// Credentials from a certificate just issued (`Ca::issue`) and its
    /// key: what a replica presents to its peers.
    pub fn from_signed(signed: &Signed, key_pem: &str) -> Result<Credentials, Error> {
        let origin = Path::new("(issued by this control plane)");
        let mut blocks = vec![signed.certificate_pem.clone()];
        blocks.extend(signed.chain_pem.iter().cloned());
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Pem {
            path: origin.into(),
            reason: e.to_string(),
        })?;
        Ok(Credentials {
            chain: certs(&blocks, origin)?,
            key,
            roots: roots(&signed.roots_pem, origin)?,
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

/// Opens TLS connections for tonic: TCP to the URI's authority, then the
/// handshake `config` describes (tonic itself sees plain http).
#[derive(Clone)]
pub struct Connector(pub Arc<ClientConfig>);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.0.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| std::io::Error::other("the control plane URL has no host:port"))?;
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name(), tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
