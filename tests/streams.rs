//! Streaming through two sidecars: a gRPC server stream arrives whole and in
//! order, gRPC status trailers survive, and 10 MB request bodies pass intact
//! over HTTP/1.1 and h2 without the sidecars buffering them.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use mesh_proto::echo::echo_client::EchoClient;
use mesh_proto::echo::{EchoRequest, StreamRequest};
use std::net::SocketAddr;
use support::Mesh;

async fn grpc(outbound: SocketAddr) -> EchoClient<tonic::transport::Channel> {
    EchoClient::new(support::echo_channel(outbound).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_stream_arrives_whole_and_in_order() {
    let (_mesh, _inst, client) = Mesh::one_instance("stream", &[]).await;
    let mut c = grpc(client.outbound).await;
    let mut stream = c
        .server_stream(StreamRequest {
            count: 2000,
            payload_size: 1024,
            fail_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seq = 0u32;
    while let Some(msg) = stream
        .message()
        .await
        .expect("stream ends with an OK status trailer")
    {
        assert_eq!(msg.seq, seq);
        assert_eq!(msg.payload.len(), 1024);
        assert!(
            msg.payload
                .iter()
                .enumerate()
                .all(|(i, b)| *b == ((i as u32 + seq) % 251) as u8)
        );
        seq += 1;
    }
    assert_eq!(seq, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_error_status_survives_two_sidecars() {
    let (_mesh, _inst, client) = Mesh::one_instance("trailers", &["--error-rate", "1.0"]).await;
    let mut c = grpc(client.outbound).await;
    let err = c
        .unary(EchoRequest { payload: vec![1] })
        .await
        .expect_err("the app fails every call");
    assert_eq!(err.code(), tonic::Code::Internal);
    assert_eq!(err.message(), "injected error");
    assert!(
        err.metadata().get("mesh-proxy-error").is_none(),
        "the app's error, not the proxy's"
    );
}

fn fnv(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// POSTs to service `echo` through the sidecar at `proxy` the way an app
/// would: HTTP/1.1 with `Host: echo`, or h2 with `:authority: echo`.
async fn post(proxy: SocketAddr, h2: bool, body: Bytes) -> http::Response<hyper::body::Incoming> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(proxy).await.unwrap());
    if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("http://echo/upload")
            .body(Full::new(body))
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("/upload")
            .header(http::header::HOST, "echo")
            .body(Full::new(body))
            .unwrap();
        send.send_request(req).await.unwrap()
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_bodies_pass_intact_over_h1_and_h2() {
    let (_mesh, inst, client) = Mesh::one_instance("bigbody", &[]).await;
    let outbound = client.outbound;
    let body: Bytes = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect::<Vec<u8>>()
        .into();
    let want = fnv(&body);
    let pids = [client.proc.pid().unwrap(), inst.sidecar.pid().unwrap()];
    let before: Vec<u64> = pids.iter().map(|p| peak_rss_kib(*p)).collect();
    for h2 in [false, true] {
        let resp = post(outbound, h2, body.clone()).await;
        assert_eq!(resp.status(), 200, "h2={h2}: {:?}", resp.headers());
        let json: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(json["body_bytes"], 10 * 1024 * 1024, "h2={h2}: {json}");
        assert_eq!(
            json["body_fnv"],
            want.as_str(),
            "h2={h2}: body altered in transit"
        );
        assert_eq!(
            json["protocol"],
            if h2 { "HTTP/2.0" } else { "HTTP/1.1" },
            "protocol preserved"
        );
    }
    // Streaming, not buffering: 20 MB passed through each sidecar, yet its
    // peak memory grew by far less than one body.
    for (pid, before) in pids.iter().zip(before) {
        let grew_mib = (peak_rss_kib(*pid) - before) / 1024;
        assert!(
            grew_mib < 6,
            "sidecar {pid} peak RSS grew {grew_mib} MiB: it buffers bodies"
        );
    }
}

/// A gRPC stream the client cancels is counted as CANCELLED on both
/// sidecars, never as a success. gRPC "Status codes and their use in gRPC":
/// CANCELLED (1), "The operation was cancelled, typically by the caller";
/// "PROTOCOL-HTTP2" (RST_STREAM): a client cancelling sends RST_STREAM
/// CANCEL, which the server side maps to CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_grpc_stream_counts_as_cancelled() {
    let (_mesh, inst, client) = Mesh::one_instance("cancel", &[]).await;
    let mut c = grpc(client.outbound).await;
    let mut stream = c
        .server_stream(StreamRequest {
            // Far more than the test reads: the client hangs up mid-stream.
            count: 1_000_000,
            payload_size: 1024,
            fail_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..10 {
        stream.message().await.unwrap().expect("a message");
    }
    drop(stream);
    drop(c);
    for (admin, direction) in [(client.admin, "outbound"), (inst.admin(), "inbound")] {
        let labels = [
            &format!("direction=\"{direction}\"")[..],
            "grpc_status=\"1\"",
        ];
        let end = tokio::time::Instant::now() + support::DEADLINE;
        while support::metric(admin, "mesh_requests_total", &labels).await < 1.0 {
            assert!(
                tokio::time::Instant::now() < end,
                "{direction}: the cancelled stream was never counted as CANCELLED"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let all = support::metric(admin, "mesh_requests_total", &[labels[0]]).await;
        assert_eq!(all, 1.0, "{direction}: one request, counted once");
    }
}
