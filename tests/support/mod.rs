//! Test harness: runs the real binaries (mesh-control, mesh-proxy,
//! mesh-echo, meshctl) on loopback with port 0, waits on readiness with
//! bounded deadlines, and prints every process's log tail when a test fails.
#![allow(dead_code, unreachable_pub)]

pub mod load;
pub mod subscriber;
pub mod tokens;

use anyhow::{Result, bail};
use meshctl::procs::{Proc, binary, wait_config, wait_ready};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Builds the binaries once per test process, so `cargo test` alone always
/// runs the current code (a stale binary would test yesterday's mesh).
pub fn ensure_built() {
    meshctl::procs::ensure_built(!cfg!(debug_assertions));
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("mesh-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// An echo app with its sidecar.
pub struct Instance {
    pub id: String,
    pub app: Proc,
    pub sidecar: Proc,
}

impl Instance {
    pub fn app_addr(&self) -> SocketAddr {
        self.app.addr("addr").expect("echo reports addr")
    }
    pub fn admin(&self) -> SocketAddr {
        self.sidecar.addr("admin").expect("sidecar reports admin")
    }
    /// Graceful stop: sidecar first (deregister, drain), then the app.
    pub async fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.sidecar.stop(Duration::from_secs(15)).await;
        self.app.stop(Duration::from_secs(5)).await;
        st
    }
}

/// A client-only sidecar: the app side sends to `outbound`.
pub struct Client {
    pub proc: Proc,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
}

/// Health-check settings for an instance's sidecar.
#[derive(Clone, Copy)]
pub struct Health {
    pub interval_ms: u64,
    pub failure_threshold: u32,
}

/// A control plane plus whatever the test starts around it.
pub struct Mesh {
    pub dir: TempDir,
    pub control: Proc,
    pub grpc: SocketAddr,
    /// The trust anchors sidecars know the control plane by.
    pub roots: PathBuf,
    /// Every sidecar's bootstrap token.
    pub tokens: tokens::Tokens,
    /// Extra mesh-control flags, kept across restarts.
    control_args: Vec<String>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- logs in {} ---", self.dir.0.display());
            if let Ok(entries) = std::fs::read_dir(self.dir.0.join("logs")) {
                for e in entries.flatten() {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!(
                        "== {} ==\n{}",
                        e.path().display(),
                        lines[lines.len().saturating_sub(25)..].join("\n")
                    );
                }
            }
        }
    }
}

impl Mesh {
    /// Starts a control plane on port 0 with a fresh state dir.
    pub async fn start(tag: &str) -> Mesh {
        Self::start_with_args(tag, &[]).await
    }

    /// Starts a control plane with extra flags (kept for restarts). A
    /// `--bootstrap-tokens` file of the test's own is merged into the
    /// harness's, which gives every sidecar a token.
    pub async fn start_with_args(tag: &str, args: &[&str]) -> Mesh {
        ensure_built();
        let dir = TempDir::new(tag);
        let mut control_args: Vec<String> = Vec::new();
        let mut own = String::new();
        let mut args = args.iter();
        while let Some(a) = args.next() {
            if *a == "--bootstrap-tokens" {
                let file = args.next().expect("--bootstrap-tokens FILE");
                own = std::fs::read_to_string(file).expect("the test's tokens file");
            } else {
                control_args.push(a.to_string());
            }
        }
        let tokens = tokens::Tokens::new(&dir.0.join("bootstrap-tokens.yaml"), own);
        control_args.push("--bootstrap-tokens".into());
        control_args.push(tokens.file().display().to_string());
        let control = start_control(&dir.0, "127.0.0.1:0".parse().unwrap(), &control_args)
            .await
            .expect("control plane starts");
        let grpc = control.addr("grpc").unwrap();
        let roots = control.roots().unwrap();
        Mesh {
            dir,
            control,
            grpc,
            roots,
            tokens,
            control_args,
        }
    }

    /// A gRPC channel to the sidecars' port with no client certificate:
    /// what a sidecar has before Certify, or an anonymous attacker.
    pub async fn anonymous_channel(&self) -> tonic::transport::Channel {
        meshctl::client::anonymous_channel(&self.control_url(), &self.roots, "cluster.local")
            .await
            .expect("TLS to the control plane")
    }

