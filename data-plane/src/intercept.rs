//! What a connection the pod's redirect rules brought to a listener is:
//! where the app meant it to go (SO_ORIGINAL_DST, recorded by the kernel's
//! nat before it rewrote the destination), and which protocol its first
//! bytes speak (an HTTP/1 request line, the HTTP/2 preface, a TLS
//! ClientHello, or anything else: opaque), with a short deadline for
//! clients that wait for the server to speak first. And the copy of an
//! opaque connection both ways, half-closes passed on.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where the app dialled, if the connection was redirected here: none when
/// it was addressed to the listener itself, or the kernel keeps no nat
/// record of it (ENOENT: it was never redirected, or the namespace has no
/// nat table); an error when the record cannot be read.
pub fn original_dst(stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr()?;
    let read = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst)
            .map(|raw| SocketAddr::V4(nix::sys::socket::SockaddrIn::from(raw).into())),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst)
            .map(|raw| SocketAddr::V6(nix::sys::socket::SockaddrIn6::from(raw).into())),
    };
    match read {
        Ok(dst) => Ok((dst != local).then_some(dst)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// What a connection's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    H2,
    /// A TLS ClientHello (the app's own TLS).
    Tls,
    /// Anything else, or nothing at all within the deadline.
    Opaque,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The methods an HTTP/1 request line is taken to start with (RFC 9110
/// §9, PATCH, and WebDAV's): a text protocol of its own (SMTP's EHLO,
/// redis' PING) is not HTTP for starting with capitals.
const METHODS: [&[u8]; 16] = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
];
/// The longest of them.
const MAX_METHOD: usize = 9;

/// What `bytes` (a connection's first, as many as have come) are, or none
/// while they could still be more than one thing.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.is_empty() {
        return None;
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::H2);
    }
    // A TLS record: handshake (22), version 3.x, then a ClientHello (1).
    if bytes[0] == 0x16 {
        return match bytes {
            [_, 3, _, _, _, 1, ..] => Some(Protocol::Tls),
            [_] | [_, 3] | [_, 3, _] | [_, 3, _, _] | [_, 3, _, _, _] => None,
            _ => Some(Protocol::Opaque),
        };
    }
    // An HTTP/1 request line starts with a method and a space.
    let token = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    let method = &bytes[..token];
    match bytes.get(token) {
        Some(b' ') if METHODS.contains(&method) => Some(Protocol::Http1),
        None if token <= MAX_METHOD && METHODS.iter().any(|m| m.starts_with(method)) => None,
        _ => Some(Protocol::Opaque),
    }
}

/// Peeks at `stream` until its protocol is told or `deadline` passes
/// (then it is opaque: a client waiting for a server that speaks first);
/// whether the deadline decided.
pub async fn detect(stream: &TcpStream, deadline: Duration) -> io::Result<(Protocol, bool)> {
    let until = tokio::time::Instant::now() + deadline;
    let mut buf = [0u8; 32];
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(until, stream.peek(&mut buf)).await {
            Err(_) => return Ok((Protocol::Opaque, true)),
            Ok(Err(e)) => return Err(e),
            // Closed before a byte: nothing to detect, and nothing to send.
            Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(n)) => {
                if let Some(p) = classify(&buf[..n]) {
                    return Ok((p, false));
                }
                if n == seen {
                    // Peeking does not consume: wait for more bytes a little
                    // before looking again, within the deadline.
                    if tokio::time::Instant::now() + Duration::from_millis(5) >= until {
                        return Ok((Protocol::Opaque, true));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen = n;
            }
        }
    }
}

/// What a ClientHello says about who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// Not all of it has come yet.
    Incomplete,
    /// A mesh sidecar's: it offers `PEER_ALPN` beside its protocol.
    Mesh,
    /// A well-formed one of anyone else's: the app's own TLS.
    App,
    /// Not a ClientHello, or one whose lengths do not add up.
    Malformed,
}

/// The ALPN protocol every sidecar offers beside the one it wants, so a
/// pod's inbound tells a peer sidecar's handshake from an app's own TLS
/// (which never offers it). No server selects it.
pub const PEER_ALPN: &[u8] = b"mesh.peer";

