//! Routing beyond weights: canary-by-header in both syntaxes (SMI
//! TrafficSplit + HTTPRouteGroup, and Gateway API HTTPRoute on a Service),
//! everything else following the weights; Gateway API path precedence and
//! the 404 of a request no rule matches; `meshctl get routes`; and traffic
//! mirroring that never slows or fails the primary, even when the shadow is
//! slow and broken.

mod support;

use support::load::{Shape, arrivals, many, percentile, settled_arrivals, with_status};
use support::{Mesh, within_binomial};

const SMI: &str = "apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata:
  name: canary-header
spec:
  matches:
  - name: canary
    headers:
      x-canary: \"true\"
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: echo-canary
spec:
  service: echo
  matches:
  - kind: HTTPRouteGroup
    name: canary-header
  backends:
  - service: echo-v2
    weight: 100
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: echo-split
spec:
  service: echo
  backends:
  - service: echo-v1
    weight: 80
  - service: echo-v2
    weight: 20
";

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-routes
spec:
  parentRefs:
  - group: \"\"
    kind: Service
    name: echo
    port: 80
  rules:
  - name: canary
    matches:
    - headers:
      - name: x-canary
        value: \"true\"
    backendRefs:
    - name: echo-v2
      port: 80
  - name: weighted
    backendRefs:
    - name: echo-v1
      port: 80
      weight: 80
    - name: echo-v2
      port: 80
      weight: 20
";

/// Rules declared against their precedence: Gateway API orders them exact
/// path, then regular expression, then the longest prefix. No catch-all.
const PRECEDENCE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-paths
spec:
  parentRefs:
  - kind: Service
    name: echo
  rules:
  - name: api
    matches:
    - path:
        type: PathPrefix
        value: /api
    backendRefs:
    - name: echo-v1
  - name: admin
    matches:
    - path:
        type: PathPrefix
        value: /api/admin
    backendRefs:
    - name: echo-v2
  - name: user
    matches:
    - path:
        type: RegularExpression
        value: /api/users/[0-9]+
    backendRefs:
    - name: echo-v2
  - name: login
    matches:
    - path:
        type: Exact
        value: /api/admin/login
    backendRefs:
    - name: echo-v1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_route_by_gateway_api_precedence_and_an_unmatched_request_is_404() {
    let (_mesh, _insts, client) = canary_mesh("route-paths", PRECEDENCE).await;
    for (path, version) in [
        ("/api/x", "v1"),
        ("/api", "v1"),
        ("/api/admin/x", "v2"),
        ("/api/users/42", "v2"),
        ("/api/users/abc", "v1"),
        ("/api/users/42/x", "v1"),
        ("/api/admin/login", "v1"),
        ("/api/admin/login/x", "v2"),
    ] {
        let replies = many(client.outbound, &Shape::get("echo").path(path), 20, 2).await;
        assert!(
            replies
                .iter()
                .all(|r| r.status == 200 && r.version.as_deref() == Some(version)),
            "{path} → {version}: {:?}",
            replies.first()
        );
    }
    for path in ["/", "/apix", "/other/api"] {
        let replies = many(client.outbound, &Shape::get("echo").path(path), 5, 1).await;
        for r in &replies {
            assert_eq!(r.status, 404, "{path}: {r:?}");
            assert!(
                r.proxy_error
                    .as_deref()
                    .is_some_and(|e| e.contains("no route of service echo.default matches")),
                "{path}: {r:?}"
            );
        }
    }
}

/// The Gateway API traffic-splitting guide's shape, on a Service parent as
/// the GAMMA guides write it (`group: core`, a port), with `hostnames` and
/// the catch-all written as `PathPrefix /`.
const UPSTREAM_SPLIT: &str = "apiVersion: gateway.networking.k8s.io/v1
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
  - echo
  - \"*.svc.cluster.local\"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_route_as_upstream_writes_it_routes_by_hostname_and_releases_by_shift() {
    let (mesh, _insts, client) = canary_mesh("route-upstream", UPSTREAM_SPLIT).await;
    // hostnames are a match on :authority (gateway-api#2885), port ignored.
    for host in ["echo", "echo:80", "echo.default.svc.cluster.local"] {
        let replies = many(client.outbound, &Shape::get(host), 200, 4).await;
        assert_eq!(with_status(&replies, 200), 200, "{host}");
        let v2 = replies
            .iter()
            .filter(|r| r.version.as_deref() == Some("v2"))
            .count();
        assert!(
            within_binomial(v2 as u64, 200, 0.1),
            "{host}: {v2} of 200 to v2"
        );
    }
    let replies = many(client.outbound, &Shape::get("echo.default"), 5, 1).await;
    assert!(
        replies.iter().all(|r| r.status == 404),
        "a name outside the route's hostnames is not routed by it: {:?}",
        replies[0]
    );
    // release status knows the HTTPRoute and shows its rule's backends.
    let out = mesh
        .meshctl(&["release", "status", "echo", "-o", "json"])
        .await;
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        st["routedBy"], "HTTPRoute default/echo-split rule echo-split-0",
        "{st}"
    );
    let weights: Vec<u64> = st["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [90, 10], "{st}");
    // release shift patches the HTTPRoute, and traffic follows.
    let printed = mesh.shift_echo_v2("100").await;
    assert!(printed.contains("echo-v2"), "{printed}");
    mesh.sync(&client).await;
    let replies = many(client.outbound, &Shape::get("echo"), 100, 4).await;
    assert!(replies.iter().all(|r| r.version.as_deref() == Some("v2")));
    let out = mesh.meshctl(&["get", "routes", "echo", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["routes"][0]["backends"][1]["weight"], 100, "{json:#}");
    // A TrafficSplit on top is refused as itself.
    let out = mesh
        .apply("split.yaml", &support::split("echo", &[("echo-v1", "1")]))
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("split.yaml:1: TrafficSplit default/echo-split: spec.service")
            && stderr.contains("already routed by HTTPRoute default/echo-split"),
        "{stderr}"
    );
}

