//! install/ as Kubernetes reads it: every manifest passes
//! `kubernetes-validate --strict` against Kubernetes 1.37 (PyPI, offline
//! schemas, none of it ours), and the CRDs' own OpenAPI schemas, checked
//! by the jsonschema library, accept every example rule and refuse what a
//! structural schema can refuse (negative weights, unknown enums, missing
//! fields). `tests/setup.sh` installs the tools; this test runs it when
//! they are missing. `meshctl install` reproduces install/ exactly, and
//! the machine's kubectl applies all of it with `--dry-run=server` to the
//! Kubernetes API test server, which admits every object and stores none.

#[path = "support/kube_api/mod.rs"]
mod kube_api;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tools() {
    let have = || {
        Command::new("kubernetes-validate")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
            && Command::new("python3")
                .args(["-c", "import jsonschema, yaml"])
                .status()
                .is_ok_and(|s| s.success())
    };
    if !have() {
        let setup = root().join("tests/setup.sh");
        let ok = Command::new("bash").arg(&setup).status();
        // What the probe says, so a failure names its cause.
        let probe = Command::new("kubernetes-validate")
            .arg("--version")
            .output();
        assert!(
            ok.is_ok_and(|s| s.success()) && have(),
            "kubernetes-validate and jsonschema (pip) are needed; {} could not install them (kubernetes-validate --version: {:?})",
            setup.display(),
            probe.map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned()))
        );
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_manifest_in_install_passes_kubernetes_validate_strict() {
    tools();
    let files = yaml_files(&root().join("install"));
    assert!(files.len() >= 4, "the CRDs at least: {files:?}");
    let (ok, text) = output(
        Command::new("kubernetes-validate")
            .args(["-k", "1.37.0", "--strict"])
            .args(&files),
    );
    assert!(ok, "{text}");
    for f in &files {
        let name = f.strip_prefix(root()).unwrap_or(f).display().to_string();
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("{name} passed for resource "))
                    || l.contains(&format!("{} passed for resource ", f.display()))),
            "{name} validated as a known resource:\n{text}"
        );
    }
}

#[test]
fn the_crd_schemas_accept_the_examples_and_refuse_what_they_can() {
    tools();
    let root = root();
    let script = root.join("tests/tools/crd_schemas.py");
    let crds = root.join("install/crds");
    let mut examples = yaml_files(&root.join("examples/rules"));
    examples.push(root.join("examples/demo/mesh.yaml"));
    let (ok, text) = output(
        Command::new("python3")
            .arg(&script)
            .arg(&crds)
            .arg("accept")
            .args(&examples),
    );
    assert!(ok, "{text}");
    let bad = std::env::temp_dir().join(format!("mesh-crd-refused-{}.yaml", std::process::id()));
    let docs = [
        (
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "service: echo\n  backends: [{service: echo-v1, weight: -1}]",
        ),
        (
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "service: echo\n  backends: [{service: echo-v1, weight: \"100\"}]",
        ),
        (
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "backends: [{service: echo-v1, weight: 1}]",
        ),
        (
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "service: echo\n  backends: []",
        ),
        (
            "specs.smi-spec.io/v1alpha4",
            "HTTPRouteGroup",
            "matches: [{name: m, methods: [FETCH]}]",
        ),
        (
            "mesh.dev/v1alpha1",
            "TrafficPolicy",
            "service: echo\n  loadBalancer: random",
        ),
        (
            "mesh.dev/v1alpha1",
            "TrafficPolicy",
            "service: echo\n  tls: {mode: none}",
        ),
        (
            "mesh.dev/v1alpha1",
            "TrafficPolicy",
            "service: echo\n  retry: {retryOn: [sometimes]}",
        ),
        (
            "mesh.dev/v1alpha1",
            "TrafficPolicy",
            "service: echo\n  timeout: 1.5s",
        ),
        (
            "mesh.dev/v1alpha1",
            "TrafficPolicy",
            "service: echo\n  fallback: {service: b, response: {status: 503}}",
        ),
        (
            "mesh.dev/v1alpha1",
            "AuthorizationPolicy",
            "service: echo\n  allow: [{identity: web}]",
        ),
    ];
    let text: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, (api, kind, spec))| {
            format!(
                "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: bad-{i}}}\nspec:\n  {spec}\n"
            )
        })
        .collect();
    std::fs::write(&bad, text.join("---\n")).unwrap();
    let (ok, out) = output(
        Command::new("python3")
            .arg(&script)
            .arg(&crds)
            .arg("refuse")
            .arg(&bad),
    );
    let _ = std::fs::remove_file(&bad);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{} documents checked", docs.len())),
        "{out}"
    );
}

