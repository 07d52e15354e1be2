//! install/ as Kubernetes reads it: every manifest passes
//! `kubernetes-validate --strict` against Kubernetes 1.37 (PyPI, offline
//! schemas, none of it ours), and the CRDs' own OpenAPI schemas, checked
//! by the jsonschema library, accept every example rule and refuse what a
//! structural schema can refuse (negative weights, unknown enums, missing
//! fields). `tests/setup.sh` installs the tools; this test runs it when
//! they are missing.

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
        assert!(
            ok.is_ok_and(|s| s.success()) && have(),
            "kubernetes-validate and jsonschema (pip) are needed; {} could not install them",
            setup.display()
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
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(
        passed,
        files.len(),
        "every file validated as a known resource:\n{text}"
    );
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
