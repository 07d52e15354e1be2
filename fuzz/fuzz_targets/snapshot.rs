//! The sidecar's side of the contract: whatever bytes arrive as a
//! DiscoveryResponse are decoded and converted into the routing state, or
//! refused (the sidecar NACKs), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::v1::DiscoveryResponse;
use mesh_proxy::state::{EndpointStats, State};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = DiscoveryResponse::decode(data) else {
        return;
    };
    let mut stats = EndpointStats::default();
    let now = std::time::Instant::now();
    let prev = State::default();
    if let Ok(next) = State::from_proto(&resp, "default", &prev, &mut stats, now) {
        // The next snapshot is converted against this one, as in a sidecar.
        let _ = State::from_proto(&resp, "default", &next, &mut stats, now);
    }
});
