//! TLS for the control plane's listeners: the control plane's own
//! certificate (from its CA, renewed while it runs), the handshake that
//! checks a client certificate against the mesh's roots (required on the
//! admin listener; on the sidecars' listener optional, because Certify
//! is how a sidecar gets its first one), the caller's SPIFFE ID as each
//! request sees it, and the client side meshctl uses (present the
//! operator's certificate, accept only the control plane's SPIFFE ID).
//! SPIFFE certificates carry only a URI SAN, so the server name is checked
//! by ID, never by DNS.

mod client;

mod pem;

pub use client::{Connector, Credentials, anonymous_config, server_name};
pub use pem::{Error, spiffe_id};
use pem::{certs, provider, roots};

use crate::identity::ca::{Ca, Signed};
use futures::Stream;
use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
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

/// Whether a listener requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Every caller proves an identity (the admin API).
    Required,
    /// A caller without one is served too, and each call decides
    /// (only Certify takes one).
    Optional,
}

/// Which certificate a listener presents.
#[derive(Debug, Clone)]
pub enum Leaf {
    /// The control plane's SPIFFE identity in this trust domain, which
    /// sidecars and meshctl verify.
    Control(String),
    /// DNS names and IP addresses, which the Kubernetes API server
    /// verifies when it calls the admission webhook; no client
    /// certificate is asked for, as the API server sends none.
    Webhook(Vec<String>),
}

/// A listener's TLS: the control plane's certificate, renewed in place,
/// and client certificates checked against the mesh's roots.
pub struct ServerTls {
    config: RwLock<Arc<ServerConfig>>,
    clients: Clients,
    leaf: Leaf,
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
        Self::with_leaf(ca, Leaf::Control(trust_domain.into()), clients, what)
    }

    /// The admission webhook's listener: a server certificate for `names`,
    /// no client certificates.
    pub fn webhook(ca: &Ca, names: &[String]) -> Result<ServerTls, Error> {
        Self::with_leaf(
            ca,
            Leaf::Webhook(names.to_vec()),
            Clients::Optional,
            "webhook",
        )
    }

    fn with_leaf(
        ca: &Ca,
        leaf: Leaf,
        clients: Clients,
        what: &'static str,
    ) -> Result<ServerTls, Error> {
        Ok(ServerTls {
            config: RwLock::new(Self::build(ca, &leaf, clients)?),
            clients,
            leaf,
            what,
        })
    }

    fn build(ca: &Ca, leaf: &Leaf, clients: Clients) -> Result<Arc<ServerConfig>, Error> {
        let (signed, key_pem) = match leaf {
            Leaf::Control(trust_domain) => ca.issue(&control_id(trust_domain))?,
            Leaf::Webhook(names) => ca.issue_server(names)?,
        };
        let here = Path::new("(control plane certificate)");
        let mut chain = certs(std::slice::from_ref(&signed.certificate_pem), here)?;
        chain.extend(certs(&signed.chain_pem, here)?);
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Pem {
            path: here.into(),
            reason: e.to_string(),
        })?;
        if let Leaf::Webhook(_) = leaf {
            // The API server speaks HTTP/1.1 or h2 to webhooks, over TLS
            // 1.2 or 1.3
            // (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#contacting-the-webhook).
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            return Ok(Arc::new(config));
        }
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
    pub fn renew(&self, ca: &Ca) -> Result<(), Error> {
        let next = Self::build(ca, &self.leaf, self.clients)?;
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

/// Writes a client credential for `identity` (certificate, key, roots)
/// into `dir`, as `meshctl` reads it.
pub fn write_credentials(ca: &Ca, identity: &str, dir: &Path) -> Result<Signed, Error> {
    let (signed, key) = ca.issue(identity)?;
    Ca::write_credentials(dir, &signed, &key)?;
    Ok(signed)
}
