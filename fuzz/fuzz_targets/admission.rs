//! What the API server sends the validating webhook: any bytes as an
//! AdmissionReview, answered (allowed, or denied with the validation's
//! message) or refused as malformed, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(review) = mesh_control::kubernetes::admission::answer(data) {
        let _ = serde_json::to_vec(&review);
    }
});
