//! Runs mesh processes as children: spawn, read the one JSON line each
//! prints with the addresses it bound, wait for readiness over HTTP with a
//! bounded deadline, and stop them with SIGTERM (then SIGKILL). Used by
//! `meshctl up`, `meshctl demo` and the end-to-end tests alike.

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to print its bound addresses.
const BIND_DEADLINE: Duration = Duration::from_secs(30);

/// A running child process.
pub struct Proc {
    /// Name for messages and the log file.
    pub name: String,
    /// The JSON line it printed on startup.
    pub bound: serde_json::Value,
    /// Where its stderr goes.
    pub log: PathBuf,
    child: Child,
    /// Its process group (it leads its own), swept on stop and drop so
    /// grandchildren such as nginx workers never outlive it.
    group: Option<Pid>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// Finds a mesh binary: next to the running executable first (a cargo
/// target dir or an install dir), then on PATH.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for candidate in [dir.join(name), dir.join("..").join(name)] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(name)
}

impl Proc {
    /// Spawns `cmd`, sending stderr to `log_dir/<name>.log`, and waits for its
    /// bound-addresses line.
    pub async fn spawn(name: &str, cmd: Command, log_dir: &Path) -> Result<Proc> {
        let (mut child, log) = start(name, cmd, log_dir, Stdio::piped())?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(BIND_DEADLINE, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            _ => {
                let status = child.try_wait().ok().flatten();
                bail!(
                    "{name} did not report its addresses (exit: {status:?}); last log lines:\n{}",
                    tail(&log, 15)
                );
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe;
        // what follows the addresses (sidecar access logs) goes to
        // `<name>.out` next to its log.
        let out = log_dir.join(format!("{name}.out"));
        tokio::spawn(async move {
            let mut file = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if file.is_none() {
                    file = tokio::fs::File::create(&out).await.ok();
                }
                if let Some(f) = &mut file {
                    use tokio::io::AsyncWriteExt;
                    let _ = f.write_all(format!("{line}\n").as_bytes()).await;
                }
            }
        });
        let bound =
            serde_json::from_str(&line).with_context(|| format!("{name} printed {line:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            bound,
            log,
            group: group_of(&child),
            child,
        })
    }

    /// Spawns an app that prints nothing we read; its output goes to its log.
    pub fn spawn_plain(name: &str, cmd: Command, log_dir: &Path) -> Result<Proc> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let (child, log) = start(
            name,
            cmd,
            log_dir,
            Stdio::from(std::fs::File::create(&log)?),
        )?;
        Ok(Proc {
            name: name.to_string(),
            bound: serde_json::Value::Null,
            log,
            group: group_of(&child),
            child,
        })
    }

    /// The admin API of a mesh-control process, with the operator
    /// credentials it wrote (from its bound line).
    pub fn control(&self) -> Result<crate::client::Control> {
        let credentials = self
            .bound
            .get("credentials")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("{} reported no credentials: {}", self.name, self.bound))?;
        Ok(crate::client::Control::new(
            format!("https://{}", self.addr("admin")?),
            Path::new(credentials).join("admin"),
        ))
    }

    /// The trust anchors a control plane reported: what its sidecars know
    /// it by (`MESH_PROXY_CONTROL_ROOTS`).
    pub fn roots(&self) -> Result<PathBuf> {
        self.bound
            .get("roots")
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("{} reported no roots: {}", self.name, self.bound))
    }

    /// An address from the bound line.
    pub fn addr(&self, key: &str) -> Result<SocketAddr> {
        self.bound
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("{} reported no {key:?} address: {}", self.name, self.bound))?
            .parse()
            .with_context(|| format!("{}'s {key} address", self.name))
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends a signal, if the process still runs.
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Waits for exit up to `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        let status = match self.wait(grace).await {
            Some(st) => Some(st),
            None => {
                let _ = self.child.start_kill();
                self.wait(Duration::from_secs(5)).await
            }
        };
        self.sweep();
        status
    }

    /// Kills whatever is left of its process group.
    fn sweep(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

fn group_of(child: &Child) -> Option<Pid> {
    // `start` puts every child in a new group led by itself.
    child.id().map(|id| Pid::from_raw(id as i32))
}

fn start(name: &str, mut cmd: Command, log_dir: &Path, stdout: Stdio) -> Result<(Child, PathBuf)> {
    std::fs::create_dir_all(log_dir)?;
    let log = log_dir.join(format!("{name}.log"));
    let err_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("creating {}", log.display()))?;
    // Own process group: a Ctrl-C in the terminal reaches meshctl only, which
    // then stops the children in order.
    cmd.stdout(stdout)
        .stderr(err_file)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} ({:?})", cmd.as_std().get_program()))?;
    Ok((child, log))
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `http://addr{path}` until it answers 200, or fails after `deadline`.
pub async fn wait_ready(addr: SocketAddr, path: &str, deadline: Duration) -> Result<()> {
    wait_ready_watched(addr, path, deadline, None).await
}