    /// A gRPC channel to the sidecars' port as workload `account` of
    /// `default`, with a certificate from this mesh's CA (as Certify would
    /// issue it).
    pub async fn workload_channel(&self, account: &str) -> tonic::transport::Channel {
        let ca = mesh_control::identity::ca::Ca::load_or_create(
            &self.dir.0.join("state/ca"),
            None,
            Duration::from_secs(3600),
        )
        .expect("the mesh's CA");
        let creds = self.dir.0.join(format!("workload-{account}"));
        let id = mesh_control::identity::spiffe_id("cluster.local", "default", account);
        mesh_control::mtls::write_credentials(&ca, &id, &creds).expect("workload credentials");
        meshctl::client::channel(&self.control_url(), &creds)
            .await
            .expect("mTLS to the control plane")
    }

    /// The sidecars' control plane URL (TLS).
    pub fn control_url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// The admin API (mTLS), with the operator's credentials.
    pub fn admin(&self) -> meshctl::client::Control {
        self.control
            .control()
            .expect("mesh-control reports its admin API")
    }

    /// The same, with the read-only viewer's credentials.
    pub fn viewer(&self) -> meshctl::client::Control {
        let admin = self.admin();
        let viewer = admin.credentials.with_file_name("viewer");
        meshctl::client::Control::new(admin.url, viewer)
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.0.join("logs")
    }

    /// Kills the control plane hard (SIGKILL): no goodbye to anyone.
    pub async fn kill_control(&mut self) {
        self.control.signal(nix::sys::signal::Signal::SIGKILL);
        self.control
            .wait(Duration::from_secs(5))
            .await
            .expect("control plane died");
    }

    /// Restarts the control plane on the same address and state dir.
    pub async fn restart_control(&mut self) {
        self.control = start_control(&self.dir.0, self.grpc, &self.control_args)
            .await
            .expect("control plane restarts");
    }

    /// Starts an echo app and its sidecar; waits until the sidecar is ready.
    pub async fn instance(
        &self,
        service: &str,
        version: &str,
        id: &str,
        echo_args: &[&str],
        health: Option<Health>,
    ) -> Instance {
        self.instance_with(service, version, id, echo_args, health, &[])
            .await
    }

    /// `instance`, with extra sidecar environment (identity token, inbound mode).
    pub async fn instance_with(
        &self,
        service: &str,
        version: &str,
        id: &str,
        echo_args: &[&str],
        health: Option<Health>,
        sidecar_env: &[(&str, &str)],
    ) -> Instance {
        let mut cmd = Command::new(binary("mesh-echo"));
        cmd.args(["--service", service, "--version", version, "--instance", id])
            .args(echo_args);
        let app = Proc::spawn(&format!("{id}-app"), cmd, &self.logs())
            .await
            .expect("echo starts");
        let app_addr = app.addr("addr").unwrap();
        let mut cmd = self.sidecar_cmd(service, version, id);
        cmd.env("MESH_PROXY_APP_ADDR", app_addr.to_string())
            .env("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0");
        if let Some(h) = health {
            cmd.env("MESH_PROXY_HEALTH_PATH", "/healthz")
                .env("MESH_PROXY_HEALTH_INTERVAL_MS", h.interval_ms.to_string())
                .env(
                    "MESH_PROXY_HEALTH_FAILURE_THRESHOLD",
                    h.failure_threshold.to_string(),
                );
        }
        sidecar_env_into(&mut cmd, sidecar_env);
        let sidecar = Proc::spawn(&format!("{id}-proxy"), cmd, &self.logs())
            .await
            .expect("sidecar starts");
        wait_ready(sidecar.addr("admin").unwrap(), "/ready", DEADLINE)
            .await
            .expect("sidecar ready");
        Instance {
            id: id.to_string(),
            app,
            sidecar,
        }
    }

    /// Starts a client-only sidecar (no app) and waits until it runs the
    /// control plane's current config.
    pub async fn client(&self, id: &str) -> Client {
        self.client_with(id, &[]).await
    }

    /// `client`, with extra sidecar environment.
    pub async fn client_with(&self, id: &str, env: &[(&str, &str)]) -> Client {
        let mut cmd = self.sidecar_cmd("client", "", id);
        sidecar_env_into(&mut cmd, env);
        let proc = Proc::spawn(&format!("{id}-proxy"), cmd, &self.logs())
            .await
            .expect("client sidecar starts");
        let client = Client {
            outbound: proc.addr("outbound").unwrap(),
            admin: proc.addr("admin").unwrap(),
            proc,
        };
        // Ready covers the workload certificate too, when one is configured.
        wait_ready(client.admin, "/ready", DEADLINE)
            .await
            .expect("client sidecar ready");
        self.sync(&client).await;
        client
    }

