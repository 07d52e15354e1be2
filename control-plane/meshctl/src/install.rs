//! `meshctl install` and `meshctl uninstall`: the manifests that put mesh on
//! a cluster, rendered from a few values (`--set key=value`). The
//! Namespace, the CRDs and the webhook configuration are install/'s own
//! files, embedded as they are; the control plane's ServiceAccount, RBAC,
//! Deployment, Service and PodDisruptionBudget are rendered here, and
//! install/ holds their rendering with the defaults (a test fails when the
//! two part). No certificate or key is rendered: the first replica creates
//! the CA in the Secret `mesh-ca` and keeps the webhook's caBundle equal
//! to its roots, so the same output installs every cluster.

use anyhow::{Result, bail};

/// What the rendering depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    /// Control-plane replicas (2 or more for HA).
    pub replicas: u32,
    /// The control plane's image.
    pub image: String,
    /// When the kubelet pulls it.
    pub image_pull_policy: String,
    /// `MESH_CONTROL_LOG`.
    pub log_level: String,
    /// The container's CPU request.
    pub cpu_request: String,
    /// Its memory request.
    pub memory_request: String,
    /// Its CPU limit.
    pub cpu_limit: String,
    /// Its memory limit.
    pub memory_limit: String,
    /// `--lease-duration-secs`.
    pub lease_duration_secs: u32,
}

