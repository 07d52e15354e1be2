//! "Pods" for the interception tests (root only): each a network namespace
//! with its app, its sidecar (as uid 2102, which the redirect rules let
//! out) and the nat rules `mesh-proxy init` writes in it, joined by veth
//! to a hub namespace that routes between them and runs the control plane
//! in local mode with virtual IPs. Only namespaces this test made, never
//! the machine's own network.

#![allow(dead_code, unreachable_pub)]

use super::netns::{NetNs, link};
use super::tokens::Tokens;
use meshctl::procs::{Proc, binary};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The sidecar's uid in every pod.
pub const PROXY_UID: &str = "2102";
const DEADLINE: Duration = Duration::from_secs(20);
/// A command's prefix that runs the rest as the sidecar's uid.
pub const AS_PROXY: [&str; 7] = [
    "setpriv",
    "--reuid",
    PROXY_UID,
    "--regid",
    PROXY_UID,
    "--clear-groups",
    "--",
];

/// The hub: routes between pods, runs mesh-control.
pub struct Hub {
    pub ns: NetNs,
    pub control: Proc,
    /// The gRPC port mesh-control listens on (every hub address).
    pub grpc_port: u16,
    /// The mesh's roots, PEM.
    pub roots: String,
    pub tokens: Tokens,
    pub logs: PathBuf,
    pods: usize,
}

/// One pod: its namespace, address, and what runs in it.
pub struct Pod {
    pub ns: NetNs,
    /// Its address.
    pub ip: String,
    /// The hub's address on its link (its default route, and the control
    /// plane's address from it).
    pub gateway: String,
    pub procs: Vec<Proc>,
}

/// `cmd` run inside `ns`, as a tokio command for `Proc::spawn`.
pub fn in_ns(ns: &NetNs, args: &[&str]) -> tokio::process::Command {
    tokio::process::Command::from(ns.command(args))
}

