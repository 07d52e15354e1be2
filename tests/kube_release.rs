//! Releases in Kubernetes mode, on the Kubernetes API test server: a
//! Release object (install/crds/releases.yaml) written with kubectl or
//! `meshctl --kubeconfig release start` is run by the Lease holder alone,
//! which patches the TrafficSplit's weights and keeps the release's state
//! in the object's status; commands are the `mesh.dev/release-command`
//! annotation (kubectl annotate, or meshctl). The leader killed mid
//! release, the other replica takes the Lease and resumes it from the
//! status where it was; with traffic, a good canary is promoted (judged
//! on the telemetry of both replicas); an HTTPRoute's catch-all rule moves
//! as a TrafficSplit does.

#[path = "support/kube_api/mod.rs"]
mod kube_api;
#[path = "support/kube_mesh.rs"]
mod kube_mesh;
mod support;

use kube_api::{KubeApi, kubectl_ok};
use kube_mesh::{
    LEASE_SECS, cluster, control_in_cluster, echo_in_cluster, echo_pair, meshctl, replica,
    split_weights, two_replicas, wait_for_holder,
};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::{TempDir, split};

/// The Release object as kubectl reads it.
async fn release(api: &KubeApi) -> Value {
    let out = kubectl_ok(api, &["get", "release", "echo", "-o", "json"]).await;
    serde_json::from_str(&out).expect("kubectl prints JSON")
}