impl Default for Values {
    fn default() -> Values {
        Values {
            replicas: 2,
            image: format!("mesh/mesh-control:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            log_level: "info".into(),
            cpu_request: "100m".into(),
            memory_request: "128Mi".into(),
            cpu_limit: "1".into(),
            memory_limit: "512Mi".into(),
            lease_duration_secs: 15,
        }
    }
}

/// The keys `--set` takes.
const KEYS: &[&str] = &[
    "replicas",
    "image",
    "imagePullPolicy",
    "logLevel",
    "resources.requests.cpu",
    "resources.requests.memory",
    "resources.limits.cpu",
    "resources.limits.memory",
    "leaseDurationSeconds",
];

impl Values {
    /// The defaults with every `key=value` of `sets` applied; every bad
    /// one is named at once.
    pub fn from_sets(sets: &[String]) -> Result<Values> {
        let mut v = Values::default();
        let mut problems = Vec::new();
        for set in sets {
            let Some((key, value)) = set.split_once('=') else {
                problems.push(format!("--set {set:?}: not key=value"));
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let text = |ok: bool, field: &mut String, what: &str, problems: &mut Vec<String>| {
                if ok {
                    *field = value.to_string();
                } else {
                    problems.push(format!("--set {key}={value:?}: {what}"));
                }
            };
            let quantity = is_quantity(value);
            match key {
                "replicas" => match value.parse::<u32>() {
                    Ok(n) if (1..=10).contains(&n) => v.replicas = n,
                    _ => problems.push(format!("--set replicas={value:?}: a whole number from 1 to 10")),
                },
                "leaseDurationSeconds" => match value.parse::<u32>() {
                    Ok(n) if (2..=3600).contains(&n) => v.lease_duration_secs = n,
                    _ => problems.push(format!(
                        "--set leaseDurationSeconds={value:?}: a whole number of seconds from 2 to 3600"
                    )),
                },
                "image" => text(
                    !value.is_empty() && !value.contains(char::is_whitespace),
                    &mut v.image,
                    "an image reference without spaces",
                    &mut problems,
                ),
                "imagePullPolicy" => text(
                    matches!(value, "Always" | "IfNotPresent" | "Never"),
                    &mut v.image_pull_policy,
                    "one of Always, IfNotPresent, Never",
                    &mut problems,
                ),
                "logLevel" => text(
                    matches!(value, "error" | "warn" | "info" | "debug" | "trace"),
                    &mut v.log_level,
                    "one of error, warn, info, debug, trace",
                    &mut problems,
                ),
                "resources.requests.cpu" => text(quantity, &mut v.cpu_request, "a quantity (100m, 1)", &mut problems),
                "resources.requests.memory" => text(quantity, &mut v.memory_request, "a quantity (128Mi)", &mut problems),
                "resources.limits.cpu" => text(quantity, &mut v.cpu_limit, "a quantity (100m, 1)", &mut problems),
                "resources.limits.memory" => text(quantity, &mut v.memory_limit, "a quantity (512Mi)", &mut problems),
                other => problems.push(format!(
                    "--set {other}: no such value; the values are {}",
                    KEYS.join(", ")
                )),
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n"));
        }
        Ok(v)
    }
}

/// A Kubernetes quantity as the manifests use it: digits, an optional
/// fraction, an optional suffix (m, k, M, G, Ki, Mi, Gi).
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && matches!(suffix, "" | "m" | "k" | "M" | "G" | "Ki" | "Mi" | "Gi")
}

/// One rendered file: its path under install/ and its text.
pub type File = (&'static str, String);

/// Every file of an install, in the order they are applied (namespace and
/// CRDs first, the webhook last, once something serves it).
pub fn render(v: &Values) -> Vec<File> {
    let fixed = |path: &'static str, text: &str| (path, text.to_string());
    vec![
        fixed(
            "namespace.yaml",
            include_str!("../../../install/namespace.yaml"),
        ),
        fixed(
            "crds/authorizationpolicies.yaml",
            include_str!("../../../install/crds/authorizationpolicies.yaml"),
        ),
        fixed(
            "crds/httproutegroups.yaml",
            include_str!("../../../install/crds/httproutegroups.yaml"),
        ),
        fixed(
            "crds/releases.yaml",
            include_str!("../../../install/crds/releases.yaml"),
        ),
        fixed(
            "crds/trafficpolicies.yaml",
            include_str!("../../../install/crds/trafficpolicies.yaml"),
        ),
        fixed(
            "crds/trafficsplits.yaml",
            include_str!("../../../install/crds/trafficsplits.yaml"),
        ),
        ("control-plane/rbac.yaml", super::install_objects::rbac()),
        (
            "control-plane/deployment.yaml",
            super::install_objects::deployment(v),
        ),
        (
            "control-plane/service.yaml",
            super::install_objects::service(),
        ),
        ("control-plane/pdb.yaml", super::install_objects::pdb(v)),
        fixed(
            "control-plane/validating-webhook.yaml",
            include_str!("../../../install/control-plane/validating-webhook.yaml"),
        ),
        fixed(
            "control-plane/mutating-webhook.yaml",
            include_str!("../../../install/control-plane/mutating-webhook.yaml"),
        ),
    ]
}

/// The files as one stream for `kubectl apply -f -`, each under a
/// `# Source:` line naming its file.
pub fn stream(files: &[File]) -> String {
    let mut out = String::new();
    for (path, text) in files {
        out.push_str(&format!("---\n# Source: install/{path}\n"));
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// What `meshctl uninstall` prints: every object of the install, as
/// `kubectl delete -f -` takes them, last installed first (the webhook
/// before what serves it; the namespace last).
pub fn uninstall(files: &[File]) -> String {
    let mut objects: Vec<String> = Vec::new();
    for (_, text) in files {
        for doc in text.split("\n---") {
            let head = |key: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}: ")))
                    .map(str::trim)
                    .map(String::from)
            };
            let (Some(api), Some(kind)) = (head("apiVersion"), head("kind")) else {
                continue;
            };
            let mut meta = doc
                .lines()
                .skip_while(|l| !l.starts_with("metadata:"))
                .skip(1)
                .take_while(|l| l.starts_with("  "));
            let mut name = None;
            let mut namespace = None;
            for l in meta.by_ref() {
                if let Some(n) = l.strip_prefix("  name: ") {
                    name = Some(n.trim().to_string());
                } else if let Some(n) = l.strip_prefix("  namespace: ") {
                    namespace = Some(n.trim().to_string());
                }
            }
            let Some(name) = name else { continue };
            let ns = namespace
                .map(|n| format!("\n  namespace: {n}"))
                .unwrap_or_default();
            objects.push(format!(
                "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}{ns}\n"
            ));
        }
    }
    objects.reverse();
    objects.iter().map(|o| format!("---\n{o}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_checked_and_every_bad_one_named() {
        let v = Values::from_sets(&["replicas=3".into(), "resources.limits.memory=1Gi".into()])
            .unwrap();
        assert_eq!((v.replicas, v.memory_limit.as_str()), (3, "1Gi"));
        let e = Values::from_sets(&[
            "replicas=0".into(),
            "colour=red".into(),
            "resources.requests.cpu=lots".into(),
            "image".into(),
        ])
        .unwrap_err()
        .to_string();
        for what in [
            "replicas=\"0\"",
            "--set colour: no such value",
            "resources.requests.cpu=\"lots\"",
            "--set \"image\": not key=value",
        ] {
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn uninstall_lists_every_object_last_installed_first() {
        let files = render(&Values::default());
        let out = uninstall(&files);
        let kinds: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(
            kinds[..2],
            [
                "MutatingWebhookConfiguration",
                "ValidatingWebhookConfiguration"
            ]
        );
        assert_eq!(kinds.last(), Some(&"Namespace"));
        assert!(
            kinds.contains(&"Deployment") && kinds.contains(&"CustomResourceDefinition"),
            "{kinds:?}"
        );
    }
}
