#![allow(dead_code, unreachable_pub)]
//! A Kubernetes API test server: HTTPS on loopback, bearer-token
//! authentication, objects as k8s-openapi JSON, list and watch with
//! resourceVersion, bookmarks and 410 Gone, create / update / patch /
//! delete and the status subresource, server-side apply with field
//! ownership, validating admission webhooks. A test fixture, not product
//! code: it lets mesh-control's Kubernetes backend and the machine's `kubectl`
//! talk to one server, so neither drifts into a dialect of our own. Each
//! behaviour names the Kubernetes documentation it follows.
//!
//! Faults a real cluster has: every watch dropped, history compacted (the
//! next watch gets 410 Gone), and the whole server restarted on its port.

mod admit;
mod apply;
mod patch;
mod read;
mod resources;
mod schema;
mod serve;
mod store;
mod tokens;
mod webhooks;
mod writes;

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// State every connection shares.
pub(crate) struct Shared {
    pub store: Mutex<store::Store>,
    pub token: String,
    pub addr: SocketAddr,
    /// Bumped to drop every open watch.
    pub drops: watch::Sender<u64>,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_every: std::time::Duration,
    /// Requests seen, by "VERB path" (no query), for tests to assert on.
    pub seen: Mutex<Vec<String>>,
    /// Writes seen, as ("VERB path", field manager).
    pub writes: Mutex<Vec<(String, String)>>,
    /// Resources SelfSubjectAccessReviews say the admin may not touch.
    pub denied: Mutex<Vec<String>>,
    /// Signs and reviews ServiceAccount tokens.
    pub signer: tokens::Signer,
    /// What is served: the built-ins and every established CRD's.
    pub resources: Mutex<Vec<resources::Resource>>,
}

/// The running server.
pub struct KubeApi {
    shared: Arc<Shared>,
    tls: tokio_rustls::TlsAcceptor,
    accept: Option<tokio::task::JoinHandle<()>>,
    /// kubeconfig for kubectl and for mesh-control.
    pub kubeconfig: PathBuf,
}

impl KubeApi {
    /// Starts on 127.0.0.1:0 and writes `dir/kubeconfig` and `dir/ca.pem`.
    pub async fn start(dir: &Path) -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tls, ca_pem) = tls();
        std::fs::write(dir.join("kube-ca.pem"), &ca_pem).unwrap();
        let token = format!("test-admin-{}", std::process::id());
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{addr}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: default\ncurrent-context: test\n",
                dir.join("kube-ca.pem").display()
            ),
        )
        .unwrap();
        let mut store = store::Store::default();
        // Namespaces every cluster starts with
        // (https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/#initial-namespaces).
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            store
                .create(
                    ("/namespaces".into(), String::new(), ns.into()),
                    serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                )
                .map_err(|e| format!("{e:?}"))
                .unwrap();
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            token,
            addr,
            drops: watch::channel(0).0,
            bookmark_every: std::time::Duration::from_secs(1),
            seen: Mutex::new(Vec::new()),
            writes: Mutex::new(Vec::new()),
            denied: Mutex::new(Vec::new()),
            signer: tokens::Signer::default(),
            resources: Mutex::new(resources::builtins()),
        });
        let mut api = KubeApi {
            shared,
            tls,
            accept: None,
            kubeconfig,
        };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: TcpListener) {
        self.accept = Some(tokio::spawn(serve::accept(
            listener,
            self.tls.clone(),
            self.shared.clone(),
        )));
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Drops every open watch mid-stream (the connection is cut).
    pub fn drop_watches(&self) {
        self.shared.drops.send_modify(|n| *n += 1);
    }

    /// Forgets the change history: any watch resumed from an earlier
    /// resourceVersion gets 410 Gone and must relist.
    pub fn compact(&self) {
        self.shared.store.lock().unwrap().compact();
    }

    /// Stops serving (every connection cut, the port closed), then serves
    /// again on the same port with the same objects after `down`.
    pub async fn restart(&mut self, down: std::time::Duration) {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        tokio::time::sleep(down).await;
        let listener = TcpListener::bind(self.shared.addr).await.expect("rebind");
        self.serve(listener);
    }

    /// The current resourceVersion.
    pub fn version(&self) -> u64 {
        self.shared.store.lock().unwrap().version()
    }

    /// One stored object, if present.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .store
            .lock()
            .unwrap()
            .get(&(resource.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// A projected ServiceAccount token for `namespace/account`, for
    /// `audiences`, expiring `ttl_secs` from now (negative: expired).
    pub fn token(
        &self,
        namespace: &str,
        account: &str,
        audiences: &[&str],
        ttl_secs: i64,
    ) -> String {
        self.shared
            .signer
            .issue(namespace, account, audiences, ttl_secs)
    }

    /// Stores `object` of `resource` (the store's "group/plural" key) as a
    /// create would, without the HTTP round trip: for benchmarks that
    /// need thousands of objects in place. Watchers see it.
    pub fn insert(&self, resource: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        self.shared
            .store
            .lock()
            .unwrap()
            .create((resource.into(), namespace.into(), name), object)
            .map_err(|e| format!("{e:?}"))
            .expect("a fixture object is new");
    }

    /// Changes a stored object in place as an update would; watchers see
    /// the change. False if it is not stored.
    pub fn modify(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> bool {
        let mut store = self.shared.store.lock().unwrap();
        let key = (
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        let Some(mut object) = store.get(&key).cloned() else {
            return false;
        };
        change(&mut object);
        store.update(&key, object, false, false).is_ok()
    }

    /// From now on, access reviews say the admin may not act on
    /// `resource` (a plural, e.g. "clusterroles").
    pub fn deny(&self, resource: &str) {
        self.shared.denied.lock().unwrap().push(resource.into());
    }

    /// Every write so far, as ("VERB path", field manager).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.shared.writes.lock().unwrap().clone()
    }

    /// Every "VERB path" served so far.
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn tls() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test kube-apiserver CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
        SanType::DnsName("localhost".try_into().unwrap()),
    ];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let chain = vec![cert.der().clone(), ca.der().clone()];
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca.pem())
}

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

/// Creates install/'s ValidatingWebhookConfiguration with every webhook
/// pointed at `url` (a test cluster has no Service in front of the
/// control plane), and waits until mesh-control has filled in every
/// caBundle (the install leaves them empty) with `roots`.
pub async fn install_webhooks(api: &KubeApi, url: &str, roots: &str) {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../install/control-plane/validating-webhook.yaml"
    );
    let created = kubectl_ok(
        api,
        &["create", "--validate=false", "-f", file, "-o", "json"],
    )
    .await;
    let vwc: Value = serde_json::from_str(&created).unwrap();
    let hooks = vwc["webhooks"].as_array().map_or(0, Vec::len);
    let point: Vec<Value> = (0..hooks)
        .map(|i| {
            serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                               "value": {"url": url}})
        })
        .collect();
    let point = Value::Array(point).to_string();
    let args = ["patch", "validatingwebhookconfiguration", "mesh-control"];
    kubectl_ok(api, &[&args[..], &["--type=json", "-p", &point]].concat()).await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let args = [
            "get",
            "validatingwebhookconfiguration",
            "mesh-control",
            "-o",
            "json",
        ];
        let vwc: Value = serde_json::from_str(&kubectl_ok(api, &args).await).unwrap();
        let hooks = vwc["webhooks"].as_array().cloned().unwrap_or_default();
        let set = !hooks.is_empty()
            && hooks.iter().all(|h| {
                h["clientConfig"]["url"] == url
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
