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
//! What tests do with it (kubectl, install/'s CRDs and webhooks, the echo
//! workload) is in `client`.

mod admit;
mod apply;
mod client;
mod patch;
mod read;
mod resources;
mod schema;
mod serve;
mod store;
mod tokens;
mod webhooks;
mod writes;

pub use client::*;
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
                    serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
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

    /// How many Pods are stored, in every namespace.
    pub fn pods(&self) -> usize {
        self.shared.store.lock().unwrap().list("/pods", "").len()
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
