//! mesh-control's configuration: flags and `MESH_CONTROL_*` variables, parsed
//! once at startup into plain data.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default gRPC address (discovery + admin).
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:15010";
/// Default HTTP address (/ready, /live).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:15014";

/// mesh control plane.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mesh-control",
    version,
    about = "mesh control plane: discovery, rules and releases"
)]
pub struct Config {
    /// gRPC listen address for sidecars and meshctl.
    #[arg(long, env = "MESH_CONTROL_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for /ready and /live.
    #[arg(long, env = "MESH_CONTROL_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Mesh file or directory of YAML files (Service, Workload, TrafficSplit).
    #[arg(long, short = 'f', env = "MESH_CONTROL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where applied rules and registrations are persisted.
    #[arg(long, env = "MESH_CONTROL_STATE_DIR", default_value = ".mesh/state")]
    pub state_dir: PathBuf,
    /// Heartbeat interval sidecars are told to use, in ms; the lease is three.
    #[arg(long, env = "MESH_CONTROL_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// SPIFFE trust domain of the identities the CA issues.
    #[arg(
        long,
        env = "MESH_CONTROL_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    /// Lifetime of workload certificates, in seconds (sidecars rotate at ~70%).
    #[arg(long, env = "MESH_CONTROL_CERT_LIFETIME_SECS", default_value_t = 24 * 3600)]
    pub cert_lifetime_secs: u64,
    /// Local-mode bootstrap tokens (YAML list of {token, namespace, serviceAccount}).
    #[arg(long, env = "MESH_CONTROL_BOOTSTRAP_TOKENS")]
    pub bootstrap_tokens: Option<PathBuf>,
    /// Operator-provided issuing CA certificate (PEM); default: generated in the state dir.
    #[arg(long, env = "MESH_CONTROL_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Private key of `--ca-cert` (PEM).
    #[arg(long, env = "MESH_CONTROL_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Trust anchors for `--ca-cert` (PEM); default: `--ca-cert` itself.
    #[arg(long, env = "MESH_CONTROL_CA_ROOTS", requires = "ca_cert")]
    pub ca_roots: Option<PathBuf>,
    /// How long a deregistration waits for every sidecar to ACK, in ms.
    #[arg(
        long,
        env = "MESH_CONTROL_PROPAGATION_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub propagation_timeout_ms: u64,
}

impl Config {
    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(10))
    }

    /// An instance is dropped after three missed heartbeats.
    pub fn lease(&self) -> Duration {
        self.heartbeat() * 3
    }
}
