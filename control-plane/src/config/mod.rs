//! mesh-control's configuration: flags and `MESH_CONTROL_*` variables, parsed
//! once at startup into plain data. clap reads the command line as text;
//! every value is then checked here, so one run names every bad flag and
//! value at once (the binary exits 64, like the sidecar). A leaf: imports
//! nothing of the crate.

mod cluster;
mod vips;

pub use cluster::{Cluster, DEFAULT_WEBHOOK_NAMES, Injector, Webhook};
pub use vips::VirtualIps;

use clap::{CommandFactory, FromArgMatches, Parser};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default gRPC address (discovery + admin).
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:15010";
/// Default cap on registered instances per workload identity.
pub const DEFAULT_MAX_REGISTRATIONS: u64 = 1000;
/// Default HTTP address (/ready, /live).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:15014";

/// The command line as text, before any value is checked.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mesh-control",
    version,
    about = "mesh control plane: discovery, rules and releases"
)]
struct Args {
    /// gRPC listen address for sidecars (discovery, telemetry, identity; TLS).
    #[arg(long, env = "MESH_CONTROL_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
    grpc_addr: String,
    /// HTTP listen address for /ready and /live.
    #[arg(long, env = "MESH_CONTROL_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    http_addr: String,
    /// mTLS admin API listen address (meshctl).
    #[arg(
        long,
        env = "MESH_CONTROL_ADMIN_ADDR",
        default_value = "127.0.0.1:15011"
    )]
    admin_addr: String,
    /// Mesh file or directory of YAML files (Service, Workload, TrafficSplit).
    #[arg(long, short = 'f', env = "MESH_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Where applied rules and registrations are persisted.
    #[arg(long, env = "MESH_CONTROL_STATE_DIR", default_value = ".mesh/state")]
    state_dir: PathBuf,
    /// Heartbeat interval sidecars are told to use, in ms; the lease is three.
    #[arg(long, env = "MESH_CONTROL_HEARTBEAT_MS", default_value = "1000")]
    heartbeat_ms: String,
    /// SPIFFE trust domain of the identities the CA issues.
    #[arg(
        long,
        env = "MESH_CONTROL_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    trust_domain: String,
    /// Lifetime of workload certificates, in seconds (sidecars rotate at ~70%).
    #[arg(long, env = "MESH_CONTROL_CERT_LIFETIME_SECS", default_value = "86400")]
    cert_lifetime_secs: String,
    /// Local-mode bootstrap tokens (YAML list of {token, namespace, serviceAccount}).
    #[arg(long, env = "MESH_CONTROL_BOOTSTRAP_TOKENS")]
    bootstrap_tokens: Option<PathBuf>,
    /// Operator-provided issuing CA certificate (PEM); default: generated in the state dir.
    #[arg(long, env = "MESH_CONTROL_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Private key of `--ca-cert` (PEM).
    #[arg(long, env = "MESH_CONTROL_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Trust anchors for `--ca-cert` (PEM); default: `--ca-cert` itself.
    #[arg(long, env = "MESH_CONTROL_CA_ROOTS", requires = "ca_cert")]
    ca_roots: Option<PathBuf>,
    /// How long a deregistration waits for every sidecar to ACK, in ms.
    #[arg(
        long,
        env = "MESH_CONTROL_PROPAGATION_TIMEOUT_MS",
        default_value = "2000"
    )]
    propagation_timeout_ms: String,
    /// How long registry changes (registrations, readiness, departures,
    /// endpoints from the cluster) are gathered into one push, in ms; a
    /// lone change waits no longer than this. 0: each is pushed at once.
    #[arg(long, env = "MESH_CONTROL_BATCH_WINDOW_MS", default_value = "10")]
    batch_window_ms: String,
    /// On SIGTERM, how long connected sidecars keep their streams (with
    /// publication stopped) before they are ended, in ms.
    #[arg(long, env = "MESH_CONTROL_DRAIN_TIMEOUT_MS", default_value = "5000")]
    drain_timeout_ms: String,
    /// How long a new connection may stay silent (or inside the HTTP/2
    /// preface, or an HTTP request head) before it is closed, in ms.
    #[arg(long, env = "MESH_CONTROL_IDLE_TIMEOUT_MS", default_value = "30000")]
    idle_timeout_ms: String,
    /// Most connections each listener (gRPC, admin, HTTP) keeps open.
    #[arg(long, env = "MESH_CONTROL_MAX_CONNECTIONS", default_value = "10000")]
    max_connections: String,
    /// Most instances one workload identity may keep registered.
    #[arg(
        long,
        env = "MESH_CONTROL_MAX_REGISTRATIONS_PER_IDENTITY",
        default_value_t = DEFAULT_MAX_REGISTRATIONS.to_string()
    )]
    max_registrations_per_identity: String,
    /// Where services and their instances come from: `local` (Service
    /// documents and sidecar heartbeats) or `kubernetes` (Services,
    /// EndpointSlices and Pods of the cluster).
    #[arg(long, env = "MESH_CONTROL_REGISTRY", default_value = "local")]
    registry: String,
    /// kubeconfig for `--registry kubernetes`; default: $KUBECONFIG,
    /// ~/.kube/config, or the in-cluster service account.
    #[arg(long, env = "MESH_CONTROL_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Local mode: the IPv4 range each service gets a virtual IP from
    /// (dialled as a ClusterIP is, and redirected to the sidecar), or
    /// `none`. A cluster's Services bring their own ClusterIPs.
    #[arg(long, env = "MESH_CONTROL_VIRTUAL_IPS", default_value = "10.96.0.0/16")]
    virtual_ips: String,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
}

