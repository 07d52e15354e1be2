//! mTLS between sidecars (TLS 1.3 only, rustls with ring). Built once per
//! workload certificate: new connections use the newest certificate while
//! existing ones keep theirs. The client side checks the server's chain
//! against our roots and then requires the exact SPIFFE ID the control plane
//! published for that endpoint; SPIFFE certificates carry only a URI SAN, so
//! rustls's DNS-name check cannot be used for that.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// ALPN for HTTP/2.
pub const H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const HTTP1: &[u8] = b"http/1.1";
/// ALPN for an opaque TCP connection between sidecars: the bytes after
/// the handshake are the app's, copied to the peer's app as they are.
pub const TCP: &[u8] = b"mesh.tcp/1";

/// Why TLS material could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PEM that does not parse.
    #[error("{what}: {source}")]
    Pem {
        /// Which PEM.
        what: &'static str,
        /// Cause.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the material.
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. no roots).
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
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

/// The sidecar's crypto provider: ring, or aws-lc-rs when built with the
/// `aws-lc` feature (the two are compared in BENCHMARKS.md).
fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc")]
    let p = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc"))]
    let p = rustls::crypto::ring::default_provider();
    Arc::new(p)
}

/// Session tickets' encryption, from the same provider.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(not(feature = "aws-lc"))]
    rustls::crypto::ring::Ticketer::new()
}

/// A completed handshake's kind as a label value (`full`, or `resumed`
/// from a TLS 1.3 ticket), or why the connection is refused.
pub fn handshake_kind(session: &rustls::CommonState) -> Result<&'static str, &'static str> {
    judge(
        session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        session.peer_certificates().and_then(|c| c.first()),
    )
}

/// A resumed session skips certificate verification: its peer's leaf must
/// still be inside its validity period, so that a session never outlives
/// the certificate its full handshake proved.
fn judge(resumed: bool, leaf: Option<&CertificateDer<'_>>) -> Result<&'static str, &'static str> {
    if !resumed {
        return Ok("full");
    }
    let valid = leaf.is_some_and(|cert| {
        x509_parser::parse_x509_certificate(cert).is_ok_and(|(_, c)| c.validity().is_valid())
    });
    if valid {
        Ok("resumed")
    } else {
        Err("a resumed session's peer certificate is past its validity")
    }
}

