//! The sidecar's connections to the control plane, over TLS only, each
//! checking that the server chains to `MESH_PROXY_CONTROL_ROOTS` and proves
//! the control plane's SPIFFE ID. Two channels: `bootstrap` presents no
//! certificate and serves only Certify (how the first certificate is got);
//! `workload` presents the current workload certificate, so discovery,
//! heartbeats and telemetry are the caller's own, and opens no connection
//! before there is one. tonic redials either as needed; a renewed
//! certificate is used from the next connection on.

use crate::config::Control;
use crate::tls::identity::Current;
use crate::tls::material::{self, H2};
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why the control plane's channels could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The roots file is unreadable or holds no certificate.
    #[error("{ENV}={path}: {reason}", ENV = crate::config::ENV_CONTROL_ROOTS)]
    Roots {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS config could not be built.
    #[error("control plane TLS: {0}")]
    Tls(#[from] material::Error),
    /// The URL is unusable.
    #[error("control plane address: {0}")]
    Url(#[from] tonic::transport::Error),
}

/// Reads the trust anchors the control plane must chain to: the PEM
/// itself (as the injector puts it in a pod's environment), or a file.
fn roots(control: &Control) -> Result<Vec<CertificateDer<'static>>, Error> {
    let given = control.roots.to_string_lossy();
    let inline = given.trim_start().starts_with("-----BEGIN");
    let path = if inline {
        "the PEM in MESH_PROXY_CONTROL_ROOTS".to_string()
    } else {
        control.roots.display().to_string()
    };
    let bytes = if inline {
        given.as_bytes().to_vec()
    } else {
        std::fs::read(&control.roots).map_err(|e| Error::Roots {
            path: path.clone(),
            reason: e.to_string(),
        })?
    };
    let roots: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Roots {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if roots.is_empty() {
        return Err(Error::Roots {
            path,
            reason: "no certificate in it".into(),
        });
    }
    Ok(roots)
}

/// Where a connection's TLS config comes from.
#[derive(Clone)]
enum Client {
    /// No certificate: Certify only.
    Anonymous(Arc<rustls::ClientConfig>),
    /// The current workload certificate, once there is one.
    Workload {
        current: Current,
        certified: watch::Receiver<bool>,
        expected: Arc<str>,
    },
}

/// Opens TLS connections for tonic.
#[derive(Clone)]
struct Connector(Client);

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
        let client = self.0.clone();
        Box::pin(async move {
            let config = match client {
                Client::Anonymous(config) => config,
                Client::Workload {
                    current,
                    mut certified,
                    expected,
                } => {
                    // Nothing is said to the control plane before this
                    // sidecar can say who it is.
                    let _ = certified.wait_for(|c| *c).await;
                    let cert = current
                        .load_full()
                        .ok_or_else(|| std::io::Error::other("no workload certificate yet"))?;
                    cert.tls
                        .client(&expected, H2)
                        .map_err(std::io::Error::other)?
                }
            };
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| std::io::Error::other("the control plane URL has no host:port"))?;
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            let _ = tcp.set_nodelay(true);
            // The verifier checks the SPIFFE ID; the name only fills SNI.
            let name = ServerName::try_from("mesh-control").expect("a valid DNS name");
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

fn endpoint(control: &Control) -> Result<Endpoint, Error> {
    // tonic sees plain http; the connector does TLS itself.
    let plain = control.url.replacen("https://", "http://", 1);
    Ok(Endpoint::from_shared(plain)?.connect_timeout(Duration::from_secs(2)))
}

/// The channel for Certify: server-authenticated TLS, no client certificate.
pub fn bootstrap(control: &Control) -> Result<Channel, Error> {
    let config = material::anonymous_client(roots(control)?, &control.identity, H2)?;
    Ok(endpoint(control)?.connect_with_connector_lazy(Connector(Client::Anonymous(config))))
}

/// The channel for everything else: it presents `current` (the workload
/// certificate), and connects only once `certified` turns true.
pub fn workload(
    control: &Control,
    current: Current,
    certified: watch::Receiver<bool>,
) -> Result<Channel, Error> {
    Ok(
        endpoint(control)?.connect_with_connector_lazy(Connector(Client::Workload {
            current,
            certified,
            expected: control.identity.as_str().into(),
        })),
    )
}
