//! Weighted splits: an 80/20 TrafficSplit sends about 20% of requests to v2,
//! over HTTP/1.1 and over gRPC, through a client sidecar and the instances'
//! sidecars.

mod support;

use mesh_proto::echo::EchoRequest;
use mesh_proto::echo::echo_client::EchoClient;
use meshctl::traffic::burst;
use std::collections::BTreeMap;
use support::{Mesh, within_binomial};

const N: u64 = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_follow_an_80_20_split() {
    let (_mesh, _instances, client) = Mesh::two_versions("split-h1", "80", "20").await;
    let t = burst(client.outbound, "echo", N as usize, 8).await;
    assert_eq!(t.failures, 0, "failures: {:?}", t.sample_errors);
    assert_eq!(t.total(), N);
    let v2 = t.count("v2");
    assert!(
        within_binomial(v2, N, 0.2),
        "v2 got {v2} of {N}; expected about 800"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_follow_an_80_20_split() {
    let (_mesh, _instances, client) = Mesh::two_versions("split-grpc", "80", "20").await;
    // Connect to the client sidecar; address the call to the service by name.
    let channel = support::echo_channel(client.outbound).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut c = EchoClient::new(channel.clone());
            tokio::spawn(async move {
                let mut seen: BTreeMap<String, u64> = BTreeMap::new();
                for _ in 0..N / 8 {
                    let reply = c
                        .unary(EchoRequest {
                            payload: b"hi".to_vec(),
                        })
                        .await
                        .expect("gRPC call through two sidecars succeeds")
                        .into_inner();
                    assert_eq!(reply.payload, b"hi");
                    *seen.entry(reply.version).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        for (v, n) in t.await.unwrap() {
            *total.entry(v).or_default() += n;
        }
    }
    assert_eq!(total.values().sum::<u64>(), N);
    let v2 = total.get("v2").copied().unwrap_or(0);
    assert!(within_binomial(v2, N, 0.2), "v2 got {v2} of {N}: {total:?}");
}
