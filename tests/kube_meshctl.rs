//! meshctl against a cluster (`--kubeconfig`): apply, get splits, release
//! shift, release status and delete speak to the Kubernetes API test
//! server, with mesh-control (`--registry kubernetes`) running as the
//! leader that accepts each generation. meshctl validates the files with
//! the control plane's own code before writing anything, says which mode
//! it speaks to, and refuses in cluster mode what only a local mesh has.
//! `check --pre` and `check` judge the cluster before and after an install.

#[path = "support/kube_api/mod.rs"]
mod kube_api;
#[path = "support/kube_mesh.rs"]
mod kube_mesh;
mod support;

use kube_api::KubeApi;
use kube_mesh::{echo_in_cluster, meshctl, split_weights};
use support::{Mesh, TempDir, split};

fn write(dir: &TempDir, name: &str, yaml: &str) -> String {
    let path = dir.0.join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meshctl_releases_through_the_cluster() {
    support::ensure_built();
    kube_api::real_cluster_ignored();
    let dir = TempDir::new("kube-meshctl");
    let api = KubeApi::start(&dir.0).await;
    let kubeconfig = api.kubeconfig.display().to_string();
    kube_api::install_crds(&api).await;
    let _mesh = Mesh::start_with_args(
        "kube-meshctl",
        &[
            "--registry",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--lease-duration-secs",
            "3",
        ],
    )
    .await;
    // The registry: the echo Service, a v1 and a v2 pod with their slices.
    let pods = [("echo-v1-a", 18080, "v1"), ("echo-v2-a", 18081, "v2")];
    echo_in_cluster(&api, &dir.0, &pods).await;
    let mode = format!("meshctl: cluster context \"test\" (https://{}", api.addr());

    // apply: written to the cluster, and meshctl says where.
    let good = write(
        &dir,
        "split.yaml",
        &split("echo", &[("echo-v1", "100"), ("echo-v2", "0")]),
    );
    let (ok, out, err) = meshctl(&api, &["apply", "-f", &good]).await;
    assert!(ok, "{out}{err}");
    assert!(err.starts_with(&mode), "{err}");
    assert_eq!(out.trim(), "trafficsplit default/echo-split applied");
    assert_eq!(
        split_weights(&api, "echo-split"),
        [("echo-v1".into(), 100), ("echo-v2".into(), 0)]
    );
    kube_api::condition(&api, "echo-split", "Accepted", "True", 1).await;

    // What the control plane would refuse is refused before anything is
    // written, in meshctl apply's words (file:line: object: field: problem).
    let zero = write(&dir, "zero.yaml", &split("other", &[("other-v1", "0")]));
    let (ok, _, err) = meshctl(&api, &["apply", "-f", &zero]).await;
    assert!(!ok);
    assert!(
        err.contains(
            "zero.yaml:1: TrafficSplit default/other-split: spec.backends: every weight is 0"
        ),
        "{err}"
    );
    assert!(
        err.contains("nothing was applied to cluster context \"test\""),
        "{err}"
    );
    assert!(
        api.object("split.smi-spec.io/trafficsplits", "default", "other-split")
            .is_none()
    );
    let second =
        split("echo", &[("echo-v1", "50"), ("echo-v2", "50")]).replace("echo-split", "echo-again");
    let second = write(&dir, "second.yaml", &second);
    let (ok, _, err) = meshctl(&api, &["apply", "-f", &second]).await;
    assert!(
        !ok && err.contains("second.yaml:1: TrafficSplit default/echo-again"),
        "{err}"
    );
    assert!(
        api.object("split.smi-spec.io/trafficsplits", "default", "echo-again")
            .is_none()
    );
    let workload = write(
        &dir,
        "workload.yaml",
        "apiVersion: mesh.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: client\nspec:\n  service: client\n",
    );
    let (ok, _, err) = meshctl(&api, &["apply", "-f", &workload]).await;
    assert!(!ok && err.contains("local mode's"), "{err}");

    // Every file tests/invalid_rules.rs has a local meshctl apply refuse
    // is refused against the cluster too, naming the same problems, and
    // nothing is written (a valid document beside a bad one included).
    let kept = api
        .object("split.smi-spec.io/trafficsplits", "default", "echo-split")
        .unwrap();
    // Rule writes, not the leader's Lease renewals and status writes.
    let rule_writes = || {
        api.writes()
            .iter()
            .filter(|(what, _)| what.contains("/trafficsplits") && !what.ends_with("/status"))
            .count()
    };
    let written = rule_writes();
    for (name, yaml, expected) in support::bad_splits() {
        let file = write(&dir, name, &yaml);
        let (ok, _, err) = meshctl(&api, &["apply", "-f", &file]).await;
        assert!(!ok, "{name} was applied");
        for e in expected {
            assert!(err.contains(e), "{name}: {e:?} not in {err}");
        }
    }
    assert_eq!(rule_writes(), written, "a refused apply wrote nothing");
    assert_eq!(
        api.object("split.smi-spec.io/trafficsplits", "default", "echo-split")
            .unwrap(),
        kept
    );

    // get splits reads the cluster's objects.
    let (ok, out, err) = meshctl(&api, &["get", "splits", "-o", "json"]).await;
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed["items"][0]["metadata"]["name"], "echo-split",
        "{listed}"
    );

    // release shift patches the object, and waits for the leader to
    // accept the new generation.
    let (ok, out, err) = meshctl(
        &api,
        &[
            "release", "shift", "echo", "--to", "echo-v2", "--weight", "30",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("echo: echo-v1 70%, echo-v2 30%"), "{out}");
    assert!(
        err.contains("TrafficSplit default/echo-split generation 2 accepted by the control plane"),
        "{err}"
    );
    assert_eq!(
        split_weights(&api, "echo-split"),
        [("echo-v1".into(), 70), ("echo-v2".into(), 30)]
    );
    let (ok, _, err) = meshctl(
        &api,
        &[
            "release", "shift", "echo", "--to", "echo-v3", "--weight", "10",
        ],
    )
    .await;
    assert!(!ok && err.contains("\"echo-v3\" is not a backend"), "{err}");

    // release status: the weights, and each backend's endpoints as the
    // control plane sees them (the version subsets of echo's pods).
    let (ok, out, err) = meshctl(&api, &["release", "status", "echo", "-o", "json"]).await;
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let backends = st["backends"].as_array().unwrap();
    let found: Vec<(String, i64, usize)> = backends
        .iter()
        .map(|b| {
            (
                b["service"].as_str().unwrap().to_string(),
                b["weight"].as_i64().unwrap(),
                b["endpoints"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(
        found,
        [("echo-v1".into(), 70, 1), ("echo-v2".into(), 30, 1)],
        "{st}"
    );

    // check --pre: what an install needs of the cluster and of this user,
    // asked with SelfSubjectAccessReviews (as `kubectl auth can-i` asks,
    // though kubectl asks in protobuf, which this test server does not read).
    let (ok, out, err) = meshctl(&api, &["check", "--pre"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("✓ Kubernetes v1.37.0") && out.contains("✓ you may create everything"),
        "{out}"
    );
    api.deny("clusterroles");
    let (ok, out, _) = meshctl(&api, &["check", "--pre"]).await;
    assert!(
        !ok && out.contains("✗ you may not create: clusterroles.rbac.authorization.k8s.io"),
        "{out}"
    );

    // check: what runs is named, and so is what needs attention: here no
    // webhook configuration, no shared CA, and a rule the control plane
    // refused (written while no webhook guarded the API).
    let zero = split("zero", &[("zero-v1", "0")]);
    kube_api::create(&api, &dir.0, "zero-split.yaml", &zero).await;
    kube_api::condition(&api, "zero-split", "Accepted", "False", 1).await;
    let (ok, out, err) = meshctl(&api, &["check"]).await;
    assert!(!ok, "{out}");
    assert!(err.contains("needs attention"), "{err}");
    for line in [
        "✓ CRD trafficsplits.split.smi-spec.io is established",
        "leads (Lease renewed",
        "✓ TrafficSplit default/echo-split is accepted",
        "✗ TrafficSplit default/zero-split is REFUSED (generation 1)",
        "every weight is 0",
        "✗ ValidatingWebhookConfiguration mesh-control is missing",
        "✗ no CA in Secret mesh-system/mesh-ca",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    kube_api::kubectl_ok(&api, &["delete", "trafficsplit", "zero-split"]).await;

    // What only the admin API of a local mesh serves is refused by name.
    let (ok, _, err) = meshctl(&api, &["stat", "echo"]).await;
    assert!(!ok && err.contains("not in cluster mode"), "{err}");

    // delete removes the object.
    let (ok, out, err) = meshctl(&api, &["delete", "trafficsplit", "echo-split"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "trafficsplit default/echo-split deleted");
    assert!(
        api.object("split.smi-spec.io/trafficsplits", "default", "echo-split")
            .is_none()
    );

    // Without a kubeconfig, meshctl speaks to a local mesh, and says so.
    let out = tokio::process::Command::new(meshctl::procs::binary("meshctl"))
        .args(["--control", "https://127.0.0.1:9", "--credentials"])
        .arg(dir.0.join("nowhere"))
        .args(["get", "splits"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("meshctl: local mesh at https://127.0.0.1:9"),
        "{err}"
    );
}