    /// Waits until `client` runs the control plane's current config.
    pub async fn sync(&self, client: &Client) {
        wait_config(client.admin, self.version().await, DEADLINE)
            .await
            .expect("client sidecar catches up with the control plane");
    }

    /// A mesh with one instance of each of `services` (version v1, ids
    /// `<service>-a`), each ready in the config sidecars are sent.
    pub async fn with_instances(tag: &str, services: &[&str]) -> (Mesh, Vec<Instance>) {
        let mesh = Mesh::start(tag).await;
        let mut instances = Vec::new();
        for svc in services {
            let id = format!("{svc}-a");
            instances.push(mesh.instance(svc, "v1", &id, &[], None).await);
        }
        for svc in services {
            mesh.wait_ready_endpoints(svc, &[(svc, 1)]).await.unwrap();
        }
        (mesh, instances)
    }

    /// One echo instance (extra `echo_args`), ready, and a client sidecar
    /// that knows it.
    pub async fn one_instance(tag: &str, echo_args: &[&str]) -> (Mesh, Instance, Client) {
        let mesh = Mesh::start(tag).await;
        let inst = mesh
            .instance("echo", "v1", "echo-v1-a", echo_args, None)
            .await;
        mesh.wait_ready_endpoints("echo", &[("echo", 1)])
            .await
            .unwrap();
        let client = mesh.client("client-0").await;
        (mesh, inst, client)
    }

    /// echo v1 and v2, one instance each, behind a TrafficSplit with these
    /// weights, both ready, and a client sidecar that knows it all.
    pub async fn two_versions(tag: &str, w1: &str, w2: &str) -> (Mesh, [Instance; 2], Client) {
        let mesh = Mesh::start(tag).await;
        let v1 = mesh.instance("echo", "v1", "echo-v1-a", &[], None).await;
        let v2 = mesh.instance("echo", "v2", "echo-v2-a", &[], None).await;
        mesh.apply_ok(
            "split.yaml",
            &split("echo", &[("echo-v1", w1), ("echo-v2", w2)]),
        )
        .await;
        mesh.wait_ready_endpoints("echo", &[("echo-v1", 1), ("echo-v2", 1)])
            .await
            .unwrap();
        let client = mesh.client("client-0").await;
        (mesh, [v1, v2], client)
    }

    /// The command for a sidecar of this mesh (ports 0; no app).
    pub fn sidecar_cmd(&self, service: &str, version: &str, id: &str) -> Command {
        let mut cmd = Command::new(binary("mesh-proxy"));
        cmd.env("MESH_PROXY_SERVICE", service)
            .env("MESH_PROXY_VERSION", version)
            .env("MESH_PROXY_INSTANCE_ID", id)
            .env("MESH_PROXY_CONTROL_ADDR", self.control_url())
            .env("MESH_PROXY_CONTROL_ROOTS", &self.roots)
            .env(
                "MESH_PROXY_IDENTITY_TOKEN",
                self.tokens.token("default", service),
            )
            .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_RECONNECT_MAX_MS", "500")
            // Quiet unless the one running the tests asks for more.
            .env(
                "MESH_PROXY_LOG",
                std::env::var("MESH_PROXY_LOG").unwrap_or_else(|_| "info".into()),
            );
        cmd
    }

    /// Runs meshctl against this control plane.
    pub async fn meshctl(&self, args: &[&str]) -> std::process::Output {
        let admin = self.admin();
        Command::new(binary("meshctl"))
            .arg("--control")
            .arg(&admin.url)
            .arg("--credentials")
            .arg(&admin.credentials)
            .args(args)
            .output()
            .await
            .expect("meshctl runs")
    }

