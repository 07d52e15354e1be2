//! mTLS between sidecars: the app sees the caller's verified identity (never
//! a forged one), a strict inbound refuses and counts plaintext, garbage on
//! the TLS port closes only that connection, and certificates rotate under
//! load without a failed request; later connections between a pair
//! resume their TLS session.

mod support;

use meshctl::traffic::{Steady, burst, get};
use std::net::SocketAddr;
use support::{DEADLINE, Mesh, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO_TOKEN: &str = "echo-bootstrap-token-0123456789";
const CLIENT_TOKEN: &str = "client-bootstrap-token-012345678";
const OTHER_TOKEN: &str = "other-bootstrap-token-0123456789";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const ECHO_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

/// A control plane that knows both workloads' tokens.
async fn mesh(tag: &str, lifetime_secs: &str) -> (Mesh, TempDir) {
    support::identity_mesh(
        tag,
        lifetime_secs,
        &[
            (ECHO_TOKEN, "echo"),
            (CLIENT_TOKEN, "client"),
            (OTHER_TOKEN, "other"),
        ],
    )
    .await
}

/// Inbound connection counters from a sidecar's /metrics.
async fn counter(admin: SocketAddr, labels: &str) -> u64 {
    let (_, text) = get(admin, "/metrics").await.unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("mesh_inbound_connections_total{{{labels}}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter {labels} in:\n{text}"))
}

/// A sidecar's count of mTLS handshakes in `direction` of `kind`.
async fn handshakes(admin: SocketAddr, direction: &str, kind: &str) -> f64 {
    let (d, k) = (
        format!("direction=\"{direction}\""),
        format!("kind=\"{kind}\""),
    );
    support::metric(admin, "mesh_tls_handshakes_total", &[&d, &k]).await
}

/// Writes `bytes` to `addr` and returns whatever comes back before close.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    out
}

