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