/// Where services and instances come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryKind {
    /// Service documents and sidecar heartbeats.
    Local,
    /// The cluster's Services, EndpointSlices and Pods.
    Kubernetes,
}

/// mesh-control's configuration, every value checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// gRPC listen address for sidecars and meshctl.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address for /ready and /live.
    pub http_addr: SocketAddr,
    /// mTLS admin API listen address (meshctl).
    pub admin_addr: SocketAddr,
    /// Mesh file or directory of YAML files (Service, Workload, TrafficSplit).
    pub config: Option<PathBuf>,
    /// Where applied rules and registrations are persisted.
    pub state_dir: PathBuf,
    /// Heartbeat interval sidecars are told to use, in ms; the lease is three.
    pub heartbeat_ms: u64,
    /// SPIFFE trust domain of the identities the CA issues.
    pub trust_domain: String,
    /// Lifetime of workload certificates, in seconds (sidecars rotate at ~70%).
    pub cert_lifetime_secs: u64,
    /// Local-mode bootstrap tokens (YAML list of {token, namespace, serviceAccount}).
    pub bootstrap_tokens: Option<PathBuf>,
    /// Operator-provided issuing CA certificate (PEM); default: generated in the state dir.
    pub ca_cert: Option<PathBuf>,
    /// Private key of `ca_cert` (PEM).
    pub ca_key: Option<PathBuf>,
    /// Trust anchors for `ca_cert` (PEM); default: `ca_cert` itself.
    pub ca_roots: Option<PathBuf>,
    /// How long a deregistration waits for every sidecar to ACK, in ms.
    pub propagation_timeout_ms: u64,
    /// How long registry changes are gathered into one push, in ms.
    pub batch_window_ms: u64,
    /// On SIGTERM, how long connected sidecars keep their streams, in ms.
    pub drain_timeout_ms: u64,
    /// How long a new connection may stay silent, in ms.
    pub idle_timeout_ms: u64,
    /// Most connections each listener keeps open.
    pub max_connections: u64,
    /// Most instances one workload identity may keep registered.
    pub max_registrations_per_identity: u64,
    /// Where services and instances come from.
    pub registry: RegistryKind,
    /// kubeconfig for the Kubernetes registry (None: inferred).
    pub kubeconfig: Option<PathBuf>,
    /// Local mode's virtual IP range, if it gives any.
    pub virtual_ips: Option<VirtualIps>,
    /// What only a control plane on a Kubernetes cluster has.
    pub cluster: Cluster,
}

/// What parsing the command line came to.
#[derive(Debug)]
pub enum Error {
    /// `--help` or `--version`: print this and exit 0.
    Info(String),
    /// Every problem found, one per entry.
    Invalid(Vec<String>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Info(text) => f.write_str(text),
            Error::Invalid(problems) => write!(
                f,
                "invalid configuration:\n  {}\n(see mesh-control --help)",
                problems.join("\n  ")
            ),
        }
    }
}

