//! What tests do with the server: the machine's kubectl against it, the
//! objects and files most tests create (install/'s CRDs and webhooks, the
//! echo workload, ServiceAccount tokens), and waiting on a condition.

use super::KubeApi;
use serde_json::Value;
use std::path::Path;

/// Runs the machine's kubectl against `api` (`--kubeconfig`), returning
/// its output.
pub async fn kubectl(api: &KubeApi, args: &[&str]) -> std::process::Output {
    // A discovery cache of this call's own: a kind a CRD just added is
    // looked up afresh, not in what an earlier call cached.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cache = api.kubeconfig.with_file_name(format!("kubectl-cache-{n}"));
    tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .await
        .expect("kubectl runs")
}

/// kubectl, which must succeed; returns its stdout.
pub async fn kubectl_ok(api: &KubeApi, args: &[&str]) -> String {
    let out = kubectl(api, args).await;
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `yaml` to `dir/name` and creates its objects with kubectl.
/// Client-side validation needs the OpenAPI documents, which this server
/// does not serve; the server checks kinds, names and CRD schemas itself.
pub async fn create(api: &KubeApi, dir: &Path, name: &str, yaml: &str) {
    let (ok, said) = try_create(api, dir, name, yaml).await;
    assert!(ok, "kubectl create -f {name}: {said}");
}

/// The same, for a write that may be refused: whether kubectl succeeded,
/// and what it said on stderr.
pub async fn try_create(api: &KubeApi, dir: &Path, name: &str, yaml: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    let args = ["create", "--validate=false", "-f", path.to_str().unwrap()];
    let out = kubectl(api, &args).await;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), said)
}

/// A projected token of `default/account` (audience `mesh`) in a file, as
/// the kubelet mounts it; returns the file's path.
pub fn projected(api: &KubeApi, dir: &Path, account: &str) -> String {
    let path = dir.join(format!("token-{account}"));
    std::fs::write(&path, api.token("default", account, &["mesh"], 3600)).unwrap();
    path.display().to_string()
}

/// Creates a ServiceAccount of `default` for each of `accounts` with
/// kubectl and returns, in order, the file of each one's projected token
/// (audience `mesh`), as the kubelet mounts it.
pub async fn accounts(api: &KubeApi, dir: &Path, accounts: &[&str]) -> Vec<String> {
    let mut tokens = Vec::new();
    for account in accounts {
        let sa = format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {account}\n");
        create(api, dir, &format!("sa-{account}.yaml"), &sa).await;
        tokens.push(projected(api, dir, account));
    }
    tokens
}

/// Creates install/'s namespace (the control plane's Lease and CA Secret
/// go there) and the CRDs of install/crds with kubectl.
pub async fn install_crds(api: &KubeApi) {
    let install = concat!(env!("CARGO_MANIFEST_DIR"), "/../install");
    let namespace = format!("{install}/namespace.yaml");
    let crds = format!("{install}/crds");
    kubectl_ok(
        api,
        &["create", "--validate=false", "-f", &namespace, "-f", &crds],
    )
    .await;
}

/// mesh-control's arguments for this cluster (`--registry kubernetes`),
/// serving its admission webhook on loopback.
pub fn control_args(api: &KubeApi) -> Vec<String> {
    let kubeconfig = api.kubeconfig.display().to_string();
    [
        "--registry",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--webhook-addr",
        "127.0.0.1:0",
        "--webhook-names",
        "127.0.0.1",
    ]
    .map(String::from)
    .to_vec()
}

/// Creates install/'s ValidatingWebhookConfiguration with every webhook
/// pointed at `url` (a test cluster has no Service in front of the
/// control plane), and waits until mesh-control has filled in every
/// caBundle (the install leaves them empty) with `roots`.
pub async fn install_webhooks(api: &KubeApi, url: &str, roots: &str) {
    let base = url.strip_suffix("/validate").expect("a /validate URL");
    install_webhook_file(api, "validating-webhook.yaml", base, roots).await;
}

