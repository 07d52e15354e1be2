//! What the API server sends the validating webhook: any bytes as an
//! AdmissionReview, answered (allowed, or denied with the validation's
//! message) or refused as malformed, never a panic; judged beside a split
//! in force, as the webhook judges every object beside the others.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_control::manifest::Located;
use std::sync::LazyLock;

static IN_FORCE: LazyLock<Vec<Located>> = LazyLock::new(|| {
    mesh_control::manifest::parse(
        "trafficsplit default/echo",
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: echo\nspec:\n  service: echo\n  backends:\n  - service: echo-v1\n    weight: 90\n  - service: echo-v2\n    weight: 10\n",
    )
    .expect("a valid split")
});

fuzz_target!(|data: &[u8]| {
    if let Ok(review) = mesh_control::kubernetes::admission::answer(data, &IN_FORCE) {
        let _ = serde_json::to_vec(&review);
    }
});