/// Polls the object until `pred` holds; bounded.
async fn until(
    api: &KubeApi,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + within;
    loop {
        let r = release(api).await;
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < end, "{what} within {within:?}: {r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn weighted(v1: i64, v2: i64) -> Vec<(String, i64)> {
    vec![("echo-v1".into(), v1), ("echo-v2".into(), v2)]
}

fn release_yaml(steps: &str, deadline: &str) -> String {
    format!(
        "apiVersion: mesh.dev/v1alpha1
kind: Release
metadata:
  name: echo
  namespace: default
spec:
  service: echo
  canary: echo-v2
  steps: {steps}
  interval: 1s
  analysis:
    minRequests: 10
    progressDeadline: {deadline}
"
    )
}

/// `kubectl apply` of `yaml`, written to `dir/name`.
async fn apply(api: &KubeApi, dir: &TempDir, name: &str, yaml: &str) {
    let path = dir.0.join(name);
    std::fs::write(&path, yaml).unwrap();
    kubectl_ok(
        api,
        &["apply", "--validate=false", "-f", path.to_str().unwrap()],
    )
    .await;
}

fn phase(r: &Value) -> &str {
    r["status"]["phase"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_runs_a_release_object_and_a_new_leader_resumes_it() {
    let (dir, api, a, b) = two_replicas("kube-release").await;
    let pods = [("echo-v1-a", 18080, "v1"), ("echo-v2-a", 18081, "v2")];
    echo_in_cluster(&api, &dir.0, &pods).await;
    let split_yaml = split("echo", &[("echo-v1", "100"), ("echo-v2", "0")]);
    kube_api::create(&api, &dir.0, "split.yaml", &split_yaml).await;
    kube_api::condition(&api, "echo-split", "Accepted", "True", 1).await;
    let (leader, _) = wait_for_holder(&api, &["replica-a", "replica-b"], support::DEADLINE).await;

    // A spec the control plane's validation refuses (the schema cannot
    // see that steps must ascend): refused in its status, nothing moves.
    apply(&api, &dir, "bad.yaml", &release_yaml("[50, 10]", "60s")).await;
    let refused = until(&api, "the bad spec refused", support::DEADLINE, |r| {
        phase(r) == "Refused"
    })
    .await;
    let reason = refused["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("spec.steps[1]: 10 after 50: steps must ascend"),
        "{reason}"
    );
    assert_eq!(split_weights(&api, "echo-split"), weighted(100, 0));

    // The fixed spec (generation 2) starts: the TrafficSplit moves to the
    // first step, and with no traffic the release waits there.
    apply(
        &api,
        &dir,
        "good.yaml",
        &release_yaml("[25, 50, 100]", "8s"),
    )
    .await;
    let waiting = until(&api, "waiting for traffic", support::DEADLINE, |r| {
        phase(r) == "WaitingForTraffic"
    })
    .await;
    assert_eq!(waiting["status"]["observedGeneration"], 2, "{waiting:#}");
    assert_eq!(waiting["status"]["canaryWeight"], 25);
    let id = waiting["status"]["record"]["id"].clone();
    assert_eq!(split_weights(&api, "echo-split"), weighted(75, 25));
    let shown = kubectl_ok(
        &api,
        &[
            "get",
            "release",
            "echo",
            "-o",
            "jsonpath={.status.phase} {.status.reason}",
        ],
    )
    .await;
    assert!(
        shown.starts_with(
            "WaitingForTraffic waiting for traffic: 0 canary requests in the window, 10 needed"
        ),
        "{shown}"
    );

    // Paused by meshctl (the annotation, carried out and removed).
    let (ok, out, err) = meshctl(&api, &["release", "pause", "echo"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("Paused"), "{out}");
    let paused = release(&api).await;
    assert_eq!(phase(&paused), "Paused");
    assert!(
        paused["metadata"]["annotations"]["mesh.dev/release-command"].is_null(),
        "{paused:#}"
    );
    // A command the phase does not allow is refused before anything is written.
    let (ok, _, err) = meshctl(&api, &["release", "pause", "echo"]).await;
    assert!(!ok && err.contains("is Paused"), "{err}");

    // The leader killed: the other replica takes the Lease and resumes the
    // release from its status, same release, same step, same weights.
    let (mut dead, survivor, follower) = if leader == "replica-a" {
        (a, b, "replica-b")
    } else {
        (b, a, "replica-a")
    };
    dead.kill_control().await;
    wait_for_holder(&api, &[follower], Duration::from_secs(LEASE_SECS + 5)).await;
    let after = release(&api).await;
    assert_eq!(
        (&after["status"]["record"]["id"], phase(&after)),
        (&id, "Paused")
    );
    assert_eq!(split_weights(&api, "echo-split"), weighted(75, 25));

    // Resumed by kubectl annotate; still no traffic, so the progress
    // deadline rolls it back: the new leader returns all to the stable.
    kubectl_ok(
        &api,
        &[
            "annotate",
            "release",
            "echo",
            "mesh.dev/release-command=resume",
        ],
    )
    .await;
    until(&api, "resumed", support::DEADLINE, |r| {
        phase(r) != "Paused" && r["metadata"]["annotations"]["mesh.dev/release-command"].is_null()
    })
    .await;
    let done = until(&api, "rolled back", Duration::from_secs(20), |r| {
        phase(r) == "RolledBack"
    })
    .await;
    assert!(
        done["status"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no progress for the progress deadline of 8 s"),
        "{done:#}"
    );
    let end = Instant::now() + support::DEADLINE;
    while split_weights(&api, "echo-split") != weighted(100, 0) {
        assert!(
            Instant::now() < end,
            "weights back on the stable: {:?}",
            split_weights(&api, "echo-split")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A second release through meshctl's flags: a new record, the first in
    // the history; aborted by meshctl.
    let (ok, out, err) = meshctl(
        &api,
        &[
            "release",
            "start",
            "echo",
            "--canary",
            "echo-v2",
            "--steps",
            "10,100",
            "--interval",
            "1s",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("echo-v2 10%"), "{out}");
    assert_eq!(split_weights(&api, "echo-split"), weighted(90, 10));
    let (ok, out, err) = meshctl(&api, &["release", "abort", "echo"]).await;
    assert!(ok && out.contains("Aborted"), "{out}{err}");
    let end = Instant::now() + support::DEADLINE;
    while split_weights(&api, "echo-split") != weighted(100, 0) {
        assert!(Instant::now() < end, "aborted back to the stable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out, err) = meshctl(&api, &["release", "history", "echo", "-o", "json"]).await;
    assert!(ok, "{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        support::phases(&history),
        ["Aborted", "RolledBack"],
        "{history:#}"
    );
    let (ok, out, err) = meshctl(&api, &["release", "status", "echo", "-o", "json"]).await;
    assert!(ok, "{err}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["release"]["phase"], "Aborted", "{st:#}");
    drop(survivor);
}

/// Gateway API HTTPRoutes (fixture CRD, as in kube_gateway.rs).
const GATEWAY_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/gateway-api-httproutes.yaml"
);

/// echo routed by an HTTPRoute with the Service as parent: a header rule
/// to v2, then the catch-all rule a release moves.
const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-route
  namespace: default
spec:
  parentRefs:
  - {group: \"\", kind: Service, name: echo, port: 80}
  rules:
  - name: tagged
    matches:
    - headers:
      - {name: x-canary, value: \"true\"}
    backendRefs:
    - {name: echo-v2, port: 80}
  - name: all
    backendRefs:
    - {name: echo-v1, port: 80, weight: 100}
    - {name: echo-v2, port: 80, weight: 0}
";

/// The HTTPRoute's rules as stored: each rule's `(backend, weight)`s.
fn route_weights(api: &KubeApi) -> Vec<Vec<(String, i64)>> {
    let obj = api
        .object(
            "gateway.networking.k8s.io/httproutes",
            "default",
            "echo-route",
        )
        .expect("the HTTPRoute is stored");
    obj["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["backendRefs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let w = b["weight"].as_i64().unwrap_or(1);
                    (b["name"].as_str().unwrap().to_string(), w)
                })
                .collect()
        })
        .collect()
}

/// A service routed by an HTTPRoute, in Kubernetes mode: `meshctl release
/// shift` and a Release object move the weights of its catch-all rule in
/// the stored route (the header rule untouched), as they move a
/// TrafficSplit's, and an abort puts them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_moves_an_httproute_s_catch_all_rule() {
    let (dir, api) = cluster("kube-release-route").await;
    kubectl_ok(&api, &["create", "--validate=false", "-f", GATEWAY_CRD]).await;
    let mesh = replica(&api, "replica-a").await;
    let pods = [("echo-v1-a", 18080, "v1"), ("echo-v2-a", 18081, "v2")];
    echo_in_cluster(&api, &dir.0, &pods).await;
    apply(&api, &dir, "route.yaml", ROUTE).await;
    let tagged = vec![("echo-v2".to_string(), 1)];
    let weights = |v1: i64, v2: i64| vec![tagged.clone(), weighted(v1, v2)];
    assert_eq!(route_weights(&api), weights(100, 0));

    // By hand: meshctl waits for the control plane to accept the route it
    // patched (mesh's entry in status.parents), so the route must be known.
    let end = Instant::now() + support::DEADLINE;
    let shifted = loop {
        let args = [
            "release", "shift", "echo", "--to", "echo-v2", "--weight", "30",
        ];
        let (ok, out, err) = meshctl(&api, &args).await;
        if ok {
            break out;
        }
        assert!(Instant::now() < end, "meshctl release shift: {out}{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(shifted.contains("echo-v2"), "{shifted}");
    assert_eq!(route_weights(&api), weights(70, 30));

    // A Release moves the same rule, step by step, and an abort returns it.
    apply(
        &api,
        &dir,
        "release.yaml",
        &release_yaml("[25, 50, 100]", "60s"),
    )
    .await;
    let end = Instant::now() + support::DEADLINE;
    while route_weights(&api) != weights(75, 25) {
        assert!(
            Instant::now() < end,
            "the first step on the route: {:?} {:#}",
            route_weights(&api),
            release(&api).await["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `status --watch` follows the object until the release ends: its
    // first drawing is read before the abort, the rest after.
    use tokio::io::AsyncBufReadExt;
    let mut watch = tokio::process::Command::new(meshctl::procs::binary("meshctl"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["release", "status", "echo", "--watch"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(support::DEADLINE, lines.next_line())
        .await
        .expect("status --watch draws the release")
        .unwrap()
        .unwrap_or_default();
    assert!(first.contains("at step 1 of 3"), "{first}");
    let (ok, out, err) = meshctl(&api, &["release", "abort", "echo"]).await;
    assert!(ok && out.contains("Aborted"), "{out}{err}");
    let mut rest = String::new();
    let drawn = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            rest.push_str(&line);
            rest.push('\n');
        }
        watch.wait().await.unwrap()
    };
    let status = tokio::time::timeout(support::DEADLINE, drawn)
        .await
        .expect("status --watch ends with the release");
    assert!(status.success(), "{first}\n{rest}");
    assert!(rest.contains("Aborted"), "{first}\n{rest}");
    let end = Instant::now() + support::DEADLINE;
    while route_weights(&api) != weights(100, 0) {
        assert!(
            Instant::now() < end,
            "aborted back to the stable: {:?}",
            route_weights(&api)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(mesh);
}

/// With traffic, in Kubernetes mode and two replicas: the canary's sidecar
/// reports to the follower, the stable's and the client's to the leader.
/// The leader judges the canary's own telemetry all the same (it pulls
/// what its peer received), walks the TrafficSplit 50 → 100 and promotes
/// it, and no steady request fails on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_canary_is_promoted_through_the_cluster() {
    let (dir, api, a, b) = two_replicas("kube-release-traffic").await;
    control_in_cluster(&api, &dir.0, &[("replica-a", &a), ("replica-b", &b)]).await;
    let (leader, _) = wait_for_holder(&api, &["replica-a", "replica-b"], support::DEADLINE).await;
    let (mesh, follower) = if leader == "replica-a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let tokens = kube_api::accounts(&api, &dir.0, &["echo", "client"]).await;
    let fast = ("MESH_PROXY_TELEMETRY_INTERVAL_MS", "200");
    let echo_env = [("MESH_PROXY_IDENTITY_TOKEN_FILE", tokens[0].as_str()), fast];
    let client_env = [("MESH_PROXY_IDENTITY_TOKEN_FILE", tokens[1].as_str()), fast];
    let (_v1, _v2) = echo_pair(
        &api,
        &dir.0,
        (mesh, "echo-v1-a"),
        (follower, "echo-v2-a"),
        &echo_env,
    )
    .await;
    let split_yaml = split("echo", &[("echo-v1", "100"), ("echo-v2", "0")]);
    kube_api::create(&api, &dir.0, "split.yaml", &split_yaml).await;
    kube_api::condition(&api, "echo-split", "Accepted", "True", 1).await;
    let client = mesh.client_with("client-a", &client_env).await;
    let steady = meshctl::traffic::Steady::start(client.outbound, "echo", 2, 1_000_000);

    let file = dir.0.join("release.yaml");
    std::fs::write(&file, release_yaml("[50, 100]", "60s")).unwrap();
    let (ok, out, err) = meshctl(&api, &["release", "start", "-f", file.to_str().unwrap()]).await;
    assert!(ok, "{out}{err}");
    let done = until(&api, "promoted", Duration::from_secs(30), |r| {
        ["Promoted", "RolledBack", "Aborted"].contains(&phase(r))
    })
    .await;
    assert_eq!(phase(&done), "Promoted", "{done:#}");
    let (ok, out, err) = meshctl(&api, &["release", "status", "echo", "-o", "json"]).await;
    assert!(ok, "{err}");
    let done: Value = serde_json::from_str(&out).unwrap();
    let checks = done["release"]["checks"].as_array().unwrap();
    let passed: Vec<u64> = checks
        .iter()
        .filter(|c| c["outcome"] == "passed")
        .map(|c| c["canaryWeight"].as_u64().unwrap())
        .collect();
    assert_eq!(passed, [50, 100], "{done:#}");
    assert!(
        checks
            .iter()
            .filter(|c| c["outcome"] == "passed")
            .all(|c| c["canary"]["requests"].as_u64().unwrap() >= 10),
        "{done:#}"
    );
    assert_eq!(split_weights(&api, "echo-split"), weighted(0, 100));
    let outcomes = steady.finish().await;
    support::assert_none_failed(&outcomes, "a release through the cluster");
    eprintln!(
        "measured: {} requests through a Kubernetes-mode release, none failed",
        outcomes.len()
    );
}
