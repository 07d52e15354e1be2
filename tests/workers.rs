//! A sidecar pair with `MESH_PROXY_WORKERS=2` on both sides: two worker
//! threads each, every worker taking its share of new connections on its
//! own SO_REUSEPORT listener (outbound at the client's sidecar, inbound at
//! the app's), and the pair still mTLS end to end. The kernel spreads new
//! connections over a port's listeners by their addresses, so a worker
//! that did not accept would leave about half of many fresh connections
//! unanswered: the test makes many, each with a deadline.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use support::DEADLINE;

const ECHO_TOKEN: &str = "echo-bootstrap-token-0123456789";
const CLIENT_TOKEN: &str = "client-bootstrap-token-012345678";

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// One GET of service echo on a connection of its own; the caller
/// identity the echo app saw.
async fn fresh_get(outbound: SocketAddr) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(outbound)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&body.to_bytes()).map_err(|e| e.to_string())?;
    Ok(v["client_id"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_each_take_their_share_of_connections_over_mtls() {
    let (mesh, _tokens) = support::identity_mesh(
        "workers",
        "3600",
        &[(ECHO_TOKEN, "echo"), (CLIENT_TOKEN, "client")],
    )
    .await;
    let workers = ("MESH_PROXY_WORKERS", "2");
    let inst = support::strict_echo(&mesh, ECHO_TOKEN, &[workers]).await;
    let client = mesh
        .client_with(
            "client-0",
            &[workers, ("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN)],
        )
        .await;
    for pid in [client.proc.pid(), inst.sidecar.pid()] {
        let names = thread_names(pid.expect("the sidecar runs"));
        assert!(
            names.iter().any(|n| n == "mesh-worker-1"),
            "no second worker thread among {names:?}"
        );
    }
    // Rounds of 16 at once: each client worker opens connections of its
    // own to the app's sidecar, which spreads them over its workers too.
    for round in 0..4 {
        let calls: Vec<_> = (0..16)
            .map(|_| {
                let outbound = client.outbound;
                tokio::spawn(tokio::time::timeout(DEADLINE, fresh_get(outbound)))
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let caller = call
                .await
                .unwrap()
                .unwrap_or_else(|_| panic!("round {round}, call {i}: no answer in {DEADLINE:?}"))
                .unwrap_or_else(|e| panic!("round {round}, call {i}: {e}"));
            assert!(
                caller == "spiffe://cluster.local/ns/default/sa/client",
                "round {round}, call {i}: the app saw caller {caller:?}, not the client's verified identity"
            );
        }
    }
}
