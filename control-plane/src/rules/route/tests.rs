//! HTTPRoutes as the upstream guides write them are accepted, and every
//! limit of the upstream CRD schema is enforced with a message naming it.
//! Quotes are from gateway.networking.k8s.io/v1 (`httproute_types.go`).

use crate::manifest;
use crate::rules::{RuleSet, rules_from};

fn compile(yaml: &str) -> Result<RuleSet, Vec<String>> {
    let docs = manifest::parse("route.yaml", yaml).map_err(|e| strings(&e))?;
    let incoming = rules_from(&docs).map_err(|e| strings(&e))?;
    RuleSet::default()
        .apply(&incoming, &docs)
        .map(|(set, _)| set)
        .map_err(|e| strings(&e))
}

fn strings(e: &[manifest::Error]) -> Vec<String> {
    e.iter().map(|e| e.to_string()).collect()
}

/// A route on Service echo with `spec` (after parentRefs) as written.
fn route(spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: echo\nspec:\n  parentRefs:\n  - name: echo\n    kind: Service\n{spec}"
    )
}

/// The GAMMA guides' shape: `group: core`, a port, `hostnames`, and the
/// catch-all written as a `PathPrefix /` match.
#[test]
fn a_route_as_the_upstream_guides_write_it_is_accepted() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-split
spec:
  parentRefs:
  - group: core
    kind: Service
    name: echo
    port: 80
  hostnames:
  - echo.default.svc.cluster.local
  - \"*.example.com\"
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /
    backendRefs:
    - name: echo-v1
      port: 80
      weight: 90
    - name: echo-v2
      port: 80
      weight: 10
";
    let set = compile(yaml).unwrap_or_else(|e| panic!("{e:#?}"));
    let r = set.http_route_for("default", "echo").unwrap();
    assert_eq!(
        r.hostnames,
        ["echo.default.svc.cluster.local", "*.example.com"]
    );
    assert_eq!(
        r.release_rule(),
        Some(0),
        "a PathPrefix / match takes every request"
    );
    let (next, shifted, what) = set.shift("default", "echo", "echo-v2", 40, None).unwrap();
    assert_eq!(what, "HTTPRoute default/echo-split rule echo-split-0");
    let weights: Vec<u32> = shifted.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [60, 40]);
    let stored = &next.http_route_for("default", "echo").unwrap().rules[0].backends;
    assert_eq!(stored, &shifted.backends, "the shift patched the HTTPRoute");
    // And a parentRef with `group: ""` (the spec's core group) too.
    assert!(
        compile(&route(
            "    group: \"\"\n  rules:\n  - backendRefs:\n    - name: echo-v1\n"
        ))
        .is_ok()
    );
}