impl std::error::Error for Error {}

impl Config {
    /// Parses the process's arguments and `MESH_CONTROL_*` variables.
    pub fn from_args<I, T>(args: I) -> Result<Config, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        let (mut problems, args) = unknown_flags(args);
        let args = match Args::try_parse_from(&args) {
            Ok(a) => a,
            Err(e) => {
                use clap::error::ErrorKind;
                if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    return Err(Error::Info(e.render().to_string()));
                }
                // clap names only its first problem; check whatever values
                // it can still read, so those are named too.
                problems.push(clap_problem(&e));
                let matches = Args::command()
                    .ignore_errors(true)
                    .try_get_matches_from(&args)
                    .map_err(|e| Error::Invalid(vec![clap_problem(&e)]))?;
                Args::from_arg_matches(&matches)
                    .map_err(|e| Error::Invalid(vec![clap_problem(&e)]))?
            }
        };
        let mut number = |flag: &str, v: &str, min: u64| match v.trim().parse::<u64>() {
            Ok(n) if n >= min => n,
            Ok(n) => {
                problems.push(format!("--{flag} {n}: must be at least {min}"));
                min
            }
            Err(_) => {
                problems.push(format!("--{flag} {v:?}: not a whole number"));
                min
            }
        };
        let heartbeat_ms = number("heartbeat-ms", &args.heartbeat_ms, 10);
        let cert_lifetime_secs = number("cert-lifetime-secs", &args.cert_lifetime_secs, 1);
        let propagation_timeout_ms =
            number("propagation-timeout-ms", &args.propagation_timeout_ms, 1);
        let drain_timeout_ms = number("drain-timeout-ms", &args.drain_timeout_ms, 0);
        let batch_window_ms = number("batch-window-ms", &args.batch_window_ms, 0);
        let idle_timeout_ms = number("idle-timeout-ms", &args.idle_timeout_ms, 1);
        let max_connections = number("max-connections", &args.max_connections, 1);
        let max_registrations_per_identity = number(
            "max-registrations-per-identity",
            &args.max_registrations_per_identity,
            1,
        );
        let mut addr = |flag: &str, v: &str| match v.trim().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                problems.push(format!("--{flag} {v:?}: not an ip:port address"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let grpc_addr = addr("grpc-addr", &args.grpc_addr);
        let http_addr = addr("http-addr", &args.http_addr);
        let admin_addr = addr("admin-addr", &args.admin_addr);
        if let Err(why) = check_trust_domain(&args.trust_domain) {
            problems.push(format!("--trust-domain {:?}: {why}", args.trust_domain));
        }
        let registry = match args.registry.trim() {
            "local" => RegistryKind::Local,
            "kubernetes" => RegistryKind::Kubernetes,
            other => {
                problems.push(format!("--registry {other:?}: must be local or kubernetes"));
                RegistryKind::Local
            }
        };
        if args.kubeconfig.is_some() && registry != RegistryKind::Kubernetes {
            problems.push("--kubeconfig: only with --registry kubernetes".into());
        }
        let virtual_ips = match args.virtual_ips.trim() {
            "none" => None,
            v => v.parse::<VirtualIps>().map_or_else(
                |e| {
                    problems.push(format!("--virtual-ips {v:?}: {e}"));
                    None
                },
                Some,
            ),
        };
        let cluster = cluster::check(
            &args.cluster,
            registry == RegistryKind::Kubernetes,
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        Ok(Config {
            registry,
            kubeconfig: args.kubeconfig,
            virtual_ips,
            cluster,
            grpc_addr,
            http_addr,
            admin_addr,
            config: args.config,
            state_dir: args.state_dir,
            heartbeat_ms,
            trust_domain: args.trust_domain,
            cert_lifetime_secs,
            bootstrap_tokens: args.bootstrap_tokens,
            ca_cert: args.ca_cert,
            ca_key: args.ca_key,
            ca_roots: args.ca_roots,
            propagation_timeout_ms,
            batch_window_ms,
            drain_timeout_ms,
            idle_timeout_ms,
            max_connections,
            max_registrations_per_identity,
        })
    }

    /// How long a new connection may stay silent.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The drain on SIGTERM.
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// An instance is dropped after three missed heartbeats.
    pub fn lease(&self) -> Duration {
        self.heartbeat() * 3
    }
}

/// Flags on the command line that mesh-control does not have, each named,
/// and the command line without them (and the value each may have had), so
/// the rest can still be checked.
fn unknown_flags(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let cmd = Args::command();
    let known_long: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(String::from))
        .chain(["help".to_string(), "version".to_string()])
        .collect();
    let known_short: Vec<char> = cmd
        .get_arguments()
        .filter_map(|a| a.get_short())
        .chain(['h', 'V'])
        .collect();
    let mut problems = Vec::new();
    let mut kept = Vec::with_capacity(args.len());
    let mut args = args.into_iter().peekable();
    kept.extend(args.next());
    while let Some(a) = args.next() {
        let unknown = if let Some(long) = a.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or_default();
            (!name.is_empty() && !known_long.iter().any(|k| k == name)).then(|| format!("--{name}"))
        } else if let Some(c) = a.strip_prefix('-').and_then(|s| s.chars().next()) {
            (!c.is_ascii_digit() && !known_short.contains(&c)).then(|| format!("-{c}"))
        } else {
            None
        };
        match unknown {
            Some(flag) => {
                problems.push(format!("{flag}: no such flag"));
                if !a.contains('=') && args.peek().is_some_and(|v| !v.starts_with('-')) {
                    args.next();
                }
            }
            None => kept.push(a),
        }
    }
    (problems, kept)
}

