//! The index end to end: the route model from example files in both
//! syntaxes, TrafficPolicy defaults, Gateway API match precedence, subset
//! clusters with only ready endpoints, content versions, and release status.

use super::routes::{ByService, backend_policy, routes_for};
use super::*;
use crate::manifest;
use crate::registry::lease::Said;
use crate::registry::local::{NodeId, Registry};
use crate::rules::{Backend, Split, rules_from};

fn rules_of(file: &str) -> RuleSet {
    let path = format!("{}/../examples/rules/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = manifest::parse(&path, &text).unwrap();
    let incoming = rules_from(&docs).unwrap_or_else(|e| panic!("{file}: {e:?}"));
    RuleSet::default().apply(&incoming, &docs).unwrap().0
}

fn routes(rules: &RuleSet) -> Vec<pb::Route> {
    routes_for(&ByService::new(rules), "default", "echo", &mut |s| {
        format!("{s}.default")
    })
}

#[test]
fn both_syntaxes_compile_to_the_same_canary_route() {
    let smi = routes(&rules_of("canary-header-smi.yaml"));
    let gw = routes(&rules_of("canary-header-gateway.yaml"));
    assert_eq!(smi.len(), 2);
    assert_eq!(gw.len(), 2);
    // SMI header values are regexes, Gateway API's exact by default:
    // the same requests match either way.
    use pb::header_match::Value;
    let value = |r: &pb::Route| r.matches[0].headers[0].clone();
    assert_eq!(value(&smi[0]).name, "x-canary");
    assert_eq!(value(&gw[0]).name, "x-canary");
    assert_eq!(value(&smi[0]).value, Some(Value::Regex("true".into())));
    assert_eq!(value(&gw[0]).value, Some(Value::Exact("true".into())));
    for r in [&smi, &gw] {
        assert_eq!(r[0].matches.len(), 1);
        assert_eq!(r[0].matches[0].headers.len(), 1);
        assert_eq!(
            (&r[0].matches[0].path, r[0].matches[0].method.as_str()),
            (&None, "")
        );
    }
    for r in [&smi, &gw] {
        assert_eq!(r[0].backends.len(), 1);
        assert_eq!(r[0].backends[0].cluster, "echo-v2.default");
        assert!(r[1].matches.is_empty());
        let weights: Vec<u32> = r[1].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [90, 10]);
        // The mesh default retry policy fills in where nothing is set.
        assert!(
            r[0].retry
                .as_ref()
                .is_some_and(|p| p.max_retries == 2 && !p.non_idempotent)
        );
    }
    assert_eq!(gw[1].timeout_ms, 2000);
    assert_eq!(gw[1].retry.as_ref().unwrap().per_try_timeout_ms, 500);
    assert_eq!(
        gw[1].retry.as_ref().unwrap().retry_on,
        ["502", "503", "504"]
    );
}

#[test]
fn traffic_policy_example_sets_backend_policy_and_route_defaults() {
    let rules = rules_of("traffic-policy.yaml");
    let p = backend_policy(&ByService::new(&rules), "default", "echo-v1", Some("echo"));
    assert_eq!(p.max_requests, 1000);
    assert_eq!(p.max_pending, 100);
    assert_eq!(p.consecutive_failures, 5);
    let r = routes(&rules);
    assert_eq!(r[0].timeout_ms, 10_000);
    assert_eq!(r[0].retry.as_ref().unwrap().per_try_timeout_ms, 1000);
    assert_eq!(r[0].fault.as_ref().unwrap().abort_status, 503);
    // A service without a policy gets the defaults.
    let d = backend_policy(&ByService::new(&rules), "default", "other", None);
    assert_eq!(
        (
            d.consecutive_failures,
            d.max_ejection_percent,
            d.max_requests
        ),
        (5, 50, 0)
    );
}

#[test]
fn http_route_rules_follow_gateway_api_precedence() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo
spec:
  parentRefs:
  - name: echo
  rules:
  - name: all
    backendRefs:
    - name: echo-v1
  - name: canary
    matches:
    - headers:
      - name: x-canary
        value: \"true\"
    backendRefs:
    - name: echo-v2
  - name: api
    matches:
    - path:
        type: PathPrefix
        value: /api
    - path:
        type: Exact
        value: /login
      method: POST
    backendRefs:
    - name: echo-v2