/// `wait_ready`, printing progress for a person watching once it is slow.
pub async fn wait_ready_watched(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
    mut watch: Option<crate::progress::Slow>,
) -> Result<()> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let last = match crate::traffic::get(addr, path).await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
            Err(e) => e.to_string(),
        };
        if let Some(w) = &mut watch {
            w.tick(|| last.clone());
        }
        if tokio::time::Instant::now() >= end {
            bail!("http://{addr}{path} not ready after {deadline:?}: {last}");
        }
        // Polling interval of a readiness wait, not a stand-in for one.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the sidecar whose admin listens on `admin` runs config
/// version `min_version` or newer.
pub async fn wait_config(admin: SocketAddr, min_version: u64, deadline: Duration) -> Result<()> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let (_, body) = crate::traffic::get(admin, "/config_dump").await?;
        let dump: serde_json::Value = serde_json::from_str(&body)?;
        let v: u64 = dump["version"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if v >= min_version {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            bail!("sidecar {admin} still at config {v} after {deadline:?}; wanted {min_version}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Builds the mesh binaries when run under cargo (tests, `cargo run` of the
/// benches), so those never exercise a stale binary. A no-op elsewhere.
pub fn ensure_built(release: bool) {
    build(release, false);
}

/// `ensure_built` for a person watching (`meshctl demo`/`up` under `cargo
/// run`): says what it builds and lets cargo show its progress.
pub fn ensure_built_showing_progress(release: bool) {
    build(release, true);
}

fn build(release: bool, show: bool) {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let Ok(cargo) = std::env::var("CARGO") else {
            return;
        };
        let mut cmd = std::process::Command::new(cargo);
        // The whole workspace's binaries, as `cargo build --bins` would: a
        // narrower package set resolves features differently and recompiles
        // shared dependencies (which is why the README builds this way
        // itself rather than through `cargo run -p meshctl`).
        cmd.args(["build", "--workspace", "--bins"]);
        if show {
            println!(
                "▶ building the binaries it runs (cargo build{} --workspace --bins)…",
                if release { " --release" } else { "" }
            );
        } else {
            cmd.arg("--quiet");
        }
        // What cargo set for the test or bench running now describes that
        // crate, not the build: ring's build script tracks
        // CARGO_MANIFEST_DIR, so passing it on would rebuild ring (and all
        // above it) here, and again at the next plain `cargo build`.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k == "CARGO_MANIFEST_DIR"
                || k == "CARGO_CRATE_NAME"
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "CARGO_TARGET_TMPDIR"
                || k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
            {
                cmd.env_remove(k.as_ref());
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the mesh binaries");
        assert!(status.success(), "building the mesh binaries failed");
    });
}

/// How to start a mesh-control child process.
#[derive(Debug, Clone)]
pub struct ControlPlane<'a> {
    /// gRPC listen address (`127.0.0.1:0` for any free port).
    pub grpc_addr: &'a str,
    /// mTLS admin API listen address (`127.0.0.1:0` for any free port).
    pub admin_addr: &'a str,
    /// State directory.
    pub state_dir: &'a Path,
    /// Mesh file or directory to seed it with.
    pub config: Option<&'a Path>,
    /// Heartbeat interval it tells sidecars, when not the default.
    pub heartbeat_ms: Option<u64>,
    /// Log filter (`MESH_CONTROL_LOG`).
    pub log: &'a str,
    /// Further flags, e.g. `--bootstrap-tokens FILE`.
    pub extra_args: &'a [String],
}

impl ControlPlane<'_> {
    /// Starts mesh-control (HTTP on a free port) and waits until it is ready.
    pub async fn start(&self, log_dir: &Path) -> Result<Proc> {
        let mut cmd = Command::new(binary("mesh-control"));
        cmd.args(["--grpc-addr", self.grpc_addr, "--http-addr", "127.0.0.1:0"])
            .args(["--admin-addr", self.admin_addr])
            .arg("--state-dir")
            .arg(self.state_dir)
            .env("MESH_CONTROL_LOG", self.log);
        if let Some(c) = self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(self.extra_args);
        if let Some(ms) = self.heartbeat_ms {
            cmd.env("MESH_CONTROL_HEARTBEAT_MS", ms.to_string());
        }
        let p = Proc::spawn("mesh-control", cmd, log_dir).await?;
        wait_ready(p.addr("http")?, "/ready", BIND_DEADLINE).await?;
        Ok(p)
    }
}
