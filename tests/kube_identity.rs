//! Workload identity with `--registry kubernetes`: a sidecar proves itself
//! with its projected ServiceAccount token (audience `mesh`, read from a
//! file as the kubelet mounts it), which the CA checks with a TokenReview
//! against the Kubernetes API test server; every other token is refused,
//! saying why, and one that is not a JWT never reaches the API server.

mod support;
// Only the Kubernetes tests speak to the Kubernetes API test server.
#[path = "support/kube_api/mod.rs"]
mod kube_api;

use kube_api::KubeApi;
use mesh_proto::v1::identity_client::IdentityClient;
use support::{Mesh, TempDir};

fn csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

const ECHO_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projected_service_account_token_proves_the_workload_and_nothing_else_does() {
    kube_api::real_cluster_ignored();
    let dir = TempDir::new("kube-identity");
    let api = KubeApi::start(&dir.0).await;
    let tokens = kube_api::accounts(&api, &dir.0, &["echo", "web"]).await;
    let kubeconfig = api.kubeconfig.display().to_string();
    kube_api::install_crds(&api).await;
    let mesh = Mesh::start_with_args(
        "kube-identity",
        &["--registry", "kubernetes", "--kubeconfig", &kubeconfig],
    )
    .await;

    // The sidecar reads its projected token from a file, as the kubelet
    // mounts it, and gets echo's SPIFFE ID.
    let file = tokens[0].clone();
    let inst = mesh
        .instance_with(
            "echo",
            "v1",
            "echo-v1-a",
            &[],
            None,
            &[("MESH_PROXY_IDENTITY_TOKEN_FILE", &file)],
        )
        .await;
    let (status, body) = meshctl::traffic::get(inst.admin(), "/identity")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(id["identity"], ECHO_ID, "{body}");
    assert!(
        api.seen()
            .iter()
            .any(|s| s == "POST /apis/authentication.k8s.io/v1/tokenreviews"),
        "the CA asked the API server"
    );

    // Every other token is refused, saying why.
    let mut ca = IdentityClient::new(mesh.anonymous_channel().await);
    let cases = [
        (
            "another audience",
            api.token("default", "echo", &["vault"], 3600),
            ECHO_ID,
            tonic::Code::Unauthenticated,
            "is invalid for the target audiences",
        ),
        (
            "expired",
            api.token("default", "echo", &["mesh"], -60),
            ECHO_ID,
            tonic::Code::Unauthenticated,
            "has expired",
        ),
        (
            "a deleted ServiceAccount",
            api.token("default", "ghost", &["mesh"], 3600),
            "spiffe://cluster.local/ns/default/sa/ghost",
            tonic::Code::Unauthenticated,
            "ghost has been deleted",
        ),
        (
            "web's token for echo's CSR",
            api.token("default", "web", &["mesh"], 3600),
            ECHO_ID,
            tonic::Code::PermissionDenied,
            "the proof is for spiffe://cluster.local/ns/default/sa/web but the CSR asks for spiffe://cluster.local/ns/default/sa/echo",
        ),
        (
            "not a JWT",
            "a-bootstrap-token".to_string(),
            ECHO_ID,
            tonic::Code::Unauthenticated,
            "not a JWT",
        ),
        (
            "a forged signature",
            {
                let t = api.token("default", "echo", &["mesh"], 3600);
                format!("{}.AAAA", t.rsplit_once('.').unwrap().0)
            },
            ECHO_ID,
            tonic::Code::Unauthenticated,
            "invalid bearer token",
        ),
    ];
    let reviews_before = api.seen().len();
    for (what, token, claim, code, says) in &cases {
        let err = ca
            .certify(mesh_proto::v1::CertifyRequest {
                csr_pem: csr(claim),
                token: token.clone(),
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), *code, "{what}: {}", err.message());
        assert!(
            err.message().contains(says),
            "{what}: {:?} does not say {says:?}",
            err.message()
        );
        eprintln!("measured: {what}: {:?} {}", err.code(), err.message());
    }
    let reviews = api.seen()[reviews_before..]
        .iter()
        .filter(|s| s.ends_with("/tokenreviews"))
        .count();
    assert_eq!(
        reviews,
        cases.len() - 1,
        "all but the non-JWT went to the API server"
    );
}
