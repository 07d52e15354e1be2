//! Graceful shutdown of a serving sidecar: on SIGTERM, slow requests in
//! flight over HTTP/1.1 and HTTP/2 finish and the sidecar exits 0; a drain
//! that outlasts `MESH_PROXY_DRAIN_TIMEOUT_MS` ends with exit 1, on time.
//! Retries are off, so nothing is retried into looking fine.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{DEADLINE, Mesh};

/// GET `path` of service echo through `proxy`, over HTTP/2 with prior
/// knowledge when `h2`; the status and body, or the error.
async fn slow_get(proxy: SocketAddr, path: String, h2: bool) -> Result<(u16, String), String> {
    let req = http::Request::get(format!("http://echo{path}"))
        .header(http::header::HOST, "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| e.to_string())?;
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    }
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Requests the echo app at `app` has received.
async fn arrived(app: SocketAddr) -> u64 {
    let (_, body) = meshctl::traffic::get(app, "/admin/stats").await.unwrap();
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["requests"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits (bounded) until the app has `n` requests in hand; a call that
/// ends before then is a failure, reported with what it got.
async fn wait_arrived(
    app: SocketAddr,
    n: u64,
    calls: &mut [tokio::task::JoinHandle<Result<(u16, String), String>>],
) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while arrived(app).await < n {
        for (i, call) in calls.iter_mut().enumerate() {
            if call.is_finished() {
                panic!("call {i} ended before the drain: {:?}", call.await.unwrap());
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "requests never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_slow_requests_in_flight_finish_over_http1_and_http2() {
    let (mesh, mut inst, client) = Mesh::one_instance("drain", &[]).await;
    mesh.no_retries("echo", "p2c-ewma", &client).await;
    let hold = Duration::from_millis(1500);
    let sent = Instant::now();
    let mut calls: Vec<_> = [false, false, false, true, true, true]
        .into_iter()
        .map(|h2| {
            let path = format!("/slow?delay_ms={}", hold.as_millis());
            tokio::spawn(slow_get(client.outbound, path, h2))
        })
        .collect();
    wait_arrived(inst.app_addr(), 6, &mut calls).await;
    let status = inst
        .sidecar
        .stop(Duration::from_secs(15))
        .await
        .expect("the sidecar exits on SIGTERM");
    let exited = sent.elapsed();
    for (i, call) in calls.into_iter().enumerate() {
        let (code, body) = call
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(code, 200, "call {i}: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let protocol = if i < 3 { "HTTP/1.1" } else { "HTTP/2.0" };
        assert_eq!(answer["protocol"], protocol, "call {i} kept its protocol");
        // The app sees the name the client used, never the endpoint's
        // address; over HTTP/2 as :authority, which a Host header may
        // accompany only when they agree (RFC 9113 §8.3.1).
        assert_eq!(answer["host"], "echo", "call {i}: {answer}");
        if i >= 3 {
            assert_eq!(answer["authority"], "echo", "call {i}: {answer}");
        }
    }
    assert!(status.success(), "drained within the timeout: {status:?}");
    assert!(
        exited >= hold,
        "exited after {exited:?}, before its requests were done"
    );
    assert_eq!(support::retries_seen(inst.app_addr()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_outlasts_its_timeout_exits_1_on_time() {
    let mesh = Mesh::start("drain-timeout").await;
    let mut inst = mesh
        .instance_with(
            "echo",
            "v1",
            "echo-v1-a",
            &[],
            None,
            &[("MESH_PROXY_DRAIN_TIMEOUT_MS", "300")],
        )
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh.client("client-0").await;
    mesh.no_retries("echo", "p2c-ewma", &client).await;
    let mut calls = [tokio::spawn(slow_get(
        client.outbound,
        "/slow?delay_ms=20000".into(),
        false,
    ))];
    wait_arrived(inst.app_addr(), 1, &mut calls).await;
    let [call] = calls;
    let signalled = Instant::now();
    let status = inst
        .sidecar
        .stop(Duration::from_secs(15))
        .await
        .expect("the sidecar exits on SIGTERM");
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(8),
        "exit 1 after the 300 ms drain timeout (plus deregistration), not at the request's end: {took:?}"
    );
    let log = std::fs::read_to_string(mesh.logs().join("echo-v1-a-proxy.log")).unwrap();
    assert!(
        log.contains("drain timeout passed with requests still in flight"),
        "{log}"
    );
    // The cut request is answered as failed, not left hanging.
    let answer = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("answered")
        .unwrap();
    assert!(!matches!(answer, Ok((200, _))), "{answer:?}");
}
