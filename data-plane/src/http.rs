//! Small facts about HTTP messages that routing, retries, errors and
//! telemetry all need: where a request is addressed, whether it is gRPC,
//! the gRPC status in a header block, and a copy of a request's head.
//! Pure functions over `http` types; imports nothing of the crate.

use http::{HeaderMap, Request};

/// The authority a request is addressed to: its URI's (HTTP/2, absolute
/// form), else its Host header.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Why a request's authority cannot be believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAuthority {
    /// Neither Host nor a request-target authority.
    #[error("request has no Host header or :authority")]
    Missing,
    /// An HTTP/1.1 request without Host, though its target names an authority.
    #[error("an HTTP/1.1 request must carry a Host header, even with an absolute-form target")]
    NoHost,
    /// More than one Host field line.
    #[error("request has {0} Host headers")]
    Repeated(usize),
    /// A Host that is not an authority.
    #[error("Host header {0:?} is not a valid authority")]
    Invalid(String),
    /// Host and the request target name different authorities.
    #[error("Host {host:?} disagrees with the request target's authority {target:?}")]
    Disagrees {
        /// The Host header.
        host: String,
        /// The absolute-form URI's or `:authority`'s.
        target: String,
    },
}

/// The authority a request is addressed to, refusing what a proxy and the
/// app behind it could read two ways (request smuggling): RFC 9112 §3.2
/// ("A server MUST respond with a 400 (Bad Request) status code to any
/// HTTP/1.1 request message that lacks a Host header field and to any
/// request message that contains more than one Host header field line or a
/// Host header field with an invalid field value"); RFC 9110 §7.2 (a Host
/// sent with an authority in the target URI MUST be identical to it); RFC
/// 9113 §8.3.1 (a Host that differs from `:authority` makes the request
/// malformed). `:80` is the same authority as none.
pub fn checked_authority<B>(req: &Request<B>) -> Result<&str, BadAuthority> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = hosts.next();
    let n = 1 + hosts.count();
    if host.is_some() && n > 1 {
        return Err(BadAuthority::Repeated(n));
    }
    let host = match host {
        None => None,
        Some(v) => {
            let text = v.to_str().ok().filter(|t| {
                !t.is_empty()
                    && t.parse::<http::uri::Authority>()
                        .is_ok_and(|a| a.as_str() == *t)
            });
            Some(text.ok_or_else(|| {
                BadAuthority::Invalid(String::from_utf8_lossy(v.as_bytes()).into_owned())
            })?)
        }
    };
    let target = req.uri().authority().map(|a| a.as_str());
    if host.is_none() && target.is_some() && req.version() == http::Version::HTTP_11 {
        return Err(BadAuthority::NoHost);
    }
    match (target, host) {
        (Some(t), Some(h)) if !same_authority(t, h) => Err(BadAuthority::Disagrees {
            host: h.to_string(),
            target: t.to_string(),
        }),
        (Some(t), _) => Ok(t),
        (None, Some(h)) => Ok(h),
        (None, None) => Err(BadAuthority::Missing),
    }
}

fn same_authority(a: &str, b: &str) -> bool {
    let bare = |x: &str| x.strip_suffix(":80").unwrap_or(x).to_ascii_lowercase();
    bare(a) == bare(b)
}

/// The host part of an authority: the port, if any, removed.
pub fn host_of(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Whether a request is gRPC (it then gets a gRPC-shaped error).
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    grpc_content(req.headers())
}

/// Whether a message (request or response) carries gRPC.
pub fn grpc_content(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC status in headers (a trailers-only response, or trailers), if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A new request with the same method, URI, version and headers as `head`.
pub fn copy_head<B>(head: &http::request::Parts, body: B) -> Request<B> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn an_authority_read_two_ways_is_refused() {
        assert_eq!(checked_authority(&req("/x", &["echo"])), Ok("echo"));
        assert_eq!(
            checked_authority(&req("http://echo:8080/x", &["ECHO:8080"])),
            Ok("echo:8080")
        );
        assert_eq!(
            checked_authority(&req("http://echo/x", &["echo:80"])),
            Ok("echo")
        );
        // HTTP/1.1 needs Host even then (RFC 9112 §3.2); HTTP/2 has
        // :authority alone.
        assert_eq!(
            checked_authority(&req("http://echo/x", &[])),
            Err(BadAuthority::NoHost)
        );
        let mut h2 = req("http://echo/x", &[]);
        *h2.version_mut() = http::Version::HTTP_2;
        assert_eq!(checked_authority(&h2), Ok("echo"));
        assert_eq!(
            checked_authority(&req("/x", &["echo", "admin"])),
            Err(BadAuthority::Repeated(2))
        );
        assert_eq!(
            checked_authority(&req("/x", &["echo", "echo"])),
            Err(BadAuthority::Repeated(2))
        );
        assert_eq!(
            checked_authority(&req("http://echo/x", &["admin"])),
            Err(BadAuthority::Disagrees {
                host: "admin".into(),
                target: "echo".into()
            })
        );
        assert_eq!(
            checked_authority(&req("/x", &["ec ho"])),
            Err(BadAuthority::Invalid("ec ho".into()))
        );
        assert_eq!(
            checked_authority(&req("/x", &[""])),
            Err(BadAuthority::Invalid("".into()))
        );
        assert_eq!(
            checked_authority(&req("/x", &[])),
            Err(BadAuthority::Missing)
        );
    }

    #[test]
    fn authority_prefers_the_uri_then_host() {
        let r = Request::builder()
            .uri("http://echo.default:8080/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(authority(&r), Some("echo.default:8080"));
        let r = Request::builder()
            .uri("/x")
            .header("host", "echo")
            .body(())
            .unwrap();
        assert_eq!(authority(&r), Some("echo"));
        assert_eq!(authority(&Request::new(())), None);
    }

    #[test]
    fn the_host_of_an_authority_drops_only_a_port() {
        assert_eq!(host_of("echo:8080"), "echo");
        assert_eq!(host_of("echo"), "echo");
        assert_eq!(host_of("[::1]:80"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        assert_eq!(host_of("echo:"), "echo:");
    }

    #[test]
    fn grpc_is_told_by_content_type_and_status_by_header() {
        let r = Request::builder()
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap();
        assert!(is_grpc(&r));
        assert!(!is_grpc(&Request::new(())));
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(14));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(grpc_status(&h), None);
    }
}
