//! Bad input: every invalid rule file is rejected with a message naming the
//! file, the field and the problem; nothing is applied; the previous weights
//! keep serving traffic. Bad config for the binaries exits 64.

mod support;

use meshctl::procs::binary;
use meshctl::traffic::burst;
use support::{GOOD, Mesh, split};

/// Applies each case, which must fail naming its file and every expected
/// fragment, with nothing applied: the config version stays `good_version`.
async fn assert_all_rejected(mesh: &Mesh, cases: &[(&str, String, Vec<&str>)], good_version: u64) {
    for (name, yaml, expected) in cases {
        let out = mesh.apply(name, yaml).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr.contains(&format!("{name}:")), "{name}: {stderr}");
        for e in expected {
            assert!(stderr.contains(e), "{name}: expected {e:?} in: {stderr}");
        }
        assert!(stderr.contains("nothing was applied"), "{name}: {stderr}");
        // The parser's own vocabulary is not the user's.
        for jargon in [
            "DuplicateKeyPolicy",
            "budget breached",
            "Nodes {",
            "untagged enum",
        ] {
            assert!(!stderr.contains(jargon), "{name}: {stderr}");
        }
    }
    assert_eq!(
        mesh.version().await,
        good_version,
        "no rejected apply changed the config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rules_are_rejected_and_previous_weights_keep_serving() {
    let (mesh, _instances, client) = Mesh::two_versions("invalid", "100", "0").await;
    let outbound = client.outbound;
    let good_version = mesh.version().await;

    // Each would move traffic to v2 if it were (partly) applied.
    let cases = support::bad_splits();
    assert_all_rejected(&mesh, &cases, good_version).await;

    // More than one apply takes is refused by name before it is sent.
    let padded = format!("{GOOD}{}", "# padding\n".repeat(17 << 17));
    let out = mesh.apply("oversized.yaml", &padded).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("oversized.yaml (")
            && stderr.contains("MiB of rules is more than the 16 MiB one apply takes"),
        "{stderr}"
    );
    assert_eq!(mesh.version().await, good_version);

    // A long refusal arrives whole: 500 bad documents, 500 problems, each
    // named, with the count; not a transport error about header sizes.
    let many: Vec<String> = (0..500)
        .map(|i| {
            GOOD.replace("name: echo-split", &format!("name: bad-{i}"))
                .replace("service: echo\n", &format!("service: svc-{i}\n"))
                .replace("weight: 0", "weight: -1")
        })
        .collect();
    let out = mesh.apply("many.yaml", &many.join("---\n")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for i in 0..500 {
        assert!(
            stderr.contains(&format!(
                "TrafficSplit default/bad-{i}: spec.backends[0].weight"
            )),
            "problem {i} missing"
        );
    }
    assert_eq!(stderr.matches("is negative").count(), 500, "{stderr}");
    assert!(stderr.contains("many.yaml: 500 problems"), "{stderr}");
    assert!(
        stderr.contains("nothing was applied (500 problems in 1 file)"),
        "{stderr}"
    );
    assert!(!stderr.contains("h2 protocol error"), "{stderr}");
    assert_eq!(mesh.version().await, good_version);
    let t = burst(outbound, "echo", 300, 4).await;
    assert_eq!(
        (t.count("v1"), t.failures),
        (300, 0),
        "previous weights keep serving: {t:?}"
    );

    // Lenient on purpose (SMI): a backend that does not exist yet is accepted
    // with a warning, and its share goes to backends that have endpoints.
    let canary = split(
        "echo",
        &[("echo-v1", "50"), ("echo-v2", "0"), ("echo-v3", "50")],
    );
    let out = mesh.apply("canary.yaml", &canary).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("echo-v3"),
        "{stderr}"
    );
    mesh.sync(&client).await;
    let t = burst(outbound, "echo", 300, 4).await;
    assert_eq!(
        (t.count("v1"), t.failures),
        (300, 0),
        "no black hole for a canary without endpoints: {t:?}"
    );
    let out = mesh.meshctl(&["release", "status", "echo"]).await;
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("WARNING")
            && status.contains("echo-v3")
            && status.contains("NO READY ENDPOINTS"),
        "{status}"
    );

    // Unknown services and backends are named.
    let out = mesh
        .meshctl(&[
            "release", "shift", "nope", "--to", "nope-v2", "--weight", "10",
        ])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("default/nope"));
    let out = mesh
        .meshctl(&[
            "release", "shift", "echo", "--to", "echo-v9", "--weight", "10",
        ])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"echo-v9\" is not a backend"));
    let out = mesh.meshctl(&["release", "status", "nope"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service default/nope"));
}

/// Runs mesh-control with `args` and a state dir in `dir` until it exits:
/// its exit code, and what it printed on stdout and stderr.
async fn control_exit(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(binary("mesh-control"))
        .args(args)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_config_exits_64_naming_every_problem() {
    support::ensure_built();
    let dir = support::TempDir::new("badcfg");
    let file = dir.0.join("mesh.yaml");
    std::fs::write(&file, GOOD.replace("weight: 0", "weight: -1")).unwrap();
    let (code, _, stderr) = control_exit(
        &dir.0,
        &[
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--config",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("mesh.yaml") && stderr.contains("spec.backends[0].weight"),
        "{stderr}"
    );

    // Bad flags and values: exit 64, every one named, nothing bound.
    let (code, stdout, stderr) = control_exit(
        &dir.0,
        &[
            "--grpc-addr",
            "nowhere",
            "--heartbeat-ms",
            "soon",
            "--colour",
            "red",
        ],
    )
    .await;
    assert_eq!(code, Some(64), "{stderr}");
    for named in [
        "--grpc-addr \"nowhere\"",
        "--heartbeat-ms \"soon\"",
        "--colour: no such flag",
    ] {
        assert!(stderr.contains(named), "{named} not named: {stderr}");
    }
    assert!(stdout.is_empty(), "nothing is bound or reported");

    let out = tokio::process::Command::new(binary("mesh-proxy"))
        .env_clear()
        .env("MESH_PROXY_OUTBOUND_ADDR", "not-an-address")
        .env("MESH_PROXY_HEALTH_INTERVAL_MS", "soon")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for key in [
        "MESH_PROXY_SERVICE",
        "MESH_PROXY_OUTBOUND_ADDR",
        "MESH_PROXY_HEALTH_INTERVAL_MS",
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}

/// An HTTPRoute on echo with `rules` (YAML list items, indented 2).
fn http_route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: echo-route\nspec:\n  parentRefs:\n  - name: echo\n    kind: Service\n  rules:\n{rules}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_resilience_rules_are_rejected_naming_the_field() {
    let (mesh, _inst, client) = Mesh::one_instance("invalid-resilience", &[]).await;
    mesh.apply_ok("good.yaml", &support::traffic_policy("echo", "timeout: 5s"))
        .await;
    let good_version = mesh.version().await;
    let policy = |spec: &str| support::traffic_policy("echo", spec);
    let rule = "  - backendRefs:\n    - name: echo-v1\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "zero-attempts.yaml",
            policy("retry:\n  attempts: 0"),
            vec!["spec.retry.attempts", "is 0"],
        ),
        (
            "budget.yaml",
            policy("retry:\n  budget:\n    ratio: 1.5"),
            vec!["spec.retry.budget.ratio", "1.5 is outside 0-1"],
        ),
        (
            "negative-timeout.yaml",
            policy("timeout: -1s"),
            vec!["spec.timeout", "negative"],
        ),
        (
            "unparsable-timeout.yaml",
            policy("timeout: soon"),
            vec!["spec.timeout", "\"soon\" is not a duration"],
        ),
        (
            "tls-mode.yaml",
            policy("tls:\n  mode: off"),
            vec!["spec.tls.mode", "\"off\" is not one of strict, permissive"],
        ),
        // A fallback is another service or a static answer, whole and valid.
        (
            "fallback-ghost.yaml",
            policy("fallback:\n  service: ghost"),
            vec![
                "spec.fallback.service",
                "fallback names unknown service default/ghost",
            ],
        ),
        (
            "fallback-self.yaml",
            policy("fallback:\n  service: echo"),
            vec!["spec.fallback.service", "must name another service"],
        ),
        (
            "fallback-both.yaml",
            policy("fallback:\n  service: echo-v1\n  response:\n    status: 200"),
            vec!["spec.fallback", "give exactly one of service"],
        ),
        (
            "fallback-status.yaml",
            policy("fallback:\n  response:\n    status: 99"),
            vec![
                "spec.fallback.response.status",
                "99 is not a final HTTP status (200-599)",
            ],
        ),
        (
            "fallback-header.yaml",
            policy("fallback:\n  response:\n    status: 503\n    headers:\n      content-length: \"5\""),
            vec![
                "spec.fallback.response.headers.content-length",
                "is set by the sidecar",
            ],
        ),
        (
            "fallback-body.yaml",
            policy(&format!(
                "fallback:\n  response:\n    status: 503\n    body: {}",
                "x".repeat(70_000)
            )),
            vec![
                "spec.fallback.response.body",
                "is 70000 bytes; a static fallback body is at most 64 KiB",
            ],
        ),
        (
            "mirror-ghost.yaml",
            policy("mirror:\n  service: ghost\n  percent: 10"),
            vec!["spec.mirror.service", "unknown service default/ghost"],
        ),
        (
            "bad-regex.yaml",
            http_route(
                "  - matches:\n    - headers:\n      - type: RegularExpression\n        name: x-canary\n        value: \"([a-z\"\n    backendRefs:\n    - name: echo-v1\n",
            ),
            vec!["spec.rules[0].matches[0].headers[0].value", "does not compile"],
        ),
        (
            "bad-smi-regex.yaml",
            "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n  name: g\nspec:\n  matches:\n  - name: m\n    pathRegex: \"*oops\"\n".into(),
            vec!["spec.matches[0].pathRegex", "does not compile"],
        ),
        (
            "too-many-rules.yaml",
            http_route(&rule.repeat(17)),
            vec!["spec.rules", "has 17 rules; Gateway API allows at most 16"],
        ),
        // (attempts: 0 is valid Gateway API: "An explicit zero value MUST
        // disable retries"; a negative count is not.)
        (
            "gateway-negative-attempts.yaml",
            http_route(&format!("{rule}    retry:\n      attempts: -1\n")),
            vec!["spec.rules[0].retry.attempts", "-1 is negative"],
        ),
        (
            "gateway-timeout.yaml",
            http_route(&format!("{rule}    timeouts:\n      backendRequest: 1x\n")),
            vec!["spec.rules[0].timeouts.backendRequest", "not a duration"],
        ),
        (
            "missing-group.yaml",
            split("echo", &[("echo-v1", "1")]).replace(
                "  backends:\n",
                "  matches:\n  - kind: HTTPRouteGroup\n    name: nowhere\n  backends:\n",
            ),
            vec!["spec.matches[0].name", "no HTTPRouteGroup default/nowhere"],
        ),
    ];
    assert_all_rejected(&mesh, &cases, good_version).await;

    // More than one apply takes is refused by name before it is sent.
    let padded = format!("{GOOD}{}", "# padding\n".repeat(17 << 17));
    let out = mesh.apply("oversized.yaml", &padded).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("oversized.yaml (")
            && stderr.contains("MiB of rules is more than the 16 MiB one apply takes"),
        "{stderr}"
    );
    assert_eq!(mesh.version().await, good_version);
    // The good policy still governs the routes, and traffic flows.
    let out = mesh.meshctl(&["get", "routes", "echo", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["routes"][0]["timeoutMs"], 5000, "{json:#}");
    let t = burst(client.outbound, "echo", 100, 4).await;
    assert_eq!((t.count("v1"), t.failures), (100, 0));
}