/// clap's message without its "error: " prefix and usage footer.
fn clap_problem(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

/// A SPIFFE trust domain: lower-case letters, digits, dots, dashes and
/// underscores (the SPIFFE ID spec, §2.1).
fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("must not be empty");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("may hold only lower-case letters, digits, '.', '-' and '_'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration of mesh-control started with `args`.
    pub(super) fn parse(args: &[&str]) -> Result<Config, Error> {
        Config::from_args(std::iter::once("mesh-control").chain(args.iter().copied()))
    }

    /// What refusing `args` names; panics if they are accepted.
    pub(super) fn problems(args: &[&str]) -> Vec<String> {
        match parse(args) {
            Err(Error::Invalid(p)) => p,
            other => panic!("{args:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_good_values() {
        let c = parse(&["--grpc-addr", "127.0.0.1:0", "--heartbeat-ms=200"]).unwrap();
        assert_eq!(c.grpc_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.http_addr, DEFAULT_HTTP_ADDR.parse().unwrap());
        assert_eq!(c.heartbeat_ms, 200);
        assert_eq!(c.lease(), Duration::from_millis(600));
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.cert_lifetime_secs, 86_400);
    }

    #[test]
    fn every_bad_value_is_named_at_once() {
        let p = problems(&[
            "--grpc-addr",
            "nowhere",
            "--heartbeat-ms",
            "soon",
            "--cert-lifetime-secs",
            "0",
            "--trust-domain",
            "Cluster/Local",
        ]);
        assert_eq!(p.len(), 4, "{p:?}");
        for (flag, what) in [
            ("--grpc-addr", "ip:port"),
            ("--heartbeat-ms", "whole number"),
            ("--cert-lifetime-secs", "at least 1"),
            ("--trust-domain", "lower-case"),
        ] {
            assert!(
                p.iter().any(|x| x.contains(flag) && x.contains(what)),
                "{flag}: {p:?}"
            );
        }
    }

    #[test]
    fn unknown_flags_and_bad_values_are_named_together() {
        let p = problems(&["--colour", "red", "--grpc-addr", "x", "-z"]);
        assert!(p.iter().any(|x| x == "--colour: no such flag"), "{p:?}");
        assert!(p.iter().any(|x| x == "-z: no such flag"), "{p:?}");
        assert!(p.iter().any(|x| x.contains("--grpc-addr \"x\"")), "{p:?}");
        // clap's own complaint (a flag without its value) is kept too.
        let p = problems(&["--ca-cert", "c.pem"]);
        assert!(p.iter().any(|x| x.contains("--ca-key")), "{p:?}");
    }

    #[test]
    fn help_is_not_an_error() {
        assert!(matches!(parse(&["--help"]), Err(Error::Info(t)) if t.contains("--state-dir")));
    }
}
