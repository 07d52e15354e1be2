//! Workload identity: a sidecar with a bootstrap token gets a SPIFFE
//! certificate for a key it generated, renews it before expiry (three
//! renewals within a short lifetime), and keeps chaining to the same root
//! after the CA restarts. The CA refuses tokens it does not know and CSRs
//! for identities the token does not prove, and says why.

mod support;

use mesh_proto::v1::CertifyRequest;
use mesh_proto::v1::identity_client::IdentityClient;
use meshctl::procs::{Proc, wait_ready};
use meshctl::traffic::get;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use support::{DEADLINE, Mesh};

const ECHO_TOKEN: &str = "echo-bootstrap-token-0123456789";
const ECHO_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

async fn identity(admin: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = get(admin, "/identity").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `/identity` satisfies `ok`.
async fn wait_identity(
    admin: std::net::SocketAddr,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let v = identity(admin).await;
        if ok(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_get_and_renew_spiffe_certificates_that_survive_a_ca_restart() {
    let dir = support::TempDir::new("identity-tokens");
    let tokens = dir.0.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!("- {{token: {ECHO_TOKEN}, namespace: default, serviceAccount: echo}}\n"),
    )
    .unwrap();
    let mut mesh = Mesh::start_with_args(
        "identity",
        &[
            "--bootstrap-tokens",
            tokens.to_str().unwrap(),
            "--cert-lifetime-secs",
            "3",
        ],
    )
    .await;
    let mut cmd = mesh.sidecar_cmd("echo", "v1", "echo-0");
    cmd.env("MESH_PROXY_IDENTITY_TOKEN", ECHO_TOKEN);
    let sidecar = Proc::spawn("echo-0-proxy", cmd, &mesh.logs())
        .await
        .unwrap();
    let admin = sidecar.addr("admin").unwrap();
    wait_ready(admin, "/ready", DEADLINE).await.unwrap();

    let first = wait_identity(admin, "first certificate", |v| v["identity"] == ECHO_ID).await;
    let ca_dir = mesh.dir.0.join("state/ca");
    let root = std::fs::read_to_string(ca_dir.join("root.pem")).unwrap();
    assert_eq!(
        first["roots_pem"][0],
        root.as_str(),
        "the sidecar trusts the CA's root"
    );
    for key in ["root.key", "issuing.key"] {
        let mode = std::fs::metadata(ca_dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key} is private");
    }

    // Lifetime 3 s, renewal at ~70%: three renewals, each a new certificate
    // (its own serial) with a later expiry.
    let mut last_expiry = first["not_after_unix"].as_i64().unwrap();
    let mut serials = vec![first["serial"].as_str().unwrap().to_string()];
    for n in 1..=3 {
        let v = wait_identity(admin, "renewal", |v| v["renewals"].as_u64() >= Some(n)).await;
        let expiry = v["not_after_unix"].as_i64().unwrap();
        assert!(
            expiry > last_expiry,
            "renewal {n} did not move expiry forward: {v}"
        );
        let serial = v["serial"].as_str().unwrap().to_string();
        assert!(
            !serials.contains(&serial),
            "renewal {n} served a certificate seen before: {v}"
        );
        serials.push(serial);
        assert!(
            v["expires_in_secs"].as_i64().unwrap() > 0,
            "never serving an expired certificate: {v}"
        );
        last_expiry = expiry;
    }

    // The CA restarts: same root on disk, and renewals continue against it.
    mesh.kill_control().await;
    mesh.restart_control().await;
    assert_eq!(
        std::fs::read_to_string(ca_dir.join("root.pem")).unwrap(),
        root
    );
    let before = identity(admin).await["renewals"].as_u64().unwrap();
    let after = wait_identity(admin, "renewal after CA restart", |v| {
        v["renewals"].as_u64() > Some(before)
    })
    .await;
    assert_eq!(
        after["roots_pem"][0],
        root.as_str(),
        "new certificates chain to the same root"
    );
    // A sidecar started after the restart chains to the same root too.
    let mut cmd = mesh.sidecar_cmd("echo", "v1", "echo-1");
    cmd.env("MESH_PROXY_IDENTITY_TOKEN", ECHO_TOKEN);
    let late = Proc::spawn("echo-1-proxy", cmd, &mesh.logs())
        .await
        .unwrap();
    let late_admin = late.addr("admin").unwrap();
    wait_ready(late_admin, "/ready", DEADLINE).await.unwrap();
    let fresh = identity(late_admin).await;
    assert_eq!(fresh["identity"], ECHO_ID);
    assert_eq!(
        fresh["roots_pem"][0],
        root.as_str(),
        "a new sidecar chains to the same root"
    );

    // Refusals say why.
    let mut ca = IdentityClient::new(mesh.anonymous_channel().await);
    let err = ca
        .certify(CertifyRequest {
            csr_pem: csr("spiffe://cluster.local/ns/default/sa/admin"),
            token: ECHO_TOKEN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("sa/echo") && err.message().contains("sa/admin"),
        "{}",
        err.message()
    );
    let err = ca
        .certify(CertifyRequest {
            csr_pem: csr(ECHO_ID),
            token: "not-a-token-anyone-was-given".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = ca
        .certify(CertifyRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            token: ECHO_TOKEN.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
}