    /// `meshctl release shift echo --to echo-v2 --weight <percent>`, which must
    /// succeed; returns what it printed.
    pub async fn shift_echo_v2(&self, percent: &str) -> String {
        let out = self
            .meshctl(&[
                "release", "shift", "echo", "--to", "echo-v2", "--weight", percent,
            ])
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `yaml` to a file named `name` and applies it with meshctl.
    pub async fn apply(&self, name: &str, yaml: &str) -> std::process::Output {
        let path = self.dir.0.join(name);
        std::fs::write(&path, yaml).unwrap();
        self.meshctl(&["apply", "-f", path.to_str().unwrap()]).await
    }

    /// What `meshctl apply` of `yaml` says when it refuses it (it must),
    /// each problem without its `file:line: ` prefix.
    pub async fn refused(&self, name: &str, yaml: &str) -> Vec<String> {
        let out = self.apply(name, yaml).await;
        assert!(!out.status.success(), "meshctl apply accepted {name}");
        let prefix = regex::Regex::new(&format!(r"{}:\d+: (.+)", regex::escape(name))).unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<String> = said
            .lines()
            .filter_map(|l| prefix.captures(l).map(|c| c[1].to_string()))
            .collect();
        assert!(!problems.is_empty(), "meshctl named no problem: {said}");
        problems
    }

    /// Applies and insists it worked; returns the config version it produced.
    pub async fn apply_ok(&self, name: &str, yaml: &str) {
        let out = self.apply(name, yaml).await;
        assert!(
            out.status.success(),
            "apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Turns retries off for `service` and picks its balancer (a
    /// TrafficPolicy with nothing to retry on), and waits until `client`
    /// runs it: a zero-downtime test then sees every failure that a retry
    /// would otherwise hide.
    pub async fn no_retries(&self, service: &str, balancer: &str, client: &Client) {
        self.apply_ok(
            &format!("{service}-no-retries.yaml"),
            &traffic_policy(
                service,
                &format!("loadBalancer: {balancer}\nretry:\n  retryOn: []\n  grpcCodes: []"),
            ),
        )
        .await;
        self.sync(client).await;
    }

    /// The control plane's current config version.
    pub async fn version(&self) -> u64 {
        let mut c = meshctl::client::admin(&self.admin()).await.unwrap();
        let st = c
            .proxy_status(mesh_proto::v1::ProxyStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        st.control_version.parse().unwrap()
    }

    /// Whether the config sidecars are sent has these endpoint counts for
    /// `service`'s backends (a backend its routes do not name counts as 0).
    async fn published_endpoints(&self, service: &str, want: &[(&str, usize)]) -> bool {
        let Ok(mut c) = meshctl::client::admin(&self.admin()).await else {
            return false;
        };
        let req = mesh_proto::v1::GetRoutesRequest {
            service: service.into(),
            namespace: "default".into(),
        };
        let Ok(routes) = c.get_routes(req).await else {
            return false;
        };
        let routes = routes.into_inner();
        want.iter().all(|(backend, n)| {
            let name = format!("{backend}.default");
            routes
                .clusters
                .iter()
                .find(|c| c.name == name)
                .map_or(0, |c| c.endpoints.len())
                == *n
        })
    }

    /// Waits until `service`'s backends have these ready endpoint counts.
    pub async fn wait_ready_endpoints(&self, service: &str, want: &[(&str, usize)]) -> Result<()> {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            // A service can be unknown until its first instance registers.
            let st = match meshctl::cli::status(&self.admin(), "default", service).await {
                Ok(st) => st,
                Err(e) if tokio::time::Instant::now() > end => return Err(e),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let ok = want.iter().all(|(backend, n)| {
                st.backends
                    .iter()
                    .find(|b| b.service == *backend)
                    .map(|b| b.endpoints.iter().filter(|e| e.ready).count())
                    == Some(*n)
            });
            // The registry can be ahead of what sidecars are sent (changes
            // are gathered for a few ms): wait for the published config too.
            if ok && self.published_endpoints(service, want).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > end {
                bail!("endpoints never reached {want:?}: {st:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn start_control(dir: &Path, grpc: SocketAddr, extra_args: &[String]) -> Result<Proc> {
    meshctl::procs::ControlPlane {
        grpc_addr: &grpc.to_string(),
        admin_addr: "127.0.0.1:0",
        state_dir: &dir.join("state"),
        config: None,
        // Short leases, so tests see expiry and recovery quickly.
        heartbeat_ms: Some(300),
        log: "info",
        extra_args,
    }
    .start(&dir.join("logs"))
    .await
}

/// A test's own sidecar environment on top of `sidecar_cmd`'s; a projected
/// token file replaces the harness's bootstrap token (a sidecar given both
/// refuses to start).
fn sidecar_env_into(cmd: &mut Command, env: &[(&str, &str)]) {
    if env
        .iter()
        .any(|(k, _)| *k == "MESH_PROXY_IDENTITY_TOKEN_FILE")
    {
        cmd.env_remove("MESH_PROXY_IDENTITY_TOKEN");
    }
    cmd.envs(env.iter().copied());
}

/// Fails the test if any recorded request failed, showing a few of them.
pub fn assert_none_failed(outcomes: &[meshctl::traffic::Outcome], during: &str) {
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed {during}: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(3)]
    );
}

/// A TrafficSplit document.
pub fn split(root: &str, backends: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: {root}-split\nspec:\n  service: {root}\n  backends:\n"
    );
    for (b, w) in backends {
        s.push_str(&format!("  - service: {b}\n    weight: {w}\n"));
    }
    s
}

/// An AuthorizationPolicy `name` letting only `identities` call `service`.
pub fn authorization_policy(name: &str, service: &str, identities: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\nspec:\n  service: {service}\n  allow:\n"
    );
    for id in identities {
        s.push_str(&format!("  - identity: {id}\n"));
    }
    s
}

/// A TrafficPolicy document for `service` with this YAML under `spec`
/// (indented two spaces, after `service`).
pub fn traffic_policy(service: &str, spec: &str) -> String {
    let mut s = format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: {service}-policy\nspec:\n  service: {service}\n"
    );
    for line in spec.lines() {
        s.push_str("  ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// Whether `observed` successes out of `n` fit probability `p` within 5
/// standard deviations of the binomial (false-failure odds ≈ 1 in 1.7 million).
pub fn within_binomial(observed: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (observed as f64 - mean).abs() <= 5.0 * sd
}

/// A gRPC channel to service `echo` through a sidecar's outbound listener
/// (the call goes to the sidecar; `:authority` names the service).
pub async fn echo_channel(outbound: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))
        .unwrap()
        .origin("http://echo".parse().unwrap())
        .connect()
        .await
        .unwrap()
}

/// echo v1 with an identity from `token` and a strict inbound (mTLS
/// only), ready in the registry; `extra` adds sidecar environment.
pub async fn strict_echo(mesh: &Mesh, token: &str, extra: &[(&str, &str)]) -> Instance {
    let mut env = vec![
        ("MESH_PROXY_IDENTITY_TOKEN", token),
        ("MESH_PROXY_INBOUND_MODE", "strict"),
    ];
    env.extend_from_slice(extra);
    let echo = mesh
        .instance_with("echo", "v1", "echo-v1-a", &[], None, &env)
        .await;
    mesh.wait_ready_endpoints("echo", &[("echo", 1)])
        .await
        .unwrap();
    echo
}

/// A control plane that issues certificates of `lifetime_secs` to the
/// `(bootstrap token, service account)` pairs given, all in namespace
/// default; the directory holds the tokens file.
pub async fn identity_mesh(
    tag: &str,
    lifetime_secs: &str,
    accounts: &[(&str, &str)],
) -> (Mesh, TempDir) {
    let dir = TempDir::new(&format!("{tag}-tokens"));
    let tokens = dir.0.join("tokens.yaml");
    let yaml: String = accounts
        .iter()
        .map(|(token, sa)| {
            format!("- {{token: {token}, namespace: default, serviceAccount: {sa}}}\n")
        })
        .collect();
    std::fs::write(&tokens, yaml).unwrap();
    let mesh = Mesh::start_with_args(
        tag,
        &[
            "--bootstrap-tokens",
            tokens.to_str().unwrap(),
            "--cert-lifetime-secs",
            lifetime_secs,
        ],
    )
    .await;
    (mesh, dir)
}

/// GET `path` of service `echo` through `proxy` with extra headers; asserts
/// 200 and returns the echo app's JSON answer.
pub async fn echo_json(
    proxy: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    use http_body_util::BodyExt;
    let mut req =
        http::Request::get(format!("http://{proxy}{path}")).header(http::header::HOST, "echo");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = meshctl::traffic::client()
        .request(
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// Retried requests the echo app at `app` has received (they carry
/// `mesh-retry-attempt`).
pub async fn retries_seen(app: SocketAddr) -> u64 {
    let (_, body) = meshctl::traffic::get(app, "/admin/stats").await.unwrap();
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    stats["by_method"]["retries"].as_u64().unwrap_or(0)
}

/// A sidecar's metric: the sum of every sample of `name` whose labels
/// include `labels` (`k="v"` pairs as they appear on /metrics).
pub async fn metric(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = meshctl::traffic::get(admin, "/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the control plane publishes a version after `before` (read
/// before the change), and `client` runs it.
pub async fn wait_for_version(mesh: &Mesh, client: &Client, before: u64) {
    let end = std::time::Instant::now() + DEADLINE;
    while mesh.version().await <= before {
        assert!(std::time::Instant::now() < end, "nothing new was published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    mesh.sync(client).await;
}

/// The TrafficSplit `bad_splits` breaks: echo all to v2.
pub const GOOD: &str = "apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata:
  name: echo-split
spec:
  service: echo
  backends:
  - service: echo-v1
    weight: 0
  - service: echo-v2
    weight: 100
";

/// Rule files every apply must refuse, each with what the refusal must
/// name: (file name, its text, fragments). `duplicate-root.yaml` is bad
/// only beside `GOOD`'s split in force.
pub fn bad_splits() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        (
            "malformed.yaml",
            GOOD.replace("  backends:\n", "  backends: [\n"),
            vec!["malformed.yaml:"],
        ),
        (
            "unknown-field.yaml",
            GOOD.replace("  service: echo\n", "  service: echo\n  colour: red\n"),
            vec!["unknown-field.yaml:", "colour"],
        ),
        (
            "negative.yaml",
            GOOD.replace("weight: 0", "weight: -10"),
            vec!["negative.yaml:", "spec.backends[0].weight", "negative"],
        ),
        (
            "fraction.yaml",
            GOOD.replace("weight: 100", "weight: 99.5"),
            vec![
                "fraction.yaml:",
                "spec.backends[1].weight",
                "not a whole number",
            ],
        ),
        (
            "zero.yaml",
            GOOD.replace("weight: 100", "weight: 0"),
            vec!["zero.yaml:", "spec.backends", "every weight is 0"],
        ),
        (
            "self.yaml",
            GOOD.replace("- service: echo-v1", "- service: echo"),
            vec!["self.yaml:", "spec.backends[0].service", "self-referential"],
        ),
        (
            "duplicate-root.yaml",
            GOOD.replace("name: echo-split", "name: another-split"),
            vec![
                "duplicate-root.yaml:",
                "spec.service",
                "already has TrafficSplit default/echo-split",
            ],
        ),
        (
            // A valid document next to a bad one: all or nothing.
            "mixed.yaml",
            format!(
                "{GOOD}---\n{}",
                GOOD.replace("name: echo-split", "name: b")
                    .replace("service: echo\n", "service: other\n")
                    .replace("weight: 100", "weight: x")
            ),
            vec!["mixed.yaml:", "spec.backends[1].weight", "not a number"],
        ),
        // Numbers are quoted as written, never as the parser read them.
        (
            "exponent.yaml",
            GOOD.replace("weight: 100", "weight: 1e2"),
            vec![
                "spec.backends[1].weight",
                "1e2 is not written in plain digits; write 100",
            ],
        ),
        (
            "octal.yaml",
            GOOD.replace("weight: 100", "weight: 0100"),
            vec![
                "spec.backends[1].weight",
                "0100 has a leading zero (YAML 1.1 reads it as octal); write 100",
            ],
        ),
        (
            "overflow.yaml",
            GOOD.replace("weight: 100", "weight: 18446744073709551616"),
            vec![
                "spec.backends[1].weight",
                "18446744073709551616 is too large",
            ],
        ),
        (
            "quoted.yaml",
            GOOD.replace("weight: 100", "weight: \"100\""),
            vec!["spec.backends[1].weight", "\"100\" is a quoted string"],
        ),
        // YAML problems in our words, not the parser's options'.
        (
            "duplicate-key.yaml",
            GOOD.replace(
                "  name: echo-split\n",
                "  name: echo-split\n  name: other\n",
            ),
            vec![
                "duplicate-key.yaml:5:",
                "name: \"name\" appears twice in one mapping",
            ],
        ),
        (
            "nodes.yaml",
            format!("{GOOD}{}", "  - [1, 2]\n".repeat(130_000)),
            vec!["too large: more than 250000 YAML nodes"],
        ),
        // The wrong file applied by mistake must not look like success.
        (
            "empty.yaml",
            String::new(),
            vec!["empty.yaml: no documents"],
        ),
        (
            "comments.yaml",
            "# nothing here yet\n\n# still nothing\n".into(),
            vec!["comments.yaml: no documents"],
        ),
        (
            "separators.yaml",
            "---\n---\n...\n".into(),
            vec!["separators.yaml: no documents"],
        ),
    ]
}

/// The phases of a `release history -o json`, newest first.
pub fn phases(history: &serde_json::Value) -> Vec<&str> {
    history
        .as_array()
        .expect("a history is a list")
        .iter()
        .map(|r| r["phase"].as_str().expect("each release has a phase"))
        .collect()
}
