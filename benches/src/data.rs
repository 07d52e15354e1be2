//! Data-plane benchmarks: the same echo workload reached four ways, each
//! measured at fixed rates and flat out, in one run so ratios are fair:
//!
//!   direct   client → echo
//!   mesh     client → client sidecar → server sidecar → echo   (plaintext)
//!   nginx    client → nginx → nginx → echo
//!   haproxy  client → haproxy → haproxy → echo

use crate::load::{self, Run};
use crate::peers::{self, Hop};
use crate::sys;
use anyhow::{Context, Result};
use meshctl::procs::{ControlPlane, Proc, binary, wait_ready};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

/// Connections, as in the peer figures (shared/PEERS.md).
pub(crate) const CONNS: usize = 16;

/// A way to reach echo.
pub(crate) struct Topology {
    pub(crate) name: &'static str,
    /// HTTP/1.1 entry point.
    http: SocketAddr,
    /// h2c/gRPC entry point.
    grpc: SocketAddr,
    /// Host / :authority the client must send.
    host: Option<&'static str>,
    /// Proxy processes (two per pair), for CPU and memory.
    pub(crate) proxies: Vec<Vec<u32>>,
    _procs: Vec<Proc>,
}

/// Measurements of one topology under one load.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Measured {
    pub(crate) run: Run,
    /// CPU seconds per 1,000 requests, per proxy (mean of the pair).
    pub(crate) cpu_per_1k: f64,
}

impl Topology {
    /// Runs HTTP/1.1 load (`rate` 0: flat out) and accounts the proxies' CPU.
    pub(crate) async fn http(&self, rate: u64, duration: Duration) -> Result<Measured> {
        let url = format!("http://{}/", self.http);
        self.measure(load::oha(None, &url, self.host, rate, CONNS, duration))
            .await
    }

    /// Runs gRPC unary load and accounts the proxies' CPU.
    pub(crate) async fn grpc(&self, rate: u64, duration: Duration) -> Result<Measured> {
        self.measure(load::grpc(self.grpc, self.host, rate, CONNS, duration))
            .await
    }

    async fn measure(
        &self,
        run: impl std::future::Future<Output = Result<Run>>,
    ) -> Result<Measured> {
        let before: Vec<f64> = self.proxies.iter().map(|p| sys::cpu_seconds(p)).collect();
        let run = run
            .await
            .with_context(|| format!("load against {}", self.name))?;
        let after: Vec<f64> = self.proxies.iter().map(|p| sys::cpu_seconds(p)).collect();
        let per_proxy = if self.proxies.is_empty() {
            0.0
        } else {
            after.iter().zip(&before).map(|(a, b)| a - b).sum::<f64>() / self.proxies.len() as f64
        };
        Ok(Measured {
            cpu_per_1k: per_proxy / (run.requests.max(1) as f64 / 1000.0),
            run,
        })
    }

    /// The HTTP/1.1 entry point.
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub(crate) fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// Stops every process gracefully (SIGTERM, the client sidecar first),
    /// so a profiler around one writes its results.
    pub(crate) async fn stop(mut self) {
        while let Some(mut p) = self._procs.pop() {
            p.stop(Duration::from_secs(60)).await;
        }
    }

    /// Peak RSS of each proxy, MiB.
    pub(crate) fn peak_rss(&self) -> Vec<f64> {
        self.proxies.iter().map(|p| sys::peak_rss_mib(p)).collect()
    }
}

/// The echo workload: HTTP and gRPC on one port, 1 KiB bodies.
pub(crate) async fn echo(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(binary("mesh-echo"));
    cmd.args(["--response-bytes", "1024", "--instance", "echo-bench"]);
    let p = Proc::spawn("echo", cmd, dir).await?;
    let addr = p.addr("addr")?;
    Ok((p, addr))
}

pub(crate) fn direct(echo: SocketAddr) -> Topology {
    Topology {
        name: "direct",
        http: echo,
        grpc: echo,
        host: None,
        proxies: Vec::new(),
        _procs: Vec::new(),
    }
}

