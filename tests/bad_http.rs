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

/// RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status
/// code to any HTTP/1.1 request message that lacks a Host header field and
/// to any request message that contains more than one Host header field
/// line or a Host header field with an invalid field value." RFC 9110 §7.2:
/// with an authority in the target URI, Host "MUST" be identical to it; RFC
/// 9113 §8.3.1: a Host that differs from `:authority` makes an HTTP/2
/// request malformed. A request the sidecar and the app could read as
/// addressed to two places is refused on both sides, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_given_two_ways_gets_400() {
    let (_mesh, inst, client) = Mesh::one_instance("badhost", &[]).await;
    let outbound = client.outbound;
    let inbound = inst.sidecar.addr("inbound").unwrap();
    for target in [outbound, inbound] {
        for (request, named) in [
            (
                &b"GET / HTTP/1.1\r\nHost: echo\r\nHost: admin\r\nConnection: close\r\n\r\n"[..],
                "2 Host headers",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: echo\r\nHost: echo\r\nConnection: close\r\n\r\n",
                "2 Host headers",
            ),
            (
                b"GET http://echo/ HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
                "disagrees with the request target",
            ),
        ] {
            let resp = raw(target, request).await;
            assert!(
                resp.starts_with("HTTP/1.1 400") && resp.contains(named),
                "{target}: {:?} got {resp:?}",
                String::from_utf8_lossy(request)
            );
        }
    }
    // The same authority written two ways is one authority.
    let resp = raw(
        outbound,
        b"GET http://echo/ HTTP/1.1\r\nHost: ECHO:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // HTTP/2: `:authority` says echo, Host says otherwise.
    let stream = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://echo/")
        .header(http::header::HOST, "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400, "{:?}", resp.headers());
    let ok = http::Request::get("http://echo/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(ok).await.unwrap().status(), 200);
    let t = burst(outbound, "echo", 50, 2).await;
    assert_eq!((t.count("v1"), t.failures), (50, 0), "still serving: {t:?}");
}

/// Sends `head` and `body` to `addr`, then closes the writing half (the
/// client has nothing more to send) and reads what comes back.
async fn cut_short(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client's own broken body is the client's error. RFC 9112 §6.3: "If a
/// valid Content-Length header field is present without Transfer-Encoding
/// ... If the sender closes the connection or the recipient times out
/// before the indicated number of octets are received, the recipient MUST
/// consider the message to be incomplete"; §7.1: a chunk size is hex
/// digits. Neither is the upstream's failure: the answer is 400 (not a 502
/// naming the upstream), it is counted as a client body error, and no
/// endpoint is ejected for it, though 15 in a row is three times the
/// consecutive-failure threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_s_broken_upload_is_its_own_error_and_ejects_nobody() {
    let (_mesh, inst, client) = Mesh::one_instance("badbody", &[]).await;
    let outbound = client.outbound;
    for i in 0..15 {
        let resp = if i % 2 == 0 {
            cut_short(
                outbound,
                "POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 100000\r\n\r\n",
                b"0123456789",
            )
            .await
        } else {
            cut_short(
                outbound,
                "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"a\r\n0123456789\r\nzz\r\n",
            )
            .await
        };
        assert!(resp.starts_with("HTTP/1.1 400"), "upload {i}: {resp:?}");
        assert!(
            resp.contains("request body from the client failed"),
            "upload {i} names the client's body: {resp:?}"
        );
    }
    let counted = support::metric(
        client.admin,
        "mesh_client_body_errors_total",
        &["direction=\"outbound\""],
    )
    .await;
    assert_eq!(counted, 15.0);
    assert_eq!(
        support::metric(client.admin, "mesh_ejections_total", &[]).await,
        0.0,
        "nobody ejected"
    );
    let t = burst(outbound, "echo", 100, 2).await;
    assert_eq!((t.count("v1"), t.failures), (100, 0), "{t:?}");
    assert_eq!(
        support::metric(
            inst.admin(),
            "mesh_requests_total",
            &["status_code=\"502\""]
        )
        .await,
        0.0,
        "no 502 inbound either"
    );
}

/// The JSON body of a raw HTTP/1.x answer.
fn json_body(resp: &str) -> serde_json::Value {
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {resp:?}"))
}

/// RFC 9112 §3.2.2: "When a proxy receives a request with an absolute-form
/// of request-target, the proxy MUST ignore the received Host header field
/// (if any) and instead replace it with the host information of the
/// request-target." The app behind the sidecar sees the target's authority
/// as Host, never the endpoint's address; and §3.2: an HTTP/1.1 request
/// without Host is refused even when its target names an authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_s_authority_becomes_the_host() {
    let (_mesh, _inst, client) = Mesh::one_instance("absform", &[]).await;
    let outbound = client.outbound;
    let resp = raw(outbound, b"GET http://echo/ HTTP/1.0\r\n\r\n").await;
    assert!(resp.contains(" 200 "), "{resp}");
    assert_eq!(json_body(&resp)["host"], "echo", "{resp}");
    let resp = raw(
        outbound,
        b"GET http://echo:80/x HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(json_body(&resp)["host"], "echo:80", "{resp}");
    let resp = raw(
        outbound,
        b"GET http://echo/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("must carry a Host header"), "{resp}");
}

/// A request head with `n` header fields in all (Host included).
fn with_headers(n: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n");
    for i in 0..n - 2 {
        head.push_str(&format!("x-h-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The sidecars add header fields on the way (the verified caller, the
/// retry attempt, trace context), so they accept four fewer than the
/// common limit of 100 (RFC 6585 §5: 431 "Request Header Fields Too
/// Large"): whatever passes the sidecar also fits the app's limit. Kept-
/// alive answers advertise the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_keeps_room_for_the_headers_it_adds() {
    let (_mesh, inst, client) = Mesh::one_instance("headroom", &[]).await;
    let inbound = inst.sidecar.addr("inbound").unwrap();
    for target in [client.outbound, inbound] {
        let resp = raw(target, &with_headers(96)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{target}: {resp}");
        let resp = raw(target, &with_headers(97)).await;
        assert!(resp.starts_with("HTTP/1.1 431"), "{target}: {resp}");
    }
    // A connection kept open says for how long it stays open idle, so a
    // client leaves before the sidecar closes it (Apache and nginx send the
    // same `Keep-Alive: timeout=N`; RFC 9112 §9.3 on persistence).
    let http = meshctl::traffic::client();
    let req = http::Request::get(format!("http://{}/", client.outbound))
        .header(http::header::HOST, "echo")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = http.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["keep-alive"], "timeout=30");
}
