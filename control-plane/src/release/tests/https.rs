//! Hooks over https against a real TLS server with its own CA.

use crate::release::machine::Record;
use crate::release::spec::Spec;
use mesh_proto::v1 as pb;

/// A hook server over TLS with a certificate for 127.0.0.1 from its own
/// CA: answers 200 to everything; returns its URL and the CA's PEM.
async fn https_hook() -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let ok = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, ok)
                    .await;
            });
        }
    });
    (format!("https://{addr}/gate"), ca.pem())
}

/// An https hook is called over TLS and its certificate checked against
/// its caBundle: with the right bundle it answers, with none (the system's
/// roots) it is refused naming the TLS failure, and a bundle that is not
/// PEM or sits on an http URL is refused by field.
#[tokio::test]
async fn https_hooks_verify_the_server_against_their_ca_bundle() {
    let (url, ca_pem) = https_hook().await;
    let hook = |bundle: &[u8], url: &str| pb::ReleaseSpec {
        service: "echo".into(),
        canary: "echo-v2".into(),
        webhooks: vec![pb::ReleaseWebhook {
            name: "gate".into(),
            r#type: "pre-rollout".into(),
            url: url.into(),
            timeout_ms: 2_000,
            retries: Some(0),
            ca_bundle: bundle.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let caller = crate::release::webhooks::Caller::default();
    let trusted = Spec::from_proto(&hook(ca_pem.as_bytes(), &url)).unwrap();
    let record = Record::new(1, trusted.clone(), 0);
    let answer = caller.call(&record, &trusted.webhooks[0]).await;
    assert_eq!(answer, Ok("pre-rollout webhook gate: 200 OK".to_string()));

    let untrusted = Spec::from_proto(&hook(b"", &url)).unwrap();
    let refused = caller
        .call(
            &Record::new(2, untrusted.clone(), 0),
            &untrusted.webhooks[0],
        )
        .await
        .unwrap_err();
    assert!(
        refused.contains("TLS with 127.0.0.1") && refused.contains("certificate"),
        "{refused}"
    );

    let problems = |spec: pb::ReleaseSpec| -> Vec<String> {
        Spec::from_proto(&spec)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let bad = problems(hook(b"not a certificate", &url));
    assert!(
        bad.iter()
            .any(|p| p.contains("spec.webhooks[0].caBundle: no PEM certificate in it")),
        "{bad:?}"
    );
    let plain = problems(hook(ca_pem.as_bytes(), "http://127.0.0.1:9/gate"));
    assert!(
        plain
            .iter()
            .any(|p| p.contains("spec.webhooks[0].caBundle: a caBundle needs an https:// URL")),
        "{plain:?}"
    );
}
