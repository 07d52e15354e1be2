//! Every sidecar listener (outbound, inbound, admin) survives clients that
//! hold connections without finishing a request: silent ones that never
//! send a byte, and slowloris ones that send part of a head and stop. Each
//! is closed at the idle timeout (`MESH_PROXY_IDLE_TIMEOUT_MS`, here
//! 600 ms), never before it, and real requests are served all the while.
//! RFC 9112 §9.8: a server "SHOULD" close idle connections it no longer
//! wants; nothing obliges it to wait for ever.

mod support;

use meshctl::traffic::burst;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::Mesh;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDLE: Duration = Duration::from_millis(600);
const PER_KIND: usize = 100;

/// Opens one connection, sends `prefix` (maybe nothing), and reports how
/// long the sidecar took to close it, or `None` if it stayed open past a
/// bound well beyond the idle timeout.
async fn held(addr: SocketAddr, prefix: &'static [u8]) -> Option<Duration> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let opened = Instant::now();
    if !prefix.is_empty() {
        s.write_all(prefix).await.ok()?;
    }
    let mut buf = [0u8; 512];
    let bound = IDLE * 8;
    loop {
        match tokio::time::timeout(bound.saturating_sub(opened.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            // A 408 or similar before the close is fine; keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_connections_are_closed_at_the_idle_timeout() {
    let idle_ms = IDLE.as_millis().to_string();
    let env = [("MESH_PROXY_IDLE_TIMEOUT_MS", idle_ms.as_str())];
    let mesh = Mesh::start("hostile").await;
    let inst = mesh
        .instance_with("echo", "v1", "echo-v1-a", &[], None, &env)
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    let client = mesh.client_with("client-0", &env).await;
    let listeners = [
        ("outbound", client.outbound),
        ("inbound", inst.sidecar.addr("inbound").unwrap()),
        ("admin", inst.admin()),
    ];
    for (name, addr) in listeners {
        let mut calls = Vec::new();
        for i in 0..2 * PER_KIND {
            let prefix: &'static [u8] = if i % 2 == 0 {
                b""
            } else {
                b"GET / HTTP/1.1\r\nHost: ec"
            };
            calls.push(tokio::spawn(held(addr, prefix)));
        }
        // Real requests still get through while every hostile one is held.
        let t = burst(client.outbound, "echo", 50, 2).await;
        assert_eq!((t.count("v1"), t.failures), (50, 0), "{name}: {t:?}");
        let mut times = Vec::new();
        for (i, c) in calls.into_iter().enumerate() {
            let took = c.await.unwrap();
            let took = took.unwrap_or_else(|| panic!("{name}: connection {i} was never closed"));
            times.push(took);
        }
        let fastest = times.iter().min().unwrap();
        let slowest = times.iter().max().unwrap();
        assert!(
            *fastest >= IDLE.mul_f64(0.8),
            "{name}: closed before the idle timeout ({fastest:?})"
        );
        assert!(
            *slowest <= IDLE * 5,
            "{name}: the last one closed {slowest:?} after opening"
        );
    }
}
