//! `meshctl up`: runs a whole local mesh from one mesh file: the control
//! plane, then each Workload replica's app and sidecar, as child processes.

use crate::procs::{ControlPlane, Proc, binary, wait_ready_watched};
use anyhow::{Context, Result, bail};
use mesh_control::manifest::{Document, workload::Workload};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// How long the whole mesh may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The gRPC address `meshctl up` gives the control plane (sidecars' side):
/// any free port, since `up` starts every sidecar itself.
pub const DEFAULT_GRPC: &str = "127.0.0.1:0";

/// Where to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Mesh file or directory.
    pub file: PathBuf,
    /// Control plane state; a fresh temporary directory when None.
    pub state_dir: Option<PathBuf>,
    /// Control plane gRPC address.
    pub grpc_addr: String,
    /// mTLS admin API listen address.
    pub admin_addr: String,
    /// Where process logs go.
    pub log_dir: PathBuf,
}

/// One replica of a workload.
pub struct Replica {
    /// Workload name.
    pub workload: String,
    /// Service.
    pub service: String,
    /// Version.
    pub version: String,
    /// Instance id.
    pub instance_id: String,
    /// The app, unless the workload is sidecar-only.
    pub app: Option<(Proc, String)>,
    /// Its sidecar.
    pub sidecar: Proc,
}

/// A running mesh.
pub struct Mesh {
    /// The control plane.
    pub control: Proc,
    /// Every replica.
    pub replicas: Vec<Replica>,
    /// Log directory.
    pub log_dir: PathBuf,
    _state: Option<TempDir>,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> Result<u16> {
    // Bind-and-release: the app binds it a moment later. Good enough for a
    // local dev mesh; tests and benches use apps that report their own port.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn substitute(arg: &str, port: u16, w: &Workload, instance: &str) -> String {
    arg.replace("{port}", &port.to_string())
        .replace("{addr}", &format!("127.0.0.1:{port}"))
        .replace("{service}", &w.spec.service)
        .replace("{version}", &w.spec.version)
        .replace("{instance}", instance)
}

impl Mesh {
    /// Starts everything and waits until every sidecar is ready.
    pub async fn start(opts: &Options) -> Result<Mesh> {
        let docs = mesh_control::app::load_documents(&opts.file)?;
        let workloads: Vec<&Workload> = docs
            .iter()
            .filter_map(|d| match &d.doc {
                Document::Workload(w) => Some(w),
                _ => None,
            })
            .collect();
        if workloads.is_empty() {
            bail!(
                "{}: no Workload documents; nothing to run",
                opts.file.display()
            );
        }
        let (state_dir, temp) = match &opts.state_dir {
            Some(d) => (d.clone(), None),
            None => {
                let d = std::env::temp_dir().join(format!("mesh-up-{}", std::process::id()));
                (d.clone(), Some(TempDir(d)))
            }
        };
        // One bootstrap token per workload: each sidecar proves its identity
        // with it and gets a SPIFFE certificate from the control plane's CA.
        let tokens: Vec<String> = workloads.iter().map(|_| token()).collect::<Result<_>>()?;
        let tokens_file = state_dir.join("bootstrap-tokens.yaml");
        let listing: String = workloads
            .iter()
            .zip(&tokens)
            .map(|(w, t)| {
                format!(
                    "- {{token: {t}, namespace: {}, serviceAccount: {}}}\n",
                    w.metadata.namespace,
                    account(w)
                )
            })
            .collect();
        write_secret(&tokens_file, &listing)?;
        let control = ControlPlane {
            grpc_addr: &opts.grpc_addr,
            admin_addr: &opts.admin_addr,
            state_dir: &state_dir,
            config: Some(&opts.file),
            heartbeat_ms: None,
            log: "info",
            extra_args: &[
                "--bootstrap-tokens".into(),
                tokens_file.display().to_string(),
            ],
        }
        .start(&opts.log_dir)
        .await?;
        // Sidecars reach the control plane over TLS and know it by these roots.
        let control_url = format!("https://{}", control.addr("grpc")?);
        let roots = control.roots()?;
        let mut replicas = Vec::new();
        for (w, token) in workloads.iter().zip(&tokens) {
            for i in 0..w.spec.replicas {
                replicas
                    .push(start_replica(w, i, (&control_url, &roots), token, &opts.log_dir).await?);
            }
        }
        for r in &replicas {
            let watch = crate::progress::Slow::new(format!("the sidecar of {}", r.instance_id));
            wait_ready_watched(
                r.sidecar.addr("admin")?,
                "/ready",
                READY_DEADLINE,
                Some(watch),
            )
            .await
            .with_context(|| format!("sidecar of {}", r.instance_id))?;
        }
        Ok(Mesh {
            control,
            replicas,
            log_dir: opts.log_dir.clone(),
            _state: temp,
        })
    }

    /// The control plane's admin API, with the operator's credentials.
    pub fn control(&self) -> Result<crate::client::Control> {
        self.control.control()
    }

