//! Rule documents as `meshctl apply` sends them: parsed (every kind:
//! TrafficSplit, HTTPRouteGroup, HTTPRoute, TrafficPolicy,
//! AuthorizationPolicy, Service, Workload), compiled into rules and applied
//! over an empty rule set. Any outcome but a panic is fine: a refusal is
//! the answer to bad input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_control::manifest;
use mesh_control::rules::{self, RuleSet};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(docs) = manifest::parse("fuzz.yaml", &text) else {
        return;
    };
    let _ = mesh_control::registry::local::Registry::from_documents(&docs);
    let Ok(incoming) = rules::rules_from(&docs) else {
        return;
    };
    let _ = RuleSet::default().apply(&incoming, &docs);
});
