//! The sidecar's discovery client NACKs a snapshot it cannot use, with the
//! reason, and keeps serving the previous one; it applies an incremental
//! response only on the version it builds on.
//!
//! mesh-control validates everything it publishes, so it cannot be made to
//! send an unusable snapshot; the case is version skew between the planes.
//! This test therefore puts a small gRPC server speaking the Discovery
//! protocol in front of the real sidecar client, over loopback.

use arc_swap::ArcSwap;
use mesh_proto::v1 as pb;
use mesh_proto::v1::discovery_server::{Discovery, DiscoveryServer};
use mesh_proxy::{discovery, state::State};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Sends `snapshots` one by one, waiting for each reply, and reports replies.
struct SkewedControlPlane {
    snapshots: Vec<pb::DiscoveryResponse>,
    replies: mpsc::UnboundedSender<pb::DiscoveryRequest>,
}

type Out = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for SkewedControlPlane {
    type SubscribeStream = Out;

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Out>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.expect("first request");
        assert_eq!(
            first.node.expect("node is sent first").instance_id,
            "client-0"
        );
        if !first.incremental {
            return Err(Status::failed_precondition(
                "the sidecar must ask for incremental responses",
            ));
        }
        let (tx, rx) = mpsc::channel(1);
        let (snapshots, replies) = (self.snapshots.clone(), self.replies.clone());
        tokio::spawn(async move {
            for s in snapshots {
                tx.send(Ok(s)).await.ok()?;
                let reply = inbound.message().await.ok()??;
                replies.send(reply).ok()?;
            }
            // Hold the stream open so the client does not reconnect mid-test.
            let _ = inbound.message().await;
            Some(())
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn deregister(
        &self,
        _: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

fn snapshot(version: &str, cluster: &str) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        version_info: version.into(),
        nonce: version.into(),
        services: vec![pb::ServiceConfig {
            name: "echo".into(),
            namespace: "default".into(),
            resource_version: "r".into(),
            authorization: None,
            virtual_ips: Vec::new(),
            routes: vec![pb::Route {
                name: "default".into(),
                r#match: None,
                backends: vec![pb::WeightedBackend {
                    cluster: cluster.into(),
                    weight: 1,
                }],
                ..Default::default()
            }],
        }],
        clusters: vec![pb::Cluster {
            name: "echo.default".into(),
            resource_version: "r".into(),
            endpoints: vec![pb::Endpoint {
                address: "127.0.0.1:9".into(),
                instance_id: "e".into(),
                version: "v1".into(),
                identity: String::new(),
            }],
            policy: None,
        }],
        ..Default::default()
    }
}

/// Serves `snapshots` to a real sidecar subscription loop; its replies and
/// the state it runs.
async fn serve(
    snapshots: Vec<pb::DiscoveryResponse>,
) -> (
    mpsc::UnboundedReceiver<pb::DiscoveryRequest>,
    Arc<ArcSwap<State>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (replies_tx, replies) = mpsc::unbounded_channel();
    let fixture = SkewedControlPlane {
        snapshots,
        replies: replies_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(fixture))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let state = Arc::new(ArcSwap::from_pointee(State::default()));
    let node = pb::Node {
        service: "client".into(),
        version: String::new(),
        namespace: "default".into(),
        instance_id: "client-0".into(),
    };
    // The subscription loop over a plain channel: this test is about what
    // it does with snapshots, not how it reaches the control plane.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    tokio::spawn(discovery::subscribe(
        channel,
        node,
        state.clone(),
        Duration::from_millis(200),
        Default::default(),
        Default::default(),
    ));
    (replies, state)
}

async fn reply(
    replies: &mut mpsc::UnboundedReceiver<pb::DiscoveryRequest>,
) -> pb::DiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(10), replies.recv())
        .await
        .expect("a reply within 10 s")
        .expect("the fixture is alive")
}

#[tokio::test]
async fn unusable_snapshot_is_nacked_with_its_reason_and_the_old_one_keeps_serving() {
    let (mut replies, state) = serve(vec![
        snapshot("1", "echo.default"),
        snapshot("2", "ghost.default"),
    ])
    .await;
    let ack = reply(&mut replies).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("1", "1")
    );
    assert!(ack.error_detail.is_none(), "version 1 is usable");

    let nack = reply(&mut replies).await;
    assert_eq!(
        nack.response_nonce, "2",
        "the NACK names the response it rejects"
    );
    assert_eq!(nack.version_info, "1", "and says which version still runs");
    let reason = nack
        .error_detail
        .expect("a NACK carries its reason")
        .message;
    assert!(
        reason.contains("unknown cluster \"ghost.default\""),
        "{reason}"
    );

    let running = state.load();
    assert_eq!(running.version, "1");
    assert!(
        running.resolve("echo").is_some(),
        "the previous config keeps serving"
    );
}

/// An incremental response on top of `base`.
fn delta(version: &str, base: &str) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        version_info: version.into(),
        nonce: format!("{version}+"),
        base_version: base.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn deltas_apply_on_the_version_they_build_on_and_no_other() {
    let mut moved = snapshot("3", "echo.default").clusters.remove(0);
    moved.endpoints[0].address = "127.0.0.1:10".into();
    let (mut replies, state) = serve(vec![
        snapshot("1", "echo.default"),
        // Builds on a version this sidecar never ran.
        pb::DiscoveryResponse {
            clusters: vec![moved.clone()],
            ..delta("2", "7")
        },
        // Builds on version 1: the endpoint moves, the service stays.
        pb::DiscoveryResponse {
            clusters: vec![moved],
            ..delta("3", "1")
        },
        // Removes what version 3 holds.
        pb::DiscoveryResponse {
            removed_services: vec!["default/echo".into()],
            removed_clusters: vec!["echo.default".into()],
            ..delta("4", "3")
        },
    ])
    .await;
    assert!(
        reply(&mut replies).await.error_detail.is_none(),
        "version 1 applies"
    );

    let nack = reply(&mut replies).await;
    assert_eq!(
        (nack.response_nonce.as_str(), nack.version_info.as_str()),
        ("2+", "1")
    );
    let reason = nack.error_detail.expect("refused").message;
    assert!(
        reason.contains("builds on version 7") && reason.contains("runs version 1"),
        "{reason}"
    );

    let ack = reply(&mut replies).await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert_eq!(ack.version_info, "3");
    let running = state.load();
    assert!(
        running.resolve("echo").is_some(),
        "the service the delta left alone stays"
    );
    let endpoints: Vec<String> = running
        .cluster("echo.default")
        .expect("the cluster stays")
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    assert_eq!(
        endpoints,
        ["127.0.0.1:10"],
        "the delta's endpoint replaced the old one"
    );

    let ack = reply(&mut replies).await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("4", None));
    let running = state.load();
    assert!(running.resolve("echo").is_none() && running.cluster("echo.default").is_none());
}