    /// The first replica of a workload.
    pub fn replica(&self, workload: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.workload == workload)
    }

    /// A table of where everything listens.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let grpc = self
            .control
            .addr("grpc")
            .map(|a| a.to_string())
            .unwrap_or_default();
        let http = self
            .control
            .addr("http")
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admin = self
            .control
            .addr("admin")
            .map(|a| a.to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "control plane   grpc {grpc}   admin (mTLS) {admin}   http {http}\n\n"
        ));
        out.push_str(&format!(
            "{:<12} {:<14} {:<8} {:<22} {:<22} {:<22} {:<22}\n",
            "WORKLOAD",
            "INSTANCE",
            "VERSION",
            "APP",
            "OUTBOUND (app → mesh)",
            "INBOUND (mesh → app)",
            "ADMIN"
        ));
        for r in &self.replicas {
            let get = |k: &str| {
                r.sidecar
                    .addr(k)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "-".into())
            };
            out.push_str(&format!(
                "{:<12} {:<14} {:<8} {:<22} {:<22} {:<22} {:<22}\n",
                r.workload,
                r.instance_id,
                if r.version.is_empty() {
                    "-"
                } else {
                    &r.version
                },
                r.app.as_ref().map(|(_, a)| a.as_str()).unwrap_or("-"),
                get("outbound"),
                get("inbound"),
                get("admin"),
            ));
        }
        out.push_str(&format!("\nlogs: {}\n", self.log_dir.display()));
        out
    }

    /// Stops sidecars and apps, then the control plane.
    pub async fn shutdown(mut self) {
        let grace = Duration::from_secs(15);
        let stops = self.replicas.iter_mut().map(|r| async move {
            r.sidecar.stop(grace).await;
            if let Some((app, _)) = &mut r.app {
                app.stop(grace).await;
            }
        });
        futures::future::join_all(stops).await;
        self.control.stop(grace).await;
    }
}

/// A bootstrap token: 128 bits from the kernel's CSPRNG, hex.
fn token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The service account a Workload's replicas run as.
fn account(w: &Workload) -> &str {
    w.spec.service_account.as_deref().unwrap_or(&w.spec.service)
}

async fn start_replica(
    w: &Workload,
    i: u32,
    (control_url, roots): (&str, &Path),
    token: &str,
    log_dir: &Path,
) -> Result<Replica> {
    let instance_id = format!("{}-{i}", w.metadata.name);
    let app = if w.spec.command.is_empty() {
        None
    } else {
        let port = free_port()?;
        let args: Vec<String> = w
            .spec
            .command
            .iter()
            .map(|a| substitute(a, port, w, &instance_id))
            .collect();
        let program = if args[0].contains('/') {
            PathBuf::from(&args[0])
        } else {
            binary(&args[0])
        };
        let mut cmd = Command::new(program);
        cmd.args(&args[1..]).env("PORT", port.to_string());
        let proc = Proc::spawn_plain(&format!("{instance_id}-app"), cmd, log_dir)?;
        Some((proc, format!("127.0.0.1:{port}")))
    };
    let mut cmd = Command::new(binary("mesh-proxy"));
    cmd.env("MESH_PROXY_SERVICE", &w.spec.service)
        .env("MESH_PROXY_VERSION", &w.spec.version)
        .env("MESH_PROXY_NAMESPACE", &w.metadata.namespace)
        .env("MESH_PROXY_INSTANCE_ID", &instance_id)
        .env("MESH_PROXY_CONTROL_ADDR", control_url)
        .env("MESH_PROXY_CONTROL_ROOTS", roots)
        .env("MESH_PROXY_SERVICE_ACCOUNT", account(w))
        .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_IDENTITY_TOKEN", token)
        // A local mesh is watched by a person (and a release's checks):
        // telemetry every second rather than the sidecar's default 5 s.
        .env("MESH_PROXY_TELEMETRY_INTERVAL_MS", "1000");
    if let Some((_, addr)) = &app {
        cmd.env("MESH_PROXY_APP_ADDR", addr);
    }
    if let Some(h) = &w.spec.health {
        cmd.env("MESH_PROXY_HEALTH_PATH", &h.path);
        if let Some(ms) = h.interval_ms {
            cmd.env("MESH_PROXY_HEALTH_INTERVAL_MS", ms.to_string());
        }
        if let Some(n) = h.failure_threshold {
            cmd.env("MESH_PROXY_HEALTH_FAILURE_THRESHOLD", n.to_string());
        }
        if let Some(n) = h.success_threshold {
            cmd.env("MESH_PROXY_HEALTH_SUCCESS_THRESHOLD", n.to_string());
        }
    }
    let sidecar = Proc::spawn(&format!("{instance_id}-proxy"), cmd, log_dir).await?;
    Ok(Replica {
        workload: w.metadata.name.clone(),
        service: w.spec.service.clone(),
        version: w.spec.version.clone(),
        instance_id,
        app,
        sidecar,
    })
}