/// An echo instance with a workload certificate and a strict inbound, ready.
async fn strict_echo(mesh: &Mesh) -> support::Instance {
    support::strict_echo(mesh, ECHO_TOKEN, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_carries_verified_identity_and_refuses_plaintext() {
    let (mesh, _tokens) = mesh("mtls", "3600").await;
    let echo = strict_echo(&mesh).await;
    let client = mesh
        .client_with("client-0", &[("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN)])
        .await;
    let (_, dump) = get(client.admin, "/config_dump").await.unwrap();
    assert!(
        dump.contains(ECHO_ID),
        "the endpoint's identity is published: {dump}"
    );

    // The app sees the caller's verified identity; a forged header is replaced.
    let answer = support::echo_json(
        client.outbound,
        "/",
        &[(
            "mesh-client-id",
            "spiffe://cluster.local/ns/default/sa/admin",
        )],
    )
    .await;
    assert_eq!(answer["client_id"], CLIENT_ID, "{answer}");
    let admin = echo.admin();
    let tls_before = counter(admin, r#"tls="true",outcome="accepted""#).await;
    assert!(tls_before >= 1, "traffic arrived over mTLS");

    let steady = Steady::start(client.outbound, "echo", 2, 100_000);
    // Plaintext straight to the strict inbound: closed without an answer, and counted.
    let inbound = echo.sidecar.addr("inbound").unwrap();
    let reply = raw(inbound, b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    assert!(
        reply.is_empty(),
        "strict inbound answered plaintext: {}",
        String::from_utf8_lossy(&reply)
    );
    assert!(counter(admin, r#"tls="false",outcome="refused""#).await >= 1);
    // Garbage that looks like TLS: that connection closes, nobody else notices.
    let reply = raw(
        inbound,
        &[
            0x16, 0x03, 0x01, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
            11,
        ],
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&reply).contains("HTTP"),
        "garbage got an HTTP answer"
    );
    assert!(counter(admin, r#"tls="true",outcome="handshake_failed""#).await >= 1);
    let during = burst(client.outbound, "echo", 200, 2).await;
    let outcomes = steady.finish().await;
    assert_eq!(during.failures, 0, "{:?}", during.sample_errors);
    assert!(
        outcomes.iter().all(|o| o.error.is_none()),
        "steady mTLS traffic was unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_connections_between_a_pair_resume_the_session_and_keep_the_identity() {
    let (mesh, _tokens) = mesh("resume", "3600").await;
    let echo = strict_echo(&mesh).await;
    let client = mesh
        .client_with("client-0", &[("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN)])
        .await;
    // The first connection pays a full handshake; the server's session
    // tickets come on it before the first answer.
    let first = support::echo_json(client.outbound, "/", &[]).await;
    assert_eq!(first["client_id"], CLIENT_ID, "{first}");
    assert_eq!(handshakes(client.admin, "outbound", "full").await, 1.0);
    assert_eq!(handshakes(client.admin, "outbound", "resumed").await, 0.0);
    // Four slow requests at once: the idle connection takes one, and each
    // of the others needs a connection of its own, opened with a ticket.
    let slow = (0..4).map(|_| support::echo_json(client.outbound, "/?delay_ms=300", &[]));
    for answer in futures::future::join_all(slow).await {
        assert_eq!(
            answer["client_id"], CLIENT_ID,
            "a resumed session keeps the caller's verified identity: {answer}"
        );
    }
    let resumed = handshakes(client.admin, "outbound", "resumed").await;
    assert!(resumed >= 1.0, "no later connection resumed its session");
    assert_eq!(
        handshakes(client.admin, "outbound", "full").await,
        1.0,
        "only the first connection paid for a full handshake"
    );
    assert_eq!(
        handshakes(echo.admin(), "inbound", "resumed").await,
        resumed,
        "both ends count the same resumptions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_header_from_an_unmeshed_client_never_reaches_the_app() {
    let (mesh, _tokens) = mesh("mtls-open", "3600").await;
    let echo = mesh
        .instance_with(
            "echo",
            "v1",
            "echo-v1-a",
            &[],
            None,
            &[("MESH_PROXY_IDENTITY_TOKEN", ECHO_TOKEN)],
        )
        .await;
    // Permissive (the default): plaintext from outside the mesh is served, unverified.
    let inbound = echo.sidecar.addr("inbound").unwrap();
    let answer = support::echo_json(inbound, "/", &[("mesh-client-id", CLIENT_ID)]).await;
    assert!(
        answer["client_id"].is_null(),
        "a forged identity reached the app: {answer}"
    );
    assert!(counter(echo.admin(), r#"tls="false",outcome="accepted""#).await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let (mesh, _tokens) = mesh("mtls-rotate", "3").await;
    let echo = strict_echo(&mesh).await;
    let client = mesh
        .client_with("client-0", &[("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN)])
        .await;
    // Retries off: a handshake that failed across a rotation would fail a
    // request instead of being retried away.
    mesh.no_retries("echo", "p2c-ewma", &client).await;
    let steady = Steady::start(client.outbound, "echo", 4, 1_000_000);
    // Lifetime 3 s, renewal at ~70%: wait (bounded) for three renewals on both sides.
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let renewals = |v: serde_json::Value| v["renewals"].as_u64().unwrap_or(0);
        let (_, a) = get(echo.admin(), "/identity").await.unwrap();
        let (_, b) = get(client.admin, "/identity").await.unwrap();
        let (a, b) = (
            renewals(serde_json::from_str(&a).unwrap()),
            renewals(serde_json::from_str(&b).unwrap()),
        );
        if a >= 3 && b >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "renewals: server {a}, client {b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let outcomes = steady.finish().await;
    assert!(
        outcomes.len() > 100,
        "too little traffic to judge: {}",
        outcomes.len()
    );
    support::assert_none_failed(&outcomes, "across rotations");
    assert!(counter(echo.admin(), r#"tls="true",outcome="accepted""#).await >= 1);
    assert_eq!(support::retries_seen(echo.app_addr()).await, 0);
    assert_eq!(
        support::metric(client.admin, "mesh_retries_total", &[]).await,
        0.0
    );
}

fn policy() -> String {
    support::authorization_policy(
        "echo-callers",
        "echo",
        &["spiffe://cluster.local/ns/default/sa/client"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policy_admits_listed_callers_and_denies_the_rest() {
    let (mesh, _tokens) = mesh("mtls-authz", "3600").await;
    let echo = strict_echo(&mesh).await;
    // A policy that does not parse is rejected, naming the field.
    let bad = mesh
        .apply(
            "bad-policy.yaml",
            &policy().replace("spiffe://cluster.local/ns/default/sa/client", "client"),
        )
        .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("spec.allow[0].identity"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    mesh.apply_ok("policy.yaml", &policy()).await;
    let allowed = mesh
        .client_with("client-0", &[("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN)])
        .await;
    let other = mesh
        .client_with(
            "other-0",
            &[
                // Its own service: a sidecar speaks only for a service of
                // its account.
                ("MESH_PROXY_SERVICE", "other"),
                ("MESH_PROXY_IDENTITY_TOKEN", OTHER_TOKEN),
                ("MESH_PROXY_SERVICE_ACCOUNT", "other"),
            ],
        )
        .await;

    let ok = burst(allowed.outbound, "echo", 100, 2).await;
    assert_eq!(
        (ok.count("v1"), ok.failures),
        (100, 0),
        "{:?}",
        ok.sample_errors
    );
    let denied = burst(other.outbound, "echo", 20, 2).await;
    assert_eq!(denied.failures, 20);
    assert!(
        denied.sample_errors[0].contains("403")
            && denied.sample_errors[0]
                .contains("does not allow spiffe://cluster.local/ns/default/sa/other"),
        "{:?}",
        denied.sample_errors
    );
    // gRPC callers get PERMISSION_DENIED.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", other.outbound))
        .unwrap()
        .origin("http://echo".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let err = mesh_proto::echo::echo_client::EchoClient::new(channel)
        .unary(mesh_proto::echo::EchoRequest { payload: vec![1] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // The decision is logged with its reason.
    let log = std::fs::read_to_string(&echo.sidecar.log).unwrap();
    assert!(
        log.contains("request denied") && log.contains("echo-callers"),
        "no denial in the sidecar log"
    );
}

/// A plain HTTP server that answers anything with 200 and counts the
/// connections it accepts: the rogue's own listener.
async fn rogue_listener() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0
                        || s.write_all(b"HTTP/1.1 200 OK\r\nx-echo-instance: rogue\r\ncontent-length: 5\r\n\r\nrogue")
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The attack: a caller that may register `echo` (here with echo's own
/// certificate, the worst case; anonymous and foreign callers are refused
/// outright, see control_auth.rs) registers an instance at its own address
/// with no identity; 5,000 requests over 100 s never reach it. A sidecar with
/// a workload identity never sends it anything (SPIFFE X.509-SVID §4: a
/// peer is authenticated by its SVID, and one without an SVID is not a
/// workload of the trust domain), and says why in /config_dump; only a
/// TrafficPolicy that allows plaintext for `echo` changes that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_registration_without_identity_gets_no_mtls_traffic() {
    let (mesh, _tokens) = mesh("rogue", "3600").await;
    let _echo = strict_echo(&mesh).await;
    let client = mesh
        .client_with("client-0", &[("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN)])
        .await;
    let (rogue, accepted) = rogue_listener().await;
    // The worst case: the rogue holds echo's own certificate (a stolen
    // token), so the control plane must accept its registration; what it
    // registers is an endpoint without an identity.
    let channel = mesh.workload_channel("echo").await;
    let beats = tokio::spawn(async move {
        let mut c = mesh_proto::v1::discovery_client::DiscoveryClient::new(channel);
        loop {
            let req = mesh_proto::v1::HeartbeatRequest {
                node: Some(mesh_proto::v1::Node {
                    service: "echo".into(),
                    version: "v1".into(),
                    namespace: "default".into(),
                    instance_id: "rogue-1".into(),
                }),
                address: rogue.to_string(),
                ready: true,
                identity: String::new(),
                cert_not_after_unix: 0,
            };
            let _ = c.heartbeat(req).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    mesh.wait_ready_endpoints("echo", &[("echo", 2)])
        .await
        .unwrap();
    mesh.sync(&client).await;
    let (_, dump) = get(client.admin, "/config_dump").await.unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let echo = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "echo.default")
        .unwrap_or_else(|| panic!("{dump:#}"));
    assert_eq!(echo["refused_plaintext"], 1, "{echo:#}");
    assert_eq!(echo["endpoints"].as_array().unwrap().len(), 1, "{echo:#}");

    let shape = support::load::Shape::get("echo");
    let replies = support::load::open_loop(
        client.outbound,
        |_| shape.clone(),
        50,
        std::time::Duration::from_secs(100),
    )
    .await;
    assert_eq!(replies.len(), 5_000);
    let from_echo = replies
        .iter()
        .filter(|(_, r)| r.status == 200 && r.instance.as_deref() == Some("echo-v1-a"))
        .count();
    assert_eq!(
        from_echo,
        replies.len(),
        "every request answered by the real echo"
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the rogue got connections"
    );

    // Allowing plaintext for echo is what it takes: the same rogue now
    // gets its share (round robin, so the real echo's lower latency does
    // not keep P2C away from it), which shows this test would see it.
    mesh.apply_ok(
        "policy.yaml",
        &support::traffic_policy(
            "echo",
            "loadBalancer: round-robin\ntls:\n  mode: permissive",
        ),
    )
    .await;
    mesh.sync(&client).await;
    let t = burst(client.outbound, "echo", 200, 4).await;
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "permissive reaches the identity-less endpoint: {t:?}"
    );
    beats.abort();
}

/// A sidecar that has a token but no certificate (the CA refuses an unknown
/// token) gets no config and never falls back to plaintext: each request
/// fails, nothing reaches echo, and no endpoint is ejected for a failure
/// that is the caller's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_a_sidecar_says_so_and_never_downgrades() {
    let (mesh, _tokens) = mesh("nocert", "3600").await;
    let echo = strict_echo(&mesh).await;
    let mut cmd = mesh.sidecar_cmd("client", "", "client-nocert");
    cmd.env(
        "MESH_PROXY_IDENTITY_TOKEN",
        "a-token-the-ca-does-not-know-00000",
    );
    let proc = meshctl::procs::Proc::spawn("client-nocert-proxy", cmd, &mesh.logs())
        .await
        .unwrap();
    let (outbound, admin) = (proc.addr("outbound").unwrap(), proc.addr("admin").unwrap());
    // The CA refuses it, so it has no certificate, and without one the
    // control plane tells it nothing (discovery is for proven workloads).
    let end = tokio::time::Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&proc.log)
        .unwrap_or_default()
        .contains("certificate request failed")
    {
        assert!(tokio::time::Instant::now() < end, "never asked the CA");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let status = mesh.meshctl(&["proxy-status"]).await;
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("client-nocert"),
        "an uncertified sidecar subscribed: {}",
        String::from_utf8_lossy(&status.stdout)
    );
    let (ready, _) = get(admin, "/ready").await.unwrap();
    assert_eq!(ready, 503, "not ready without a certificate");
    let t = burst(outbound, "echo", 20, 2).await;
    assert_eq!(t.failures, 20, "{t:?}");
    assert_eq!(
        support::metric(
            echo.admin(),
            "mesh_inbound_connections_total",
            &["tls=\"false\""]
        )
        .await,
        0.0,
        "nothing arrived in plaintext"
    );
    assert_eq!(
        support::metric(admin, "mesh_ejections_total", &[]).await,
        0.0,
        "no endpoint ejected for the caller's own failure"
    );
}
