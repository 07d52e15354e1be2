//! Hooks over https: one connection per call (hooks are called a few
//! times a step, never on a request path), verified against the hook's
//! `caBundle` when it has one (as a Kubernetes webhook's clientConfig
//! is), else the system's roots; the server name is the URL's host.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::sync::{Arc, OnceLock};

/// The certificates of a PEM bundle; an error names what is wrong.
pub(super) fn bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system root certificates: https hooks need a caBundle");
            }
            Arc::new(store)
        })
        .clone()
}

/// Sends `req` (an absolute https URL) over a fresh TLS connection.
pub(super) async fn send(
    mut req: hyper::Request<Full<Bytes>>,
    ca_pem: Option<&str>,
) -> Result<hyper::Response<Incoming>, String> {
    let uri = req.uri().clone();
    let host = uri.host().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let roots = match ca_pem {
        Some(pem) => {
            let mut store = RootCertStore::empty();
            for c in bundle(pem)? {
                store.add(c).map_err(|e| format!("caBundle: {e}"))?;
            }
            Arc::new(store)
        }
        None => system_roots(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host:?}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // Origin form on the wire, the authority in Host.
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = path.parse().map_err(|e| format!("{path:?}: {e}"))?;
    req.headers_mut().insert(
        hyper::header::HOST,
        authority
            .parse()
            .map_err(|e| format!("{authority:?}: {e}"))?,
    );
    sender.send_request(req).await.map_err(|e| e.to_string())
}