/// "Weight ... Minimum=0, Maximum=1000000"; "Rules ... MaxItems=16";
/// "Matches ... MaxItems=64"; the total across rules "must be less than
/// 128"; "Headers ... MaxItems=16"; "Value ... MaxLength=1024"; "Hostnames
/// ... MaxItems=16"; hostnames: "IPs are not allowed".
#[test]
fn every_schema_limit_is_refused_naming_it() {
    let one = "  - backendRefs:\n    - name: echo-v1\n";
    let matches = |n: usize| {
        let mut s = String::from("  - backendRefs:\n    - name: echo-v1\n    matches:\n");
        for i in 0..n {
            s.push_str(&format!("    - path:\n        value: /p{i}\n"));
        }
        s
    };
    let headers: String = (0..17)
        .map(|i| format!("      - name: x-h{i}\n        value: v\n"))
        .collect();
    let hostnames: String = (0..17).map(|i| format!("  - h{i}.example.com\n")).collect();
    let cases: Vec<(String, &str)> = vec![
        (
            route("  rules:\n  - backendRefs:\n    - name: echo-v1\n      weight: 1000001\n"),
            "spec.rules[0].backendRefs[0].weight: 1000001 is over Gateway API's maximum weight of 1000000",
        ),
        (
            route(&format!("  rules:\n{}", matches(65))),
            "spec.rules[0].matches: has 65 matches; Gateway API allows at most 64",
        ),
        (
            route(&format!(
                "  rules:\n{}{}{}",
                matches(64),
                matches(64),
                matches(1)
            )),
            "spec.rules: has 129 matches across its rules; Gateway API allows at most 128",
        ),
        (
            route(&format!(
                "  rules:\n  - backendRefs:\n    - name: echo-v1\n    matches:\n    - headers:\n{headers}"
            )),
            "spec.rules[0].matches[0].headers: has 17 headers; Gateway API allows at most 16",
        ),
        (
            route(&format!(
                "  rules:\n  - backendRefs:\n    - name: echo-v1\n    matches:\n    - path:\n        value: /{}\n",
                "a".repeat(1024)
            )),
            "spec.rules[0].matches[0].path.value: is 1025 characters; Gateway API allows at most 1024",
        ),
        (
            route(&format!("  hostnames:\n{hostnames}  rules:\n{one}")),
            "spec.hostnames: has 17 hostnames; Gateway API allows at most 16",
        ),
        (
            route(&format!("  hostnames:\n  - 10.1.2.3\n  rules:\n{one}")),
            "spec.hostnames[0]: \"10.1.2.3\" is an IP address",
        ),
        (
            route(&format!("  hostnames:\n  - Echo.Example\n  rules:\n{one}")),
            "spec.hostnames[0]: \"Echo.Example\" is not a hostname",
        ),
        (
            route(
                "  rules:\n  - backendRefs:\n    - name: echo-v1\n    matches:\n    - path:\n        value: /a//b\n",
            ),
            "spec.rules[0].matches[0].path.value: \"/a//b\" must not contain \"//\"",
        ),
        (
            route(
                "  rules:\n  - name: a\n    backendRefs:\n    - name: echo-v1\n  - name: a\n    backendRefs:\n    - name: echo-v2\n",
            ),
            "spec.rules[1].name: \"a\" is used by an earlier rule",
        ),
        (
            route(
                "  rules:\n  - backendRefs:\n    - name: echo-v1\n    matches:\n    - method: FETCH\n",
            ),
            "spec.rules[0].matches[0].method: \"FETCH\" is not one of GET, HEAD",
        ),
        (
            route(
                "  rules:\n  - backendRefs:\n    - name: echo-v1\n    timeouts:\n      request: 1s\n      backendRequest: 2s\n",
            ),
            "spec.rules[0].timeouts.backendRequest: cannot be longer than timeouts.request",
        ),
        (
            route(
                "  rules:\n  - backendRefs:\n    - name: echo-v1\n    matches:\n    - queryParams:\n      - name: q\n        value: v\n",
            ),
            "spec.rules[0].matches[0].queryParams: query parameter matching is not supported",
        ),
        (
            route(
                "  rules:\n  - backendRefs:\n    - name: echo-v1\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        add:\n        - name: x\n          value: y\n",
            ),
            "spec.rules[0].filters[0].type: filter \"RequestHeaderModifier\" is not supported",
        ),
        (
            route("  rules:\n  - backendRefs:\n    - name: echo-v1\n      namespace: other\n"),
            "spec.rules[0].backendRefs[0].namespace: must be the route's own namespace",
        ),
    ];
    for (yaml, want) in cases {
        let errs = compile(&yaml).expect_err(want);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "want {want:?} in {errs:#?}"
        );
    }
}

/// "An explicit zero value MUST disable retries."
#[test]
fn zero_retry_attempts_disable_retries() {
    let set = compile(&route(
        "  rules:\n  - backendRefs:\n    - name: echo-v1\n    retry:\n      attempts: 0\n      codes: [503]\n",
    ))
    .unwrap();
    let retry = set.http_route_for("default", "echo").unwrap().rules[0]
        .retry
        .clone()
        .unwrap();
    assert_eq!(retry.attempts, 0);
    assert!(retry.retry_on.is_empty() && retry.grpc_codes.is_empty());
}

/// Applying a TrafficSplit for a service an HTTPRoute routes is refused
/// against the split, by its own name.
#[test]
fn a_split_on_a_routed_service_is_refused_as_itself() {
    let docs = manifest::parse(
        "route.yaml",
        &route("  rules:\n  - backendRefs:\n    - name: echo-v1\n"),
    )
    .unwrap();
    let set = RuleSet::default()
        .apply(&rules_from(&docs).unwrap(), &docs)
        .unwrap()
        .0;
    let split = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: echo-split\nspec:\n  service: echo\n  backends:\n  - service: echo-v1\n    weight: 1\n";
    let docs = manifest::parse("split.yaml", split).unwrap();
    let errs = set.apply(&rules_from(&docs).unwrap(), &docs).unwrap_err();
    let text = strings(&errs).join("\n");
    assert!(
        text.starts_with("split.yaml:1: TrafficSplit default/echo-split: spec.service: service \"echo\" is already routed by HTTPRoute default/echo"),
        "{text}"
    );
}
