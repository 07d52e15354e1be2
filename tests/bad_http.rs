//! Malformed HTTP gets a 400 from the sidecar and hurts nobody: the sidecar
//! keeps serving the next connection and the next request.

mod support;

use meshctl::traffic::burst;
use support::{DEADLINE, Mesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_sidecar_keeps_serving() {
    let (_mesh, inst, client) = Mesh::one_instance("badhttp", &[]).await;
    let outbound = client.outbound;
    let inbound = inst.sidecar.addr("inbound").unwrap();
    for target in [outbound, inbound] {
        for garbage in [
            &b"NOT HTTP AT ALL\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: echo\r\nContent-Length: banana\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: echo\r\nBad Header Line\r\n\r\n",
        ] {
            let resp = raw(target, garbage).await;
            assert!(
                resp.starts_with("HTTP/1.1 400"),
                "{target}: {:?} got {resp:?}",
                String::from_utf8_lossy(garbage)
            );
        }
    }
    // A request without Host is named as such.
    let resp = raw(outbound, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.0 400") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert!(resp.contains("no Host header"), "{resp}");
    let t = burst(outbound, "echo", 100, 2).await;
    assert_eq!(
        (t.count("v1"), t.failures),
        (100, 0),
        "still serving: {t:?}"
    );
}