/// Creates install/control-plane/`file` (a webhook configuration) with
/// every webhook pointed at `base` plus the path its Service reference
/// names (a test cluster has no Service in front of the control plane),
/// and waits until mesh-control has filled in every caBundle (the install
/// leaves them empty) with `roots`.
pub async fn install_webhook_file(api: &KubeApi, file: &str, base: &str, roots: &str) {
    let file = format!(
        "{}/../install/control-plane/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let created = kubectl_ok(
        api,
        &["create", "--validate=false", "-f", &file, "-o", "json"],
    )
    .await;
    let config: Value = serde_json::from_str(&created).unwrap();
    let kind = config["kind"].as_str().unwrap().to_lowercase();
    let name = config["metadata"]["name"].as_str().unwrap().to_string();
    let urls: Vec<String> = config["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let path = h["clientConfig"]["service"]["path"].as_str().unwrap_or("/");
            format!("{base}{path}")
        })
        .collect();
    let point: Vec<Value> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                               "value": {"url": url}})
        })
        .collect();
    let point = Value::Array(point).to_string();
    let args = ["patch", &kind, &name];
    kubectl_ok(api, &[&args[..], &["--type=json", "-p", &point]].concat()).await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let args = ["get", &kind, &name, "-o", "json"];
        let vwc: Value = serde_json::from_str(&kubectl_ok(api, &args).await).unwrap();
        let hooks = vwc["webhooks"].as_array().cloned().unwrap_or_default();
        let set = !hooks.is_empty()
            && hooks.iter().zip(&urls).all(|(h, url)| {
                h["clientConfig"]["url"] == url.as_str()
                    && h["clientConfig"]["caBundle"].as_str().is_some_and(|b| {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.decode(b).ok()
                            == Some(roots.as_bytes().to_vec())
                    })
            });
        if set {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "the caBundle was never set: {vwc}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The Pod and EndpointSlice of one echo instance `id` whose sidecar
/// listens on `port` of loopback, as a user would write them (one slice
/// per pod: each sidecar has its own port); its ServiceAccount is `echo`.
pub fn echo_objects(id: &str, port: u16, version: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {id}
  labels: {{app: echo, app.kubernetes.io/version: {version}}}
spec:
  serviceAccountName: echo
  containers:
  - name: echo
    image: mesh-echo
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {id}
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports:
- name: http
  port: {port}
  protocol: TCP
endpoints:
- addresses: [127.0.0.1]
  conditions: {{ready: true}}
  targetRef: {{kind: Pod, name: {id}, namespace: default}}
"
    )
}

/// The echo Service the instances of `echo_objects` belong to.
pub const ECHO_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {app: echo}
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

/// Waits (20 s at most) until TrafficSplit `name` of `default` carries
/// condition `type_` with `status` for `generation`, as kubectl reads it;
/// returns the condition.
pub async fn condition(
    api: &KubeApi,
    name: &str,
    type_: &str,
    status: &str,
    generation: i64,
) -> Value {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = kubectl_ok(api, &["get", "trafficsplit", name, "-o", "json"]).await;
        let obj: Value = serde_json::from_str(&out).unwrap();
        let found = obj["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_))
            .cloned();
        if let Some(c) = &found
            && c["status"] == status
            && c["observedGeneration"] == generation
        {
            return c.clone();
        }
        assert!(
            std::time::Instant::now() < end,
            "{name} never got {type_}={status} for generation {generation}: {found:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Says so when `MESH_TEST_KUBECONFIG` names a real cluster: the tests
/// that use this server address sidecars and webhooks on this machine's
/// loopback, which no cluster's API server or pods can reach, so they run
/// against this server whatever it says (tests/install.rs has what runs
/// against the real one).
pub fn real_cluster_ignored() {
    if let Some(k) = std::env::var_os("MESH_TEST_KUBECONFIG") {
        eprintln!(
            "MESH_TEST_KUBECONFIG={} ignored: these tests address sidecars on this machine's loopback",
            k.to_string_lossy()
        );
    }
}