";
    let docs = manifest::parse("r.yaml", yaml).unwrap();
    let incoming = rules_from(&docs).unwrap();
    let rules = RuleSet::default().apply(&incoming, &docs).unwrap().0;
    let routes = routes_for(&ByService::new(&rules), "default", "echo", &mut |s| {
        s.to_string()
    });
    let order: Vec<(&str, usize)> = routes
        .iter()
        .map(|r| (r.name.as_str(), r.matches.len()))
        .collect();
    // Exact /login, then prefix /api, then the header match on "/", then the catch-all.
    assert_eq!(order, [("api", 1), ("api", 1), ("canary", 1), ("all", 0)]);
    use mesh_proto::v1::request_match::Path;
    assert_eq!(
        routes[0].matches[0].path,
        Some(Path::PathExact("/login".into()))
    );
    assert_eq!(routes[0].matches[0].method, "POST");
}

fn reg_with(instances: &[(&str, &str, bool)]) -> Registry {
    let mut r = Registry::default();
    for (i, (id, v, ready)) in instances.iter().enumerate() {
        let node = NodeId {
            namespace: "default".into(),
            service: "echo".into(),
            version: (*v).into(),
            instance_id: (*id).into(),
        };
        let said = Said {
            service: "echo".into(),
            version: (*v).into(),
            address: format!("127.0.0.1:{}", 1000 + i),
            ready: *ready,
            identity: String::new(),
            owner: String::new(),
        };
        r.heartbeat(&node, &said).unwrap();
    }
    r
}

fn rules(w1: u32, w2: u32) -> RuleSet {
    let s = Split {
        matches: Vec::new(),
        name: "echo".into(),
        namespace: "default".into(),
        service: "echo".into(),
        backends: vec![
            Backend {
                service: "echo-v1".into(),
                weight: w1,
            },
            Backend {
                service: "echo-v2".into(),
                weight: w2,
            },
        ],
    };
    let mut set = RuleSet::default();
    set.splits.insert(s.key(), s);
    set
}

#[test]
fn split_routes_to_subset_clusters_with_only_ready_endpoints() {
    let reg = reg_with(&[("a", "v1", true), ("b", "v2", false)]);
    let v = build(&reg, &rules(80, 20));
    let echo = v.services.iter().find(|s| s.name == "echo").unwrap();
    let bs = &echo.routes[0].backends;
    assert_eq!(
        (bs[0].cluster.as_str(), bs[0].weight),
        ("echo-v1.default", 80)
    );
    let v2 = v
        .clusters
        .iter()
        .find(|c| c.name == "echo-v2.default")
        .unwrap();
    assert!(
        v2.endpoints.is_empty(),
        "unready instance must not be an endpoint"
    );
    // Subset services route to themselves.
    let sub = v.services.iter().find(|s| s.name == "echo-v1").unwrap();
    assert_eq!(sub.routes[0].backends[0].cluster, "echo-v1.default");
}

#[test]
fn resource_versions_track_content() {
    let reg = reg_with(&[("a", "v1", true)]);
    let a = build(&reg, &rules(80, 20));
    let b = build(&reg, &rules(50, 50));
    let find = |v: &View| {
        v.services
            .iter()
            .find(|s| s.name == "echo")
            .unwrap()
            .resource_version
            .clone()
    };
    assert_ne!(find(&a), find(&b));
    assert_eq!(a.clusters, b.clusters);
}

#[test]
fn empty_backends_hand_their_share_on() {
    assert_eq!(
        effective_shares(&[(80, true), (20, false)]),
        vec![100.0, 0.0]
    );
    assert_eq!(
        effective_shares(&[(100, false), (0, true)]),
        vec![0.0, 100.0]
    );
    assert_eq!(
        effective_shares(&[(50, true), (50, true)]),
        vec![50.0, 50.0]
    );
}

#[test]
fn status_warns_loudly_about_a_canary_without_endpoints() {
    let reg = reg_with(&[("a", "v1", true)]);
    let st = status(&reg, &rules(90, 10), "default", "echo").unwrap();
    assert_eq!(st.backends[0].effective_percent, 100.0);
    assert!(st.warnings[0].contains("NO READY ENDPOINTS"));
    assert!(matches!(
        status(&reg, &rules(90, 10), "default", "nope"),
        Err(Error::UnknownService { .. })
    ));
}

