//! The sidecars' side of the control plane trusts nobody it cannot verify:
//! it speaks only TLS; without a client certificate only Certify answers;
//! with one, a caller speaks only for its own namespace and service account
//! and only for instances it registered; each identity holds a bounded
//! number of registrations, counted in /metrics; only another replica of
//! the control plane pulls the telemetry window; and a bootstrap token
//! added to the tokens file works without a restart.

mod support;

use mesh_proto::v1 as pb;
use mesh_proto::v1::discovery_client::DiscoveryClient;
use mesh_proto::v1::telemetry_client::TelemetryClient;
use meshctl::traffic::{burst, get};
use support::{DEADLINE, Mesh};
use tonic::Code;

const ECHO_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

fn node(service: &str, instance: &str) -> pb::Node {
    pb::Node {
        service: service.into(),
        version: "v1".into(),
        namespace: "default".into(),
        instance_id: instance.into(),
    }
}

fn beat(service: &str, instance: &str, port: u16) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        node: Some(node(service, instance)),
        address: format!("127.0.0.1:{port}"),
        ready: true,
        identity: String::new(),
        cert_not_after_unix: 0,
    }
}

async fn subscribe(channel: tonic::transport::Channel, service: &str) -> tonic::Status {
    let first = pb::DiscoveryRequest {
        node: Some(node(service, &format!("{service}-sub"))),
        ..Default::default()
    };
    let stream = tokio_stream::iter([first]);
    match DiscoveryClient::new(channel).subscribe(stream).await {
        Ok(mut s) => s
            .get_mut()
            .message()
            .await
            .err()
            .unwrap_or_else(|| tonic::Status::ok("a snapshot arrived")),
        Err(status) => status,
    }
}

