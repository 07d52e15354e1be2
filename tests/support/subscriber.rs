//! A discovery subscriber of our own over real gRPC: what a sidecar sends
//! and receives, without the sidecar, so a test sees each response whole.

use super::DEADLINE;
use mesh_proto::v1 as pb;
use mesh_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub struct Subscriber {
    tx: mpsc::Sender<pb::DiscoveryRequest>,
    rx: tonic::Streaming<pb::DiscoveryResponse>,
}

impl Subscriber {
    /// A stream of `client` instance `instance` whose first request is
    /// `first` (its node filled in here).
    pub async fn open_with(
        channel: tonic::transport::Channel,
        instance: &str,
        mut first: pb::DiscoveryRequest,
    ) -> Self {
        first.node = Some(pb::Node {
            service: "client".into(),
            version: "v1".into(),
            namespace: "default".into(),
            instance_id: instance.into(),
        });
        let (tx, requests) = mpsc::channel(4);
        tx.send(first).await.unwrap();
        let rx = DiscoveryClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .subscribe(ReceiverStream::new(requests))
            .await
            .expect("subscribed")
            .into_inner();
        Subscriber { tx, rx }
    }

    /// A stream that takes every service, incremental or not.
    pub async fn open(
        channel: tonic::transport::Channel,
        instance: &str,
        incremental: bool,
    ) -> Self {
        let first = pb::DiscoveryRequest {
            incremental,
            ..Default::default()
        };
        Subscriber::open_with(channel, instance, first).await
    }

    pub async fn next(&mut self) -> pb::DiscoveryResponse {
        tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("a response within the deadline")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// The stream's end: the status it closed with.
    pub async fn closed(&mut self) -> tonic::Status {
        let end = tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("an answer within the deadline");
        match end {
            Err(status) => status,
            Ok(m) => panic!("the stream goes on: {m:?}"),
        }
    }

    /// Answers `resp`: an ACK, or a NACK with `error`.
    pub async fn reply(&self, resp: &pb::DiscoveryResponse, error: Option<&str>) {
        self.send(pb::DiscoveryRequest {
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: error.map(|m| pb::ErrorDetail {
                message: m.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    }

    pub async fn send(&self, req: pb::DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }
}