/// A sidecar pair. Both sidecars always hold workload certificates (the
/// control plane serves nobody without one); with `mtls` the server's
/// inbound is strict, without it the server registers as a plaintext
/// endpoint and a TrafficPolicy allows plaintext to echo, so the hop
/// between the sidecars is plaintext (the row to hold against nginx). `proxy` is the mesh-proxy binary
/// (another build's, to compare two versions in one run), named `name`;
/// the client sidecar runs under `client_wrapper` (say `valgrind
/// --tool=callgrind …`) when it is not empty.
pub(crate) async fn mesh(
    dir: &Path,
    echo: SocketAddr,
    mtls: bool,
    proxy: &Path,
    name: &'static str,
    env: &[(&str, &str)],
    client_wrapper: &[String],
) -> Result<Topology> {
    std::fs::create_dir_all(dir)?;
    const SERVER_TOKEN: &str = "bench-echo-token-0123456789abcdef";
    const CLIENT_TOKEN: &str = "bench-client-token-0123456789abcd";
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "- {{token: {SERVER_TOKEN}, namespace: default, serviceAccount: echo}}\n\
             - {{token: {CLIENT_TOKEN}, namespace: default, serviceAccount: client}}\n"
        ),
    )?;
    let extra_args = vec![
        "--bootstrap-tokens".to_string(),
        tokens.display().to_string(),
    ];
    let control = ControlPlane {
        grpc_addr: "127.0.0.1:0",
        admin_addr: "127.0.0.1:0",
        state_dir: &dir.join("state"),
        config: None,
        heartbeat_ms: None,
        log: "warn",
        extra_args: &extra_args,
    }
    .start(dir)
    .await?;
    let url = format!("https://{}", control.addr("grpc")?);
    let roots = control.roots()?;
    if !mtls {
        allow_plaintext_to_echo(&control).await?;
    }
    let sidecar = |id: &str, service: &str, wrapper: &[String]| {
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(proxy);
                c
            }
            None => Command::new(proxy),
        };
        cmd.env("MESH_PROXY_SERVICE", service)
            .env("MESH_PROXY_INSTANCE_ID", id)
            .env("MESH_PROXY_CONTROL_ADDR", &url)
            .env("MESH_PROXY_CONTROL_ROOTS", &roots)
            .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESH_PROXY_LOG", "warn")
            .envs(env.iter().copied());
        cmd
    };
    let mut server_cmd = sidecar("echo-0", "echo", &[]);
    server_cmd.env("MESH_PROXY_APP_ADDR", echo.to_string());
    let mut client_cmd = sidecar("client-0", "client", client_wrapper);
    server_cmd
        .env("MESH_PROXY_IDENTITY_TOKEN", SERVER_TOKEN)
        .env(
            "MESH_PROXY_INBOUND_MODE",
            if mtls { "strict" } else { "plaintext" },
        );
    client_cmd.env("MESH_PROXY_IDENTITY_TOKEN", CLIENT_TOKEN);
    let server = Proc::spawn("server-sidecar", server_cmd, dir).await?;
    let client = Proc::spawn("client-sidecar", client_cmd, dir).await?;
    let admin = client.addr("admin")?;
    wait_ready(admin, "/ready", Duration::from_secs(20)).await?;
    // Wait until the client sidecar knows echo's endpoint.
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, dump) = meshctl::traffic::get(admin, "/config_dump").await?;
        if dump.contains(&server.addr("inbound")?.to_string()) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < end,
            "client sidecar never learned echo's endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = client.addr("outbound")?;
    Ok(Topology {
        name,
        http: out,
        grpc: out,
        host: Some("echo"),
        proxies: vec![
            vec![client.pid().context("client sidecar")?],
            vec![server.pid().context("server sidecar")?],
        ],
        _procs: vec![control, server, client],
    })
}

/// Applies a TrafficPolicy that lets meshed clients reach echo's
/// plaintext endpoint (without it they refuse to: no identity to verify).
async fn allow_plaintext_to_echo(control: &Proc) -> Result<()> {
    let mut admin = meshctl::client::admin(&control.control()?).await?;
    let policy = "apiVersion: mesh.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: echo-plaintext\nspec:\n  service: echo\n  tls:\n    mode: permissive\n";
    let applied = admin
        .apply(mesh_proto::v1::ApplyRequest {
            files: vec![mesh_proto::v1::RuleFile {
                filename: "echo-plaintext.yaml".into(),
                content: policy.into(),
            }],
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        applied.problems.is_empty(),
        "the plaintext policy was refused: {:?}",
        applied.problems
    );
    Ok(())
}

/// A two-hop pair of a peer proxy.
pub(crate) async fn pair(dir: &Path, echo: SocketAddr, kind: &'static str) -> Result<Topology> {
    std::fs::create_dir_all(dir)?;
    let (a_http, a_grpc, b_http, b_grpc) = (
        peers::free_port()?,
        peers::free_port()?,
        peers::free_port()?,
        peers::free_port()?,
    );
    let a = Hop {
        http: a_http,
        grpc: a_grpc,
        http_up: b_http,
        grpc_up: b_grpc,
    };
    let b = Hop {
        http: b_http,
        grpc: b_grpc,
        http_up: echo.port(),
        grpc_up: echo.port(),
    };
    let (pa, pb) = match kind {
        "nginx" => (
            peers::nginx(dir, "nginx-a", a).await?,
            peers::nginx(dir, "nginx-b", b).await?,
        ),
        _ => (
            peers::haproxy(dir, "haproxy-a", a).await?,
            peers::haproxy(dir, "haproxy-b", b).await?,
        ),
    };
    let entry: SocketAddr = format!("127.0.0.1:{a_http}").parse()?;
    // Ready when the whole chain answers.
    wait_ready(entry, "/", Duration::from_secs(20))
        .await
        .with_context(|| format!("{kind} pair"))?;
    let (ia, ib) = (pa.pid().context("proxy a")?, pb.pid().context("proxy b")?);
    Ok(Topology {
        name: kind,
        http: entry,
        grpc: format!("127.0.0.1:{a_grpc}").parse()?,
        host: None,
        proxies: vec![sys::family(ia), sys::family(ib)],
        _procs: vec![pa, pb],
    })
}
