//! The sidecar's own HTTP head path: a request head (as hyper parses it,
//! with httparse) goes through the checks the outbound makes before
//! routing: its authority (Host, absolute form, `:authority`), the host
//! without its port, whether it is gRPC, its grpc-status, and the copy of
//! the head a retry or mirror sends. A 400 is fine; a panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proxy::http as head;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut builder = http::Request::builder().method(method).uri(path);
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(req) = builder.body(()) else {
        return;
    };
    if let Ok(authority) = head::checked_authority(&req) {
        let _ = head::host_of(authority);
    }
    let _ = head::authority(&req);
    let _ = head::is_grpc(&req);
    let _ = head::grpc_status(req.headers());
    let (parts, ()) = req.into_parts();
    let _ = head::copy_head(&parts, ());
});