/// v1 and v2 of echo, the rules applied, and a client sidecar that has them.
async fn canary_mesh(tag: &str, rules: &str) -> (Mesh, Vec<support::Instance>, support::Client) {
    let mesh = Mesh::start(tag).await;
    let insts = vec![
        mesh.instance("echo", "v1", "echo-v1-a", &[], None).await,
        mesh.instance("echo", "v2", "echo-v2-a", &[], None).await,
    ];
    mesh.apply_ok("rules.yaml", rules).await;
    // Each version's own subset service, whatever the rules route.
    for v in ["echo-v1", "echo-v2"] {
        mesh.wait_ready_endpoints(v, &[(v, 1)]).await.unwrap();
    }
    let client = mesh.client("client-0").await;
    (mesh, insts, client)
}

/// `x-canary: true` always reaches v2; without it (or with another value)
/// the 80/20 weights hold.
async fn assert_canary_by_header(client: &support::Client) {
    let canary = Shape::get("echo").header("x-canary", "true");
    let replies = many(client.outbound, &canary, 500, 4).await;
    let v2 = replies
        .iter()
        .filter(|r| r.version.as_deref() == Some("v2"))
        .count();
    assert_eq!(v2, 500, "x-canary: true must always reach v2");
    for shape in [
        Shape::get("echo"),
        Shape::get("echo").header("x-canary", "false"),
    ] {
        let n = 2000;
        let replies = many(client.outbound, &shape, n, 4).await;
        assert_eq!(with_status(&replies, 200), n);
        let v2 = replies
            .iter()
            .filter(|r| r.version.as_deref() == Some("v2"))
            .count();
        assert!(
            within_binomial(v2 as u64, n as u64, 0.2),
            "{v2} of {n} to v2 for {shape:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_with_smi_traffic_split_and_http_route_group() {
    let (mesh, _insts, client) = canary_mesh("route-smi", SMI).await;
    assert_canary_by_header(&client).await;
    // `get routes` shows the compiled model: the matched split first.
    let out = mesh.meshctl(&["get", "routes", "echo"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let canary = text
        .lines()
        .position(|l| l.starts_with("echo-canary"))
        .expect(&text);
    let split = text
        .lines()
        .position(|l| l.starts_with("echo-split"))
        .expect(&text);
    assert!(canary < split, "{text}");
    assert!(
        text.contains("x-canary~true") && text.contains("echo-v2 100%"),
        "{text}"
    );
    assert!(text.contains("echo-v1 80%, echo-v2 20%"), "{text}");
    assert!(
        text.contains("p2c-ewma") && text.contains("after 5 failures"),
        "{text}"
    );
    // A release shift moves the catch-all split; the canary route stays.
    mesh.shift_echo_v2("50").await;
    mesh.sync(&client).await;
    let replies = many(
        client.outbound,
        &Shape::get("echo").header("x-canary", "true"),
        200,
        4,
    )
    .await;
    assert!(replies.iter().all(|r| r.version.as_deref() == Some("v2")));
    let out = mesh.meshctl(&["get", "routes", "echo", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["routes"][1]["backends"][1]["weight"], 50, "{json:#}");
    assert_eq!(
        json["routes"][0]["retry"]["budget"]["ratio"], 0.2,
        "{json:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_with_gateway_api_http_route() {
    let (mesh, _insts, client) = canary_mesh("route-gw", GATEWAY).await;
    assert_canary_by_header(&client).await;
    // One syntax per service: a TrafficSplit on top is refused, naming both.
    let out = mesh
        .apply("split.yaml", &support::split("echo", &[("echo-v1", "1")]))
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("HTTPRoute default/echo-routes")
            && stderr.contains("TrafficSplit default/echo-split"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_copies_a_share_and_a_bad_shadow_never_hurts_the_primary() {
    let mesh = Mesh::start("mirror").await;
    let _primary = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
    let shadow = mesh
        .instance("echo-shadow", "v1", "shadow-a", &[], None)
        .await;
    let dark = mesh
        .instance(
            "echo-dark",
            "v1",
            "dark-a",
            &["--error-rate", "1", "--latency-ms", "2000"],
            None,
        )
        .await;
    let route = |mirror: &str| {
        let mut r = String::from(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: echo\nspec:\n  parentRefs:\n  - name: echo\n    kind: Service\n  rules:\n  - backendRefs:\n    - name: echo-v1\n",
        );
        r.push_str(mirror);
        r
    };
    let mirror_to = |svc: &str, pct: u32| {
        format!(
            "    filters:\n    - type: RequestMirror\n      requestMirror:\n        backendRef:\n          name: {svc}\n          port: 80\n        percent: {pct}\n"
        )
    };
    mesh.apply_ok("mirror.yaml", &route(&mirror_to("echo-shadow", 50)))
        .await;
    let client = mesh.client("client-0").await;
    let n = 1000;
    let replies = many(client.outbound, &Shape::get("echo"), n, 4).await;
    assert_eq!(with_status(&replies, 200), n);
    let copies = settled_arrivals(&shadow).await.requests;
    eprintln!("measured: shadow got {copies} of {n} at 50%");
    assert!(
        within_binomial(copies, n as u64, 0.5),
        "shadow got {copies} of {n}"
    );

    // Baseline: everything mirrored to the healthy shadow. Then the same to
    // a shadow that fails every request after 2 s.
    mesh.apply_ok("mirror.yaml", &route(&mirror_to("echo-shadow", 100)))
        .await;
    mesh.sync(&client).await;
    let before = settled_arrivals(&shadow).await.requests;
    let base = many(client.outbound, &Shape::get("echo"), 300, 4).await;
    assert_eq!(with_status(&base, 200), 300);
    let after = settled_arrivals(&shadow).await.requests;
    assert_eq!(after - before, 300, "the baseline mirrors every request");
    let none = {
        mesh.apply_ok("mirror.yaml", &route("")).await;
        mesh.sync(&client).await;
        many(client.outbound, &Shape::get("echo"), 300, 4).await
    };
    assert_eq!(with_status(&none, 200), 300);
    assert_eq!(
        settled_arrivals(&shadow).await.requests,
        after,
        "no mirror, no copies"
    );
    eprintln!(
        "measured: no mirror p50 {:?} p99 {:?}",
        percentile(&none, 50.0),
        percentile(&none, 99.0)
    );
    mesh.apply_ok("mirror.yaml", &route(&mirror_to("echo-dark", 100)))
        .await;
    mesh.sync(&client).await;
    let started = std::time::Instant::now();
    let with_dark = many(client.outbound, &Shape::get("echo"), 300, 4).await;
    let took = started.elapsed();
    assert_eq!(with_status(&with_dark, 200), 300, "the primary never fails");
    let (b50, b99) = (percentile(&base, 50.0), percentile(&base, 99.0));
    let (d50, d99) = (percentile(&with_dark, 50.0), percentile(&with_dark, 99.0));
    eprintln!("measured: p50 {b50:?} -> {d50:?}, p99 {b99:?} -> {d99:?} with a dark shadow");
    // Same mirroring work either way; only the shadow's health differs. A
    // primary that waited on its copy would take the shadow's 2 s hold; the
    // tail of 300 requests on a loaded machine is noise, so it is held to a
    // quarter of that hold, and the median to the baseline's.
    let slowest = with_dark
        .iter()
        .map(|r| r.elapsed)
        .max()
        .unwrap_or_default();
    assert!(
        d50 <= b50.mul_f64(1.5) + std::time::Duration::from_millis(2)
            && slowest < std::time::Duration::from_millis(500),
        "p50 {b50:?} → {d50:?}, p99 {b99:?} → {d99:?}, slowest {slowest:?}"
    );
    let copies = arrivals(&dark).await.requests;
    assert!(copies >= 50, "the dark shadow got {copies} copies");
    // It holds each copy 2 s, so at most 64 (the cap) are in flight at
    // once: per 2 s of the run, at most 64 arrive; the rest are dropped.
    let rounds = (took.as_secs_f64() / 2.0).ceil().max(1.0) as u64;
    assert!(
        copies <= 64 * rounds,
        "{copies} copies reached a shadow that held each 2 s, in {took:?}"
    );
    let counted = |result: &str| {
        let labels = [
            "backend=\"echo-dark.default\"".to_string(),
            format!("result=\"{result}\""),
        ];
        async move {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            support::metric(client.admin, "mesh_mirror_requests_total", &l).await
        }
    };
    let (sent, dropped) = (counted("sent").await, counted("dropped").await);
    assert_eq!(sent + dropped, 300.0, "every request mirrored or dropped");
    assert!(sent <= (64 * rounds) as f64 && dropped >= (300 - 64 * rounds) as f64);
}