impl Hub {
    /// Starts the hub with mesh-control seeded from `mesh_file` (YAML).
    pub async fn start(dir: &Path, mesh_file: &str) -> Hub {
        meshctl::procs::ensure_built(!cfg!(debug_assertions));
        let ns = NetNs::new("hub");
        ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        let logs = dir.join("logs");
        let tokens = Tokens::new(&dir.join("tokens.yaml"), String::new());
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, mesh_file).unwrap();
        let state = dir.join("state");
        let bin = binary("mesh-control").display().to_string();
        let mut cmd = in_ns(
            &ns,
            &[
                &bin,
                "--grpc-addr",
                "0.0.0.0:0",
                "--http-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--state-dir",
                state.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--bootstrap-tokens",
                tokens.file().to_str().unwrap(),
            ],
        );
        cmd.env("MESH_CONTROL_LOG", "info");
        let control = Proc::spawn("mesh-control", cmd, &logs)
            .await
            .expect("mesh-control starts in the hub");
        let http = control.addr("http").unwrap();
        let hub = Hub {
            grpc_port: control.addr("grpc").unwrap().port(),
            roots: std::fs::read_to_string(control.roots().unwrap()).unwrap(),
            ns,
            control,
            tokens,
            logs,
            pods: 0,
        };
        hub.wait_http(&hub.ns, &format!("http://{http}/ready"))
            .await;
        hub
    }

    /// Waits (bounded) until `url` answers 2xx from inside `ns`.
    pub async fn wait_http(&self, ns: &NetNs, url: &str) {
        self.wait_http_within(ns, url, DEADLINE).await
    }

    /// `wait_http` with a deadline of its own.
    pub async fn wait_http_within(&self, ns: &NetNs, url: &str, deadline: Duration) {
        let end = std::time::Instant::now() + deadline;
        loop {
            let out = ns.output(&["curl", "-sf", "-m", "1", "-o", "/dev/null", url]);
            if out.status.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "{url} in {} never answered; logs in {}",
                ns.name,
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new pod linked to the hub, its default route through it, its
    /// redirect rules written before anything runs in it (as mesh-init is
    /// a pod's first init container: connections opened before the nat
    /// table exists would be rewritten mid-flight).
    pub fn pod(&mut self, what: &str) -> Pod {
        let pod = self.bare_pod(what);
        let bin = binary("mesh-proxy").display().to_string();
        pod.ns.ok(&[
            &bin,
            "init",
            "--proxy-uid",
            PROXY_UID,
            "--skip-inbound-ports",
            "4191",
        ]);
        pod
    }

    /// A pod with no redirect rules (for proxies that are not mesh's).
    pub fn bare_pod(&mut self, what: &str) -> Pod {
        self.pods += 1;
        let n = self.pods;
        let ns = NetNs::new(what);
        let (gateway, ip) = (format!("10.77.{n}.1"), format!("10.77.{n}.2"));
        link(&self.ns, &format!("{gateway}/24"), &ns, &format!("{ip}/24"));
        ns.ok(&["ip", "route", "add", "default", "via", &gateway]);
        Pod {
            ns,
            ip,
            gateway,
            procs: Vec::new(),
        }
    }

    /// Starts `pod`'s sidecar (service `service`, version `version`, its
    /// app at `app` if it has one) and waits until it is ready.
    pub async fn sidecar(
        &self,
        pod: &mut Pod,
        service: &str,
        version: &str,
        app: Option<&str>,
        env: &[(&str, &str)],
    ) {
        self.sidecar_under(pod, service, version, app, env, &[])
            .await
    }

    /// `sidecar`, with the sidecar run under `wrapper` (a profiler such as
    /// `valgrind --tool=callgrind`), still as the sidecar's uid.
    pub async fn sidecar_under(
        &self,
        pod: &mut Pod,
        service: &str,
        version: &str,
        app: Option<&str>,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) {
        let bin = binary("mesh-proxy").display().to_string();
        let id = format!("{service}-{version}-{}", pod.ip.replace('.', "-"));
        let mut args = AS_PROXY.to_vec();
        args.extend_from_slice(wrapper);
        args.push(&bin);
        let mut cmd = in_ns(&pod.ns, &args);
        cmd.env("MESH_PROXY_SERVICE", service)
            .env("MESH_PROXY_VERSION", version)
            .env("MESH_PROXY_INSTANCE_ID", &id)
            .env(
                "MESH_PROXY_CONTROL_ADDR",
                format!("https://{}:{}", pod.gateway, self.grpc_port),
            )
            // The PEM itself, as injection puts it in a pod.
            .env("MESH_PROXY_CONTROL_ROOTS", &self.roots)
            .env(
                "MESH_PROXY_IDENTITY_TOKEN",
                self.tokens.token("default", service),
            )
            .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:4140")
            .env("MESH_PROXY_INBOUND_ADDR", "0.0.0.0:4143")
            .env("MESH_PROXY_ADMIN_ADDR", "0.0.0.0:4191")
            .env("MESH_PROXY_ADVERTISE_ADDR", format!("{}:4143", pod.ip))
            .env("MESH_PROXY_RECONNECT_MAX_MS", "500")
            .env("MESH_PROXY_LOG", "info,mesh_proxy=debug");
        if let Some(app) = app {
            cmd.env("MESH_PROXY_APP_ADDR", app);
        }
        cmd.envs(env.iter().copied());
        let proc = Proc::spawn(&format!("{id}-proxy"), cmd, &self.logs)
            .await
            .expect("sidecar starts");
        pod.procs.push(proc);
        // A profiled sidecar starts many times slower.
        let deadline = if wrapper.is_empty() {
            DEADLINE
        } else {
            DEADLINE * 4
        };
        self.wait_http_within(&pod.ns, "http://127.0.0.1:4191/ready", deadline)
            .await;
    }

    /// Starts mesh-echo in `pod` on `addr` (the app's port 8080 by convention).
    pub async fn echo(&self, pod: &mut Pod, version: &str, addr: &str) {
        let bin = binary("mesh-echo").display().to_string();
        let id = format!("echo-{version}-{}", pod.ip.replace('.', "-"));
        let args = vec![
            bin.as_str(),
            "--addr",
            addr,
            "--service",
            "echo",
            "--version",
            version,
            "--instance",
            &id,
        ];
        let proc = Proc::spawn(&format!("{id}-app"), in_ns(&pod.ns, &args), &self.logs)
            .await
            .expect("echo starts");
        pod.procs.push(proc);
    }

    /// tests/tools/tcp_peer.py `args` in `ns`, once it says it listens.
    pub async fn tcp_peer(&self, ns: &NetNs, name: &str, args: &[&str]) -> Proc {
        // From the tests crate or the benches one alike.
        let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tools/tcp_peer.py");
        let mut all = vec!["python3", "-u", tool];
        all.extend_from_slice(args);
        let proc = Proc::spawn_plain(name, in_ns(ns, &all), &self.logs).expect("python3 starts");
        let end = std::time::Instant::now() + DEADLINE;
        // It says "ready" on stdout, which spawn_plain sends to its log.
        while !std::fs::read_to_string(&proc.log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(std::time::Instant::now() < end, "{name} never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proc
    }

    /// Waits (bounded) until the sidecar in `pod` has `service` with an
    /// endpoint at each of `ips` (their inbound port); its virtual IP.
    pub async fn wait_service(&self, pod: &Pod, service: &str, ips: &[&str]) -> String {
        let end = std::time::Instant::now() + DEADLINE;
        loop {
            let out = pod.ns.output(&[
                "curl",
                "-sf",
                "-m",
                "1",
                "http://127.0.0.1:4191/config_dump",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let vip = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|d| {
                    d["services"]
                        .as_array()?
                        .iter()
                        .find(|s| s["name"] == service)?["virtual_ips"][0]
                        .as_str()
                        .map(String::from)
                });
            if let Some(vip) = vip
                && ips
                    .iter()
                    .all(|ip| text.contains(&format!("\"{ip}:4143\"")))
            {
                return vip;
            }
            assert!(
                std::time::Instant::now() < end,
                "{service} never had endpoints {ips:?} in {}: {text}",
                pod.ns.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
