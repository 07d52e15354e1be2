//! The admin API is authenticated and authorised. It listens for mTLS
//! only (RFC 8446 §4.3.2: the server requests a certificate and aborts a
//! handshake without an acceptable one), admits client certificates from the
//! mesh CA alone, and gives reads (get, status, stat, check) to the viewer
//! and admin identities and writes (apply, delete, shift) to the admin
//! identity only. Every write leaves an audit line naming its caller.

mod support;

use mesh_control::identity::ca::Ca;
use mesh_proto::v1 as pb;
use meshctl::client::{Control, admin};
use std::path::Path;
use std::time::Duration;
use support::Mesh;

const SPLIT: &str = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: echo\nspec:\n  service: echo\n  backends:\n  - service: echo-v1\n    weight: 100\n";

async fn apply(control: &Control) -> Result<pb::ApplyResponse, String> {
    let mut c = admin(control).await.map_err(|e| format!("{e:#}"))?;
    c.apply(pb::ApplyRequest {
        files: vec![pb::RuleFile {
            filename: "split.yaml".into(),
            content: SPLIT.into(),
        }],
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

async fn proxy_status(control: &Control) -> Result<pb::ProxyStatusResponse, String> {
    let mut c = admin(control).await.map_err(|e| format!("{e:#}"))?;
    c.proxy_status(pb::ProxyStatusRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Credentials for `identity`, signed by the CA in `ca_dir`.
fn credentials(ca_dir: &Path, identity: &str, out: &Path) -> Control {
    let ca = Ca::load_or_create(ca_dir, None, Duration::from_secs(3600)).unwrap();
    mesh_control::mtls::write_credentials(&ca, identity, out).unwrap();
    Control::new(String::new(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_mesh_s_operators_may_call_the_admin_api() {
    let mesh = Mesh::start("admin-auth").await;
    let operator = mesh.admin();
    let url = operator.url.clone();

    // No client certificate at all: plaintext h2c gets nothing from any
    // call (a TLS client without a certificate fails the handshake, which
    // requires one; the unauthenticated path is `authz::decide`'s test).
    let plain = url.replacen("https", "http", 1);
    match mesh_proto::v1::admin_client::AdminClient::connect(plain).await {
        Err(_) => {}
        Ok(mut c) => {
            assert!(c.proxy_status(pb::ProxyStatusRequest {}).await.is_err());
            assert!(c.get_splits(pb::GetSplitsRequest::default()).await.is_err());
            assert!(c.apply(pb::ApplyRequest::default()).await.is_err());
        }
    }

    // A workload of the mesh (its certificate is from the same CA) may not
    // change the mesh, nor read it.
    let dir = support::TempDir::new("admin-auth-creds");
    let state_ca = mesh.dir.0.join("state").join("ca");
    let mut workload = credentials(
        &state_ca,
        "spiffe://cluster.local/ns/default/sa/echo",
        &dir.0.join("workload"),
    );
    workload.url = url.clone();
    let refused = apply(&workload).await.unwrap_err();
    assert!(
        refused.starts_with("PermissionDenied")
            && refused.contains("spiffe://cluster.local/ns/default/sa/echo may not call Apply"),
        "{refused}"
    );
    let refused = proxy_status(&workload).await.unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");

    // A certificate from another CA fails the handshake.
    let mut foreign = credentials(
        &dir.0.join("other-ca"),
        "spiffe://cluster.local/ns/mesh-system/sa/mesh-admin",
        &dir.0.join("foreign"),
    );
    foreign.url = url.clone();
    let refused = proxy_status(&foreign).await.unwrap_err();
    assert!(!refused.starts_with("Ok"), "{refused}");

    // The viewer reads but may not write.
    let viewer = mesh.viewer();
    proxy_status(&viewer).await.expect("the viewer reads");
    let refused = apply(&viewer).await.unwrap_err();
    assert!(
        refused.starts_with("PermissionDenied") && refused.contains("changes need"),
        "{refused}"
    );

    // The operator writes, and the audit log says who did.
    apply(&operator).await.expect("the admin applies");
    let log = std::fs::read_to_string(mesh.logs().join("mesh-control.log")).unwrap();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("audit") && l.contains("admin write"))
        .collect();
    assert_eq!(audit.len(), 1, "one write, one audit line:\n{log}");
    assert!(
        audit[0].contains("spiffe://cluster.local/ns/mesh-system/sa/mesh-admin")
            && audit[0].contains("Apply"),
        "{}",
        audit[0]
    );
    // The refused calls left no audit line of a write, only refusals.
    assert!(log.contains("admin call refused"), "{log}");
}