#[test]
fn a_nonce_names_its_version_and_whether_it_was_the_delta() {
    assert_eq!(parse_nonce(&nonce(42, false)), Some((42, false)));
    assert_eq!(parse_nonce(&nonce(42, true)), Some((42, true)));
    assert_ne!(nonce(42, true), nonce(42, false));
    assert_eq!(parse_nonce(""), None);
    assert_eq!(parse_nonce("x+"), None);
}

#[test]
fn every_service_carries_its_virtual_ip_in_local_mode_and_none_without_a_range() {
    let mut r = reg_with(&[("a", "v1", true), ("b", "v2", true)]);
    let plain = build(&r, &rules(50, 50));
    assert!(plain.services.iter().all(|s| s.virtual_ips.is_empty()));
    r.set_virtual_ips(Some("10.96.0.0/16".parse().unwrap()));
    let view = build(&r, &rules(50, 50));
    let ips: Vec<&str> = view
        .services
        .iter()
        .map(|s| s.virtual_ips[0].as_str())
        .collect();
    assert_eq!(ips.len(), 3, "echo, echo-v1, echo-v2: {ips:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.96.")), "{ips:?}");
    let distinct: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 3);
    // The same registry gives the same addresses: they survive restarts.
    assert_eq!(
        build(&r, &rules(90, 10)).services[0].virtual_ips,
        view.services[0].virtual_ips
    );
}

/// Registers `id` of `svc` at `port` in `r`; the services it touched.
fn beat(r: &mut Registry, svc: &str, version: &str, id: &str, ready: bool) -> Vec<ServiceKey> {
    let node = NodeId {
        namespace: "default".into(),
        service: svc.into(),
        version: version.into(),
        instance_id: id.into(),
    };
    let said = Said {
        service: svc.into(),
        version: version.into(),
        address: "127.0.0.1:2000".into(),
        ready,
        identity: String::new(),
        owner: String::new(),
    };
    let mut touched = r.services_of("default", id);
    r.heartbeat(&node, &said).unwrap();
    touched.extend(r.services_of("default", id));
    touched
}

#[test]
fn a_registry_change_remakes_only_its_clusters_and_gives_the_whole_build() {
    let mut reg = reg_with(&[("a", "v1", true), ("b", "v2", true)]);
    beat(&mut reg, "other", "", "o", true);
    let rules = rules(80, 20);
    let before = build(&reg, &rules);

    // echo-v2 gains a ready instance, then b goes unready.
    for (id, ready) in [("c", true), ("b", false)] {
        let touched: std::collections::BTreeSet<_> = beat(&mut reg, "echo", "v2", id, ready)
            .into_iter()
            .collect();
        let (after, changed) =
            rebuild::after(&before, &reg, &rules, &touched).expect("only endpoints changed");
        assert_eq!(after, build(&reg, &rules), "the same as the whole build");
        let names: Vec<&str> = changed
            .iter()
            .map(|&i| after.clusters[i].name.as_str())
            .collect();
        assert_eq!(names, ["echo-v2.default"]);
        let d = after.delta_of(&changed, 1, 2);
        assert_eq!(
            d,
            after.delta(&before, 1, 2),
            "the same delta as the whole comparison"
        );
        let shared = |name: &str| {
            let find = |v: &View| v.clusters.iter().find(|c| c.name == name).cloned().unwrap();
            Arc::ptr_eq(&find(&before), &find(&after))
        };
        assert!(
            shared("other.default") && shared("echo-v1.default"),
            "untouched: shared"
        );
        assert!(!shared("echo-v2.default"), "touched: remade");
        assert!(Arc::ptr_eq(&before.services[0], &after.services[0]));
    }

    // A new service, or one losing its last instance: only a whole build says.
    let touched: std::collections::BTreeSet<_> =
        beat(&mut reg, "new", "", "n", true).into_iter().collect();
    assert_eq!(rebuild::after(&before, &reg, &rules, &touched), None);
    let gone: std::collections::BTreeSet<_> = reg.services_of("default", "o").into_iter().collect();
    reg.deregister("default", "o");
    assert_eq!(rebuild::after(&before, &reg, &rules, &gone), None);
}