/// (expected server identity, ALPN protocol).
type ClientKey = (String, &'static [u8]);

/// rustls configs for one workload certificate.
pub struct Material {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Terminates inbound mTLS; requires a client certificate from our roots.
    pub server: Arc<ServerConfig>,
    /// Per (expected server identity, ALPN): a handful of service accounts at most.
    clients: Mutex<HashMap<ClientKey, Arc<ClientConfig>>>,
}

impl Material {
    /// Builds configs from PEM: leaf-first chain, private key, roots.
    pub fn new(
        chain_pem: &[String],
        key_pem: &str,
        roots_pem: &[String],
    ) -> Result<Material, Error> {
        let provider = provider();
        let mut chain = Vec::new();
        for pem in chain_pem {
            chain.push(
                CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| Error::Pem {
                    what: "certificate",
                    source,
                })?,
            );
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| Error::Pem {
                what: "private key",
                source,
            })?;
        let roots = root_store(roots_pem)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![H2.to_vec(), HTTP1.to_vec(), TCP.to_vec()];
        // Stateless TLS 1.3 tickets (encrypted under rotating keys, no
        // state per ticket here): a peer's later connections resume with
        // no certificates sent and no signatures made. Four per connection,
        // so a burst of new connections to one endpoint can each resume (a
        // client keeps eight per server). Tickets die with this Material,
        // as the clients' session caches do: after a certificate rotation
        // either side starts over with a full handshake.
        server.ticketer = ticketer()?;
        server.send_tls13_tickets = 4;
        Ok(Material {
            provider,
            roots,
            chain,
            key,
            server: Arc::new(server),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// A client config that presents our certificate, offers `alpn`, and
    /// accepts only a server proving `expected`.
    pub fn client(&self, expected: &str, alpn: &'static [u8]) -> Result<Arc<ClientConfig>, Error> {
        // Taken once per new upstream connection, never per request: connections are pooled.
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(expected.to_string(), alpn)) {
            return Ok(c.clone());
        }
        let verifier = Arc::new(SpiffeVerifier {
            roots: self.roots.clone(),
            expected: expected.to_string(),
            provider: self.provider.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        // The peer marker beside the protocol: a pod's inbound tells a
        // sidecar's handshake from an app's own TLS by it.
        config.alpn_protocols = vec![alpn.to_vec(), crate::intercept::PEER_ALPN.to_vec()];
        let config = Arc::new(config);
        clients.insert((expected.to_string(), alpn), config.clone());
        Ok(config)
    }
}

/// Trust anchors from PEM blocks.
fn root_store(roots_pem: &[String]) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for pem in roots_pem {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|source| Error::Pem {
            what: "root",
            source,
        })?;
        roots.add(der)?;
    }
    Ok(Arc::new(roots))
}

/// A client config that presents no certificate, offers `alpn`, and
/// accepts only a server chaining to `roots_pem` and proving `expected`:
/// how a sidecar reaches the CA before it has a certificate of its own.
pub fn anonymous_client(
    roots: Vec<CertificateDer<'static>>,
    expected: &str,
    alpn: &'static [u8],
) -> Result<Arc<ClientConfig>, Error> {
    let provider = provider();
    let mut store = RootCertStore::empty();
    for der in roots {
        store.add(der)?;
    }
    let verifier = Arc::new(SpiffeVerifier {
        roots: Arc::new(store),
        expected: expected.to_string(),
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Verifies a server chain against our roots, then its SPIFFE ID.
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
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "server identity {} is not the expected {}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use std::time::{Duration, SystemTime};

    struct TestCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl TestCa {
        fn new() -> TestCa {
            let mut p = CertificateParams::default();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            TestCa {
                issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
            }
        }

        /// PEM leaf and key for `id`, valid `from`..`until` seconds relative to now.
        fn leaf(&self, id: &str, from: i64, until: i64) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let at = |s: i64| {
                if s >= 0 {
                    SystemTime::now() + Duration::from_secs(s as u64)
                } else {
                    SystemTime::now() - Duration::from_secs((-s) as u64)
                }
            };
            p.not_before = at(from).into();
            p.not_after = at(until).into();
            (
                p.signed_by(&key, &self.issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        }

        /// Material for a leaf of this CA, trusting this CA.
        fn material(&self, id: &str, from: i64, until: i64) -> Material {
            let (cert, key) = self.leaf(id, from, until);
            Material::new(&[cert], &key, &[self.issuer.pem()]).unwrap()
        }
    }

    const SERVER: &str = "spiffe://cluster.local/ns/default/sa/echo";
    const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

    /// Runs a handshake over an in-memory pipe; returns (client result, server's view of the client).
    async fn handshake(
        client: &Material,
        expected: &str,
        server: &Material,
    ) -> (Result<(), String>, Option<String>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client.client(expected, H2).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
        let server_side = tokio::spawn(async move {
            acceptor.accept(b).await.ok().and_then(|s| {
                s.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(spiffe_id)
            })
        });
        let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        // Keep the client's end open until the server has finished too.
        let client = connector.connect(name, a).await;
        let seen = server_side.await.unwrap();
        (client.map(|_| ()).map_err(|e| e.to_string()), seen)
    }

    #[tokio::test]
    async fn mutual_tls_with_the_expected_identity() {
        let ca = TestCa::new();
        let (server, client) = (
            ca.material(SERVER, -60, 3600),
            ca.material(CLIENT, -60, 3600),
        );
        let (result, seen) = handshake(&client, SERVER, &server).await;
        assert_eq!(result, Ok(()));
        assert_eq!(
            seen.as_deref(),
            Some(CLIENT),
            "the server learns the client's SPIFFE ID"
        );
    }

    #[tokio::test]
    async fn a_server_with_another_identity_is_rejected() {
        let ca = TestCa::new();
        let (server, client) = (
            ca.material(SERVER, -60, 3600),
            ca.material(CLIENT, -60, 3600),
        );
        let (result, _) = handshake(
            &client,
            "spiffe://cluster.local/ns/default/sa/billing",
            &server,
        )
        .await;
        let err = result.unwrap_err();
        assert!(err.contains("is not the expected"), "{err}");
    }

    #[tokio::test]
    async fn another_ca_is_rejected_on_both_sides() {
        let (ours, theirs) = (TestCa::new(), TestCa::new());
        // Their server: our client refuses it.
        let (result, _) = handshake(
            &ours.material(CLIENT, -60, 3600),
            SERVER,
            &theirs.material(SERVER, -60, 3600),
        )
        .await;
        assert!(result.is_err());
        // Their client, which trusts our root so its own check passes: our server refuses it.
        let (cert, key) = theirs.leaf(CLIENT, -60, 3600);
        let intruder = Material::new(&[cert], &key, &[ours.issuer.pem()]).unwrap();
        let (_, seen) = handshake(&intruder, SERVER, &ours.material(SERVER, -60, 3600)).await;
        assert_eq!(
            seen, None,
            "our server accepted a client certificate from another CA"
        );
    }

    /// Connects `client` to `server` and reads one byte the server writes
    /// (so the client takes in the session tickets sent before it): each
    /// side's handshake kind.
    async fn kinds(client: &Material, server: &Material) -> (&'static str, &'static str) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client.client(SERVER, H2).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
        let server_side = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = acceptor.accept(b).await.unwrap();
            s.write_all(b"x").await.unwrap();
            s.flush().await.unwrap();
            let kind = handshake_kind(s.get_ref().1).unwrap();
            (kind, s)
        });
        let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let mut c = connector.connect(name, a).await.unwrap();
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut c, &mut byte)
            .await
            .unwrap();
        let (server_kind, _s) = server_side.await.unwrap();
        (handshake_kind(c.get_ref().1).unwrap(), server_kind)
    }

    #[tokio::test]
    async fn a_second_connection_resumes_until_a_certificate_rotates() {
        let ca = TestCa::new();
        let (server, client) = (
            ca.material(SERVER, -60, 3600),
            ca.material(CLIENT, -60, 3600),
        );
        assert_eq!(kinds(&client, &server).await, ("full", "full"));
        for _ in 0..3 {
            assert_eq!(kinds(&client, &server).await, ("resumed", "resumed"));
        }
        // New material on either side (a rotation) starts over.
        let rotated = ca.material(SERVER, -60, 3600);
        assert_eq!(kinds(&client, &rotated).await, ("full", "full"));
        let fresh_client = ca.material(CLIENT, -60, 3600);
        assert_eq!(kinds(&fresh_client, &rotated).await, ("full", "full"));
    }

    #[test]
    fn a_resumed_session_with_an_expired_peer_certificate_is_refused() {
        let ca = TestCa::new();
        let der = |pem: String| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (live, expired) = (
            der(ca.leaf(CLIENT, -60, 3600).0),
            der(ca.leaf(CLIENT, -7200, -3600).0),
        );
        assert_eq!(judge(true, Some(&live)), Ok("resumed"));
        assert!(judge(true, Some(&expired)).is_err());
        assert!(judge(true, None).is_err());
        // A full handshake verified the certificate itself.
        assert_eq!(judge(false, Some(&expired)), Ok("full"));
    }

    #[tokio::test]
    async fn expired_certificates_are_rejected_on_both_sides() {
        let ca = TestCa::new();
        let (result, _) = handshake(
            &ca.material(CLIENT, -60, 3600),
            SERVER,
            &ca.material(SERVER, -7200, -3600),
        )
        .await;
        assert!(
            result.is_err(),
            "client accepted an expired server certificate"
        );
        let (_, seen) = handshake(
            &ca.material(CLIENT, -7200, -3600),
            SERVER,
            &ca.material(SERVER, -60, 3600),
        )
        .await;
        assert_eq!(seen, None, "server accepted an expired client certificate");
    }
}