async fn report(channel: tonic::transport::Channel, service: &str) -> tonic::Status {
    let one = pb::TelemetryReport {
        node: Some(node(service, &format!("{service}-rep"))),
        interval_ms: 1000,
        ..Default::default()
    };
    match TelemetryClient::new(channel)
        .report(tokio_stream::iter([one]))
        .await
    {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_proven_callers_speak_and_only_for_themselves() {
    let mesh = Mesh::start_with_args("cp-auth", &["--max-registrations-per-identity", "3"]).await;
    let echo = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;

    // Plaintext gets no gRPC at all: the port speaks TLS.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.grpc))
        .unwrap()
        .connect()
        .await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => DiscoveryClient::new(ch)
            .heartbeat(beat("echo", "plain-1", 1))
            .await
            .is_err(),
    };
    assert!(refused, "plaintext was served");

    // Anonymous (TLS, no certificate): refused by every call but Certify.
    let anonymous = mesh.anonymous_channel().await;
    let hb = DiscoveryClient::new(anonymous.clone())
        .heartbeat(beat("echo", "echo-v1-a", 1))
        .await
        .unwrap_err();
    assert_eq!(hb.code(), Code::Unauthenticated, "{hb:?}");
    assert!(hb.message().contains("workload certificate"), "{hb:?}");
    let dr = DiscoveryClient::new(anonymous.clone())
        .deregister(pb::DeregisterRequest {
            node: Some(node("echo", "echo-v1-a")),
        })
        .await
        .unwrap_err();
    assert_eq!(dr.code(), Code::Unauthenticated, "{dr:?}");
    assert_eq!(
        subscribe(anonymous.clone(), "echo").await.code(),
        Code::Unauthenticated
    );
    assert_eq!(
        report(anonymous.clone(), "echo").await.code(),
        Code::Unauthenticated
    );
    let pull = TelemetryClient::new(anonymous.clone())
        .held(pb::HeldRequest::default())
        .await
        .unwrap_err();
    assert_eq!(pull.code(), Code::Unauthenticated, "{pull:?}");

    // Another identity heartbeating echo's real instance id is refused,
    // naming both, and so is its deregistration; echo keeps its traffic.
    let as_client = mesh.workload_channel("client").await;
    let hijack = DiscoveryClient::new(as_client.clone())
        .heartbeat(beat("echo", "echo-v1-a", 1))
        .await
        .unwrap_err();
    assert_eq!(hijack.code(), Code::PermissionDenied, "{hijack:?}");
    assert!(
        hijack.message().contains(ECHO_ID) && hijack.message().contains(CLIENT_ID),
        "{hijack:?}"
    );
    let gone = DiscoveryClient::new(as_client.clone())
        .deregister(pb::DeregisterRequest {
            node: Some(node("echo", "echo-v1-a")),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::PermissionDenied, "{gone:?}");
    // Only another replica of the control plane pulls the telemetry window.
    let pull = TelemetryClient::new(as_client.clone())
        .held(pb::HeldRequest::default())
        .await
        .unwrap_err();
    assert_eq!(pull.code(), Code::PermissionDenied, "{pull:?}");
    assert!(
        pull.message().contains(CLIENT_ID) && pull.message().contains("sa/mesh-control"),
        "{pull:?}"
    );
    // Nor may it read echo's config or report as echo.
    assert_eq!(
        subscribe(as_client.clone(), "echo").await.code(),
        Code::PermissionDenied
    );
    assert_eq!(
        report(as_client.clone(), "echo").await.code(),
        Code::PermissionDenied
    );
    // Nor register under a claimed identity that is not its own.
    let mut claim = beat("client", "client-claim", 2);
    claim.identity = ECHO_ID.into();
    let claimed = DiscoveryClient::new(as_client.clone())
        .heartbeat(claim)
        .await
        .unwrap_err();
    assert_eq!(claimed.code(), Code::PermissionDenied, "{claimed:?}");
    let t = burst(client.outbound, "echo", 100, 4).await;
    assert_eq!(
        (t.count("v1"), t.failures),
        (100, 0),
        "echo kept its traffic: {t:?}"
    );

    // The cap: echo's identity holds echo-v1-a; two more, then no more.
    let as_echo = mesh.workload_channel("echo").await;
    for i in 0..2 {
        DiscoveryClient::new(as_echo.clone())
            .heartbeat(beat("echo", &format!("extra-{i}"), 40000 + i))
            .await
            .unwrap();
    }
    let full = DiscoveryClient::new(as_echo.clone())
        .heartbeat(beat("echo", "extra-2", 40002))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(
        full.message().contains("--max-registrations-per-identity"),
        "{full:?}"
    );
    // Its own instance it still renews.
    DiscoveryClient::new(as_echo.clone())
        .heartbeat(beat("echo", "extra-0", 40000))
        .await
        .unwrap();
    let http = mesh.control.addr("http").unwrap();
    let (_, metrics) = get(http, "/metrics").await.unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert_eq!(value("mesh_control_registrations "), 3.0);
    assert_eq!(
        value("mesh_control_registration_refusals_total{reason=\"cap\"}"),
        1.0
    );
    assert!(value("mesh_control_registration_refusals_total{reason=\"anonymous\"}") >= 4.0);
    drop(echo);
}

/// A token added to the tokens file is honoured without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_added_to_the_file_works_without_a_restart() {
    let mesh = Mesh::start("cp-tokens").await;
    // Not among the harness's preset accounts: this adds it to the file.
    let _ = mesh.tokens.token("default", "late-comer");
    let mut cmd = mesh.sidecar_cmd("late-comer", "", "late-0");
    cmd.env("MESH_PROXY_LOG", "info");
    let proc = meshctl::procs::Proc::spawn("late-0-proxy", cmd, &mesh.logs())
        .await
        .unwrap();
    meshctl::procs::wait_ready(proc.addr("admin").unwrap(), "/ready", DEADLINE)
        .await
        .unwrap();
    let (_, id) = get(proc.addr("admin").unwrap(), "/identity").await.unwrap();
    assert!(
        id.contains("spiffe://cluster.local/ns/default/sa/late-comer"),
        "{id}"
    );
}