/// Reads the ALPN extension of the ClientHello `bytes` begin with (RFC
/// 8446 §4.1.2, RFC 7301 §3.1): is `PEER_ALPN` among its protocols?
pub fn hello(bytes: &[u8]) -> Hello {
    // The record header (5), then the handshake header (4).
    let Some(header) = bytes.get(..9) else {
        return Hello::Incomplete;
    };
    if header[0] != 0x16 || header[1] != 3 || header[5] != 1 {
        return Hello::Malformed;
    }
    let record_end = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    // Version (2) and random (32), then the session id, cipher suites and
    // compression methods, each led by its length.
    let mut at = 9 + 34;
    let Some(&sid) = bytes.get(at) else {
        return Hello::Incomplete;
    };
    at += 1 + usize::from(sid);
    let Some(suites) = u16_at(at) else {
        return Hello::Incomplete;
    };
    at += 2 + suites;
    let Some(&compression) = bytes.get(at) else {
        return Hello::Incomplete;
    };
    at += 1 + usize::from(compression);
    let Some(extensions) = u16_at(at) else {
        return Hello::Incomplete;
    };
    at += 2;
    if at + extensions > record_end {
        return Hello::Malformed;
    }
    let end = at + extensions;
    while at + 4 <= end {
        let (Some(kind), Some(len)) = (u16_at(at), u16_at(at + 2)) else {
            return Hello::Incomplete;
        };
        at += 4;
        if kind == 16 {
            // application_layer_protocol_negotiation: a list of names.
            if len < 2 || at + len > end {
                return Hello::Malformed;
            }
            let Some(list) = bytes.get(at + 2..at + len) else {
                return Hello::Incomplete;
            };
            let mut i = 0;
            while let Some(&n) = list.get(i) {
                let name = list.get(i + 1..i + 1 + usize::from(n));
                if name == Some(PEER_ALPN) {
                    return Hello::Mesh;
                }
                i += 1 + usize::from(n);
            }
            return Hello::App;
        }
        at += len;
    }
    if at != end {
        Hello::Malformed
    } else if bytes.len() < end {
        Hello::Incomplete
    } else {
        Hello::App
    }
}

/// What a sidecar sends first on an opaque (`mesh.tcp/1`) connection,
/// right after the handshake: the port on the peer's pod the app dialled,
/// so the peer hands the bytes to that port of its app whichever address
/// the connection came in on.
pub fn tcp_header(port: u16) -> [u8; 4] {
    let [hi, lo] = port.to_be_bytes();
    [b'M', b'T', hi, lo]
}

/// The port a `tcp_header` names, or none if the bytes are not one.
pub fn parse_tcp_header(bytes: [u8; 4]) -> Option<u16> {
    match bytes {
        [b'M', b'T', hi, lo] if u16::from_be_bytes([hi, lo]) != 0 => {
            Some(u16::from_be_bytes([hi, lo]))
        }
        _ => None,
    }
}

/// Copies both ways until both sides are done: a side that finishes
/// sending has its half closed on the other (a half-close passes on), and
/// the copy ends when both have. The bytes each way.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional(a, b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls sends it, offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("10.0.0.1").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_peer_sidecar_s_client_hello_is_told_from_an_app_s() {
        let mesh = client_hello(&[b"h2", PEER_ALPN]);
        assert_eq!(hello(&mesh), Hello::Mesh);
        assert_eq!(hello(&client_hello(&[b"h2", b"http/1.1"])), Hello::App);
        assert_eq!(hello(&client_hello(&[])), Hello::App);
        for cut in [0, 5, 9, 44, 80] {
            assert_eq!(hello(&mesh[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(
            hello(b"\x16\x03\x01\x00\x05garbage and more bytes"),
            Hello::Malformed
        );
        assert_eq!(hello(b"GET / HTTP/1.1\r\n"), Hello::Malformed);
        // Lengths that run past the record.
        let mut long = mesh.clone();
        long[4] = 10;
        assert_eq!(hello(&long), Hello::Malformed);
    }

    #[test]
    fn the_tcp_header_names_a_port_and_nothing_else_passes_for_one() {
        assert_eq!(parse_tcp_header(tcp_header(5432)), Some(5432));
        assert_eq!(parse_tcp_header(*b"MT\0\0"), None);
        assert_eq!(parse_tcp_header(*b"GET "), None);
    }

    #[test]
    fn first_bytes_tell_the_protocol_or_wait_for_more() {
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Protocol::Http1)),
            (b"OPTIONS * HTTP/1.1", Some(Protocol::Http1)),
            (b"GE", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Protocol::H2)),
            (b"PRI * HT", None),
            (b"PRI * HTTP/1.1\r\n", Some(Protocol::Opaque)),
            (&[0x16, 3, 1, 0, 0xc8, 1, 0, 0][..], Some(Protocol::Tls)),
            (&[0x16, 3, 1], None),
            (&[0x16, 9, 9, 9, 9, 9][..], Some(Protocol::Opaque)),
            (&[0x16, 3, 3, 0, 5, 2][..], Some(Protocol::Opaque)),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Some(Protocol::Opaque)),
            (b"get / HTTP/1.1", Some(Protocol::Opaque)),
            (b"EHLO mail.example\r\n", Some(Protocol::Opaque)),
            (b"PING\r\n", Some(Protocol::Opaque)),
            (b"PROPFIND /a HTTP/1.1", Some(Protocol::Http1)),
            (b"AAAAAAAAAAAAAAAAAAAAAAAAA", Some(Protocol::Opaque)),
        ] {
            assert_eq!(
                classify(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