/// `meshctl` with `args`: success, stdout, stderr.
fn meshctl(args: &[&str]) -> (bool, String, String) {
    meshctl::procs::ensure_built(!cfg!(debug_assertions));
    let out = Command::new(meshctl::procs::binary("meshctl"))
        .args(args)
        .output()
        .expect("meshctl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn meshctl_install_reproduces_install_and_checks_its_values() {
    let (ok, out, err) = meshctl(&["install"]);
    assert!(ok, "{err}");
    let mut rendered = std::collections::BTreeMap::new();
    for part in out.split("---\n# Source: install/").skip(1) {
        let (path, text) = part.split_once('\n').unwrap();
        rendered.insert(path.to_string(), text.trim_end().to_string());
    }
    let on_disk: Vec<PathBuf> = yaml_files(&root().join("install"));
    assert_eq!(
        rendered.len(),
        on_disk.len(),
        "one rendered file per file of install/: {:?}",
        rendered.keys()
    );
    for f in on_disk {
        let rel = f
            .strip_prefix(root().join("install"))
            .unwrap()
            .display()
            .to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            rendered.get(&rel).map(String::as_str),
            Some(text.trim_end()),
            "install/{rel} is not what `meshctl install` renders; regenerate with `meshctl install --output-dir install/`"
        );
    }
    let (ok, out, _) = meshctl(&[
        "install",
        "--set",
        "replicas=3",
        "--set",
        "resources.limits.memory=1Gi",
    ]);
    assert!(
        ok && out.contains("  replicas: 3\n") && out.contains("memory: 1Gi"),
        "{out}"
    );
    let (ok, _, err) = meshctl(&["install", "--set", "replicas=zero", "--set", "colour=red"]);
    assert!(!ok, "bad values rendered");
    assert!(
        err.contains("--set replicas=\"zero\"") && err.contains("--set colour: no such value"),
        "{err}"
    );
    let (ok, out, _) = meshctl(&["uninstall"]);
    assert!(
        ok && out.contains(
            "kind: Deployment\nmetadata:\n  name: mesh-control\n  namespace: mesh-system"
        ),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_dry_run_server_admits_all_of_install() {
    let dir = std::env::temp_dir().join(format!("mesh-install-dry-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let api = kube_api::KubeApi::start(&dir).await;
    let install = root().join("install");
    // A namespaced dry run needs its namespace to exist, on a real API
    // server too.
    kube_api::kubectl_ok(
        &api,
        &[
            "create",
            "--validate=false",
            "-f",
            install.join("namespace.yaml").to_str().unwrap(),
        ],
    )
    .await;
    let before = api.version();
    let out = kube_api::kubectl_ok(
        &api,
        &[
            "apply",
            "--dry-run=server",
            "--validate=false",
            "-f",
            install.join("namespace.yaml").to_str().unwrap(),
            "-f",
            install.join("crds").to_str().unwrap(),
            "-f",
            install.join("control-plane").to_str().unwrap(),
        ],
    )
    .await;
    for object in [
        "deployment.apps/mesh-control",
        "clusterrole.rbac.authorization.k8s.io/mesh-control",
        "poddisruptionbudget.policy/mesh-control",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/mesh-control",
        "customresourcedefinition.apiextensions.k8s.io/trafficsplits.split.smi-spec.io",
    ] {
        assert!(
            out.contains(&format!("{object} created (server dry run)")),
            "{object}: {out}"
        );
    }
    assert_eq!(api.version(), before, "a dry run stores nothing");
    assert!(
        api.object("apps/deployments", "mesh-system", "mesh-control")
            .is_none()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Against a real cluster, when `MESH_TEST_KUBECONFIG` names one: what
/// can be checked there without changing anything. Its API server takes
/// the whole install in a server-side dry run (the namespaced objects only
/// once `mesh-system` exists: a dry run creates no namespace), and
/// `meshctl check --pre` finds the cluster fit. Skipped, saying so,
/// without one; the other tests here use the Kubernetes API test server.
#[test]
fn a_real_cluster_takes_a_dry_run_of_install_and_passes_check_pre() {
    let Some(kubeconfig) = std::env::var_os("MESH_TEST_KUBECONFIG") else {
        eprintln!("skipped: MESH_TEST_KUBECONFIG names no real cluster");
        return;
    };
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs");
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    let install = root().join("install");
    let path = |p: &str| install.join(p).display().to_string();
    let mut files = vec![path("namespace.yaml"), path("crds")];
    if kubectl(&["get", "namespace", "mesh-system"]).0 {
        files.push(path("control-plane"));
    } else {
        files.push(path("control-plane/validating-webhook.yaml"));
    }
    let mut args = vec!["apply", "--dry-run=server"];
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    let (ok, said) = kubectl(&args);
    assert!(ok, "the cluster refused a dry run of install/: {said}");
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let (ok, out, err) = meshctl(&["--kubeconfig", &kubeconfig, "check", "--pre"]);
    assert!(ok, "meshctl check --pre: {out}{err}");
}

/// `meshctl inject` of a multi-document file of every workload kind:
/// every pod gets the sidecar, the output passes `kubernetes-validate
/// --strict` (so the injected containers are what Kubernetes accepts), and
/// `meshctl uninject` of it gives back the original documents exactly.
#[test]
fn meshctl_inject_is_valid_kubernetes_and_uninject_returns_the_original_documents() {
    tools();
    let dir = std::env::temp_dir().join(format!("mesh-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let roots = rcgen::CertificateParams::new(vec!["mesh".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem();
    let roots_file = dir.join("roots.pem");
    std::fs::write(&roots_file, &roots).unwrap();
    let original = root().join("tests/fixtures/inject-workloads.yaml");
    let (ok, injected, said) = meshctl(&[
        "inject",
        "-f",
        original.to_str().unwrap(),
        "--roots",
        roots_file.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    for line in [
        "Deployment shop/web: injected",
        "StatefulSet default/db: injected",
        "DaemonSet default/agent: injected",
        "Job default/migrate: injected",
        "CronJob default/report: injected",
        "Pod default/one: injected",
        "Pod default/debug: left as it is: the pod opts out (mesh.dev/inject: disabled)",
    ] {
        assert!(said.contains(line), "{line:?} missing from: {said}");
    }
    let docs = |text: &str| -> Vec<serde_json::Value> {
        text.split("\n---")
            .filter(|d| {
                d.lines()
                    .any(|l| !l.trim().is_empty() && !l.starts_with('#') && l != "---")
            })
            .map(|d| serde_saphyr::from_str(d).unwrap())
            .collect()
    };
    let before = docs(&std::fs::read_to_string(&original).unwrap());
    let after = docs(&injected);
    assert_eq!(before.len(), after.len());
    assert_eq!(
        injected.matches("name: mesh-proxy\n").count(),
        6,
        "{injected}"
    );
    assert!(injected.contains("MESH_PROXY_CONTROL_ROOTS"));
    let injected_file = dir.join("injected.yaml");
    std::fs::write(&injected_file, &injected).unwrap();
    let (ok, text) = output(
        Command::new("kubernetes-validate")
            .args(["-k", "1.37.0", "--strict"])
            .arg(&injected_file),
    );
    assert!(
        ok,
        "kubernetes-validate --strict refused the injected manifests:\n{text}"
    );
    let (ok, restored, said) = meshctl(&["uninject", "-f", injected_file.to_str().unwrap()]);
    assert!(ok, "{said}");
    assert!(said.contains("injection removed from 6 pod(s)"), "{said}");
    assert_eq!(docs(&restored), before);
    // A bad annotation: nothing printed, the document and annotation named.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {mesh.dev/proxy-memory-limit: lots}\nspec:\n  containers: [{name: a, image: a}]\n",
    )
    .unwrap();
    let (ok, out, said) = meshctl(&[
        "inject",
        "-f",
        bad.to_str().unwrap(),
        "--roots",
        roots_file.to_str().unwrap(),
    ]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        said.contains("Pod default/p: mesh.dev/proxy-memory-limit: \"lots\": not a quantity"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
