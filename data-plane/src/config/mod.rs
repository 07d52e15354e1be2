//! mesh-proxy's configuration: `MESH_PROXY_*` variables parsed once at
//! startup into plain data. Reads go through [`Env`] so tests use a map and
//! never touch the process environment. Every bad key is reported at once.
//! A leaf: the types its values take live here, and it imports nothing of
//! the crate.

mod demand;
mod intercept;
mod parse;
mod telemetry;

pub use demand::{Demand, ENV_DISCOVERY_WAIT_MS, ENV_SERVICES, ENV_UNSUBSCRIBE_AFTER_MS};
pub use intercept::{DEFAULT_OPAQUE_PORTS, ENV_DETECT_TIMEOUT_MS, ENV_OPAQUE_PORTS, Intercept};
use parse::Parser;
pub use parse::{Env, ProcessEnv};
use std::net::SocketAddr;
use std::time::Duration;
pub use telemetry::{
    AccessLog, ENV_ACCESS_LOG, ENV_ACCESS_LOG_REDACT, ENV_ACCESS_LOG_SAMPLING, ENV_TELEMETRY,
    ENV_TELEMETRY_INTERVAL_MS, ENV_TRACE_COLLECTOR, ENV_TRACE_SAMPLING, Telemetry, Trace,
};

/// Service this sidecar belongs to (required).
pub const ENV_SERVICE: &str = "MESH_PROXY_SERVICE";
/// Version label, e.g. `v1`.
pub const ENV_VERSION: &str = "MESH_PROXY_VERSION";
/// Namespace; default `default`.
pub const ENV_NAMESPACE: &str = "MESH_PROXY_NAMESPACE";
/// Unique instance id; default `<service>-<version>-<pid>`.
pub const ENV_INSTANCE_ID: &str = "MESH_PROXY_INSTANCE_ID";
/// Control plane gRPC URL (TLS only).
pub const ENV_CONTROL_ADDR: &str = "MESH_PROXY_CONTROL_ADDR";
const DEFAULT_CONTROL_ADDR: &str = "https://127.0.0.1:15010";
/// Trust anchors the control plane's certificate must chain to: a PEM
/// file, or the PEM itself (as injection sets it).
pub const ENV_CONTROL_ROOTS: &str = "MESH_PROXY_CONTROL_ROOTS";
/// SPIFFE ID the control plane must prove; default its ID in the trust domain.
pub const ENV_CONTROL_IDENTITY: &str = "MESH_PROXY_CONTROL_IDENTITY";
/// Outbound listener (the app sends requests here).
pub const ENV_OUTBOUND_ADDR: &str = "MESH_PROXY_OUTBOUND_ADDR";
const DEFAULT_OUTBOUND_ADDR: &str = "127.0.0.1:4140";
/// Inbound listener (other sidecars send here).
pub const ENV_INBOUND_ADDR: &str = "MESH_PROXY_INBOUND_ADDR";
const DEFAULT_INBOUND_ADDR: &str = "127.0.0.1:4143";
/// Address registered for this instance; default the bound inbound address.
pub const ENV_ADVERTISE_ADDR: &str = "MESH_PROXY_ADVERTISE_ADDR";
/// Admin listener: /ready /live /config_dump.
pub const ENV_ADMIN_ADDR: &str = "MESH_PROXY_ADMIN_ADDR";
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:4191";
/// The local app; unset for a client-only sidecar (no inbound, no registration).
pub const ENV_APP_ADDR: &str = "MESH_PROXY_APP_ADDR";
/// HTTP path probed on the app; unset means "ready while running".
pub const ENV_HEALTH_PATH: &str = "MESH_PROXY_HEALTH_PATH";
/// Probe interval in ms.
pub const ENV_HEALTH_INTERVAL_MS: &str = "MESH_PROXY_HEALTH_INTERVAL_MS";
const DEFAULT_HEALTH_INTERVAL_MS: u64 = 1000;
/// Probe timeout in ms.
pub const ENV_HEALTH_TIMEOUT_MS: &str = "MESH_PROXY_HEALTH_TIMEOUT_MS";
const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 500;
/// Consecutive failures that make the app unready.
pub const ENV_HEALTH_FAILURE_THRESHOLD: &str = "MESH_PROXY_HEALTH_FAILURE_THRESHOLD";
const DEFAULT_HEALTH_FAILURE_THRESHOLD: u32 = 1;
/// Consecutive successes that make it ready again.
pub const ENV_HEALTH_SUCCESS_THRESHOLD: &str = "MESH_PROXY_HEALTH_SUCCESS_THRESHOLD";
const DEFAULT_HEALTH_SUCCESS_THRESHOLD: u32 = 1;
/// How long in-flight requests may take to finish on shutdown, in ms.
pub const ENV_DRAIN_TIMEOUT_MS: &str = "MESH_PROXY_DRAIN_TIMEOUT_MS";
const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// How long a connection may stay without a request head (silent from
/// the start, idle between requests, or slow to send one), in ms.
pub const ENV_IDLE_TIMEOUT_MS: &str = "MESH_PROXY_IDLE_TIMEOUT_MS";
const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Most connections each listener (outbound, inbound) keeps open at once.
pub const ENV_MAX_CONNECTIONS: &str = "MESH_PROXY_MAX_CONNECTIONS";
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// Worker threads, each with its own runtime, listeners and pools; 1 (the
/// default) keeps the tail short on small machines.
pub const ENV_WORKERS: &str = "MESH_PROXY_WORKERS";
const DEFAULT_WORKERS: u32 = 1;
/// Longest wait between reconnects to the control plane, in ms.
pub const ENV_RECONNECT_MAX_MS: &str = "MESH_PROXY_RECONNECT_MAX_MS";
const DEFAULT_RECONNECT_MAX_MS: u64 = 5_000;

/// Local-mode bootstrap token proving this workload's identity to the CA;
/// unset means no workload certificate.
pub const ENV_IDENTITY_TOKEN: &str = "MESH_PROXY_IDENTITY_TOKEN";
/// File holding the workload's projected ServiceAccount token (audience
/// `mesh`), read again at every certificate request, so the kubelet's
/// rotation is followed; instead of `MESH_PROXY_IDENTITY_TOKEN`.
pub const ENV_IDENTITY_TOKEN_FILE: &str = "MESH_PROXY_IDENTITY_TOKEN_FILE";
/// Service account in the SPIFFE ID; default the service name.
pub const ENV_SERVICE_ACCOUNT: &str = "MESH_PROXY_SERVICE_ACCOUNT";
/// SPIFFE trust domain.
pub const ENV_TRUST_DOMAIN: &str = "MESH_PROXY_TRUST_DOMAIN";
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Inbound mode: `strict` (mTLS only) or `permissive` (also plaintext).
pub const ENV_INBOUND_MODE: &str = "MESH_PROXY_INBOUND_MODE";

/// Most bytes one compiled route regex may take; a snapshot with a larger
/// one is rejected (NACKed) naming it.
pub const ENV_MAX_REGEX_BYTES: &str = "MESH_PROXY_MAX_REGEX_BYTES";

/// Whether plaintext is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// mTLS only; plaintext connections are refused.
    Strict,
    /// mTLS from meshed peers, plaintext from unmeshed clients.
    Permissive,
    /// Registered without an identity, as a plaintext endpoint: meshed
    /// clients reach it only where a TrafficPolicy allows plaintext.
    Plaintext,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "strict" => Ok(Mode::Strict),
            "permissive" => Ok(Mode::Permissive),
            "plaintext" => Ok(Mode::Plaintext),
            other => Err(format!("{other:?} is not strict, permissive or plaintext")),
        }
    }
}

/// Most bytes one compiled route regex may take in this sidecar (a memory
/// guard, like Envoy's `re2.max_program_size`). The control plane cannot
/// know each sidecar's limit, so a regex over it is NACKed, naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegexLimit(pub usize);

impl Default for RegexLimit {
    fn default() -> Self {
        RegexLimit(1024 * 1024)
    }
}

/// Who this sidecar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Service.
    pub service: String,
    /// Version label.
    pub version: String,
    /// Namespace.
    pub namespace: String,
    /// Instance id.
    pub instance_id: String,
}

/// Health checking of the local app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Probed path; `None` means always ready.
    pub path: Option<String>,
    /// Probe interval.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Failures before unready.
    pub failure_threshold: u32,
    /// Successes before ready.
    pub success_threshold: u32,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Identity.
    pub identity: Identity,
    /// The control plane, and how to know it.
    pub control: Control,
    /// Outbound listener.
    pub outbound_addr: SocketAddr,
    /// Inbound listener.
    pub inbound_addr: SocketAddr,
    /// Registered address override.
    pub advertise_addr: Option<SocketAddr>,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// Local app, if any.
    pub app_addr: Option<SocketAddr>,
    /// Health checks.
    pub health: Health,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// Idle and header-read timeout of every listener.
    pub idle_timeout: Duration,
    /// Most connections each listener keeps open at once.
    pub max_connections: usize,
    /// Worker threads.
    pub workers: usize,
    /// Reconnect backoff ceiling.
    pub reconnect_max: Duration,
    /// Workload identity: every sidecar has one.
    pub tls: Tls,
    /// Whether inbound accepts plaintext.
    pub inbound_mode: Mode,
    /// Metrics, aggregates, traces and access logs.
    pub telemetry: Telemetry,
    /// Redirected connections: protocol detection and opaque ports.
    pub intercept: Intercept,
    /// Which services it subscribes to, and how on demand.
    pub demand: Demand,
    /// Compiled size limit of one route regex.
    pub regex_limit: RegexLimit,
}

/// What proves the workload's identity to the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A bootstrap token given in the environment (local mode).
    Token(String),
    /// A file with a projected ServiceAccount token (Kubernetes).
    File(std::path::PathBuf),
}

/// Workload identity settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// What proves the identity.
    pub proof: Proof,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: String,
}

/// Where the control plane is and what it must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// `https://host:port`.
    pub url: String,
    /// PEM file of the trust anchors, or the PEM itself.
    pub roots: std::path::PathBuf,
    /// Its SPIFFE ID.
    pub identity: String,
}

/// Every problem found while parsing, one per line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct Error(pub Vec<String>);

impl Config {
    /// Parses the configuration, reporting every bad key.
    pub fn from_env(env: &dyn Env) -> Result<Config, Error> {
        let mut p = Parser {
            env,
            errors: Vec::new(),
        };
        let service = p.string(ENV_SERVICE).unwrap_or_else(|| {
            p.errors.push(format!(
                "{ENV_SERVICE}: required (the service this sidecar belongs to)"
            ));
            String::new()
        });
        let version = p.string(ENV_VERSION).unwrap_or_default();
        let namespace = p.string(ENV_NAMESPACE).unwrap_or_else(|| "default".into());
        let instance_id = p.string(ENV_INSTANCE_ID).unwrap_or_else(|| {
            let v = if version.is_empty() {
                String::new()
            } else {
                format!("-{version}")
            };
            format!("{service}{v}-{}", std::process::id())
        });
        let url = p
            .string(ENV_CONTROL_ADDR)
            .unwrap_or_else(|| DEFAULT_CONTROL_ADDR.into());
        if !url.starts_with("https://") {
            p.errors.push(format!(
                "{ENV_CONTROL_ADDR}={url:?}: the control plane speaks only TLS; use a URL such as {DEFAULT_CONTROL_ADDR}"
            ));
        }
        let td = p
            .string(ENV_TRUST_DOMAIN)
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.into());
        let roots = p.string(ENV_CONTROL_ROOTS).unwrap_or_else(|| {
            p.errors.push(format!("{ENV_CONTROL_ROOTS} is not set: the trust anchors (PEM) to know the control plane by"));
            String::new()
        });
        let control = Control {
            url,
            roots: roots.into(),
            identity: p
                .string(ENV_CONTROL_IDENTITY)
                .unwrap_or_else(|| format!("spiffe://{td}/ns/mesh-system/sa/mesh-control")),
        };
        let health_path = p.string(ENV_HEALTH_PATH);
        if let Some(path) = &health_path
            && !path.starts_with('/')
        {
            p.errors
                .push(format!("{ENV_HEALTH_PATH}={path:?}: must start with '/'"));
        }
        let proof = match (
            p.string(ENV_IDENTITY_TOKEN),
            p.string(ENV_IDENTITY_TOKEN_FILE),
        ) {
            (Some(token), None) => Proof::Token(token),
            (None, Some(file)) => Proof::File(file.into()),
            (Some(_), Some(_)) => {
                p.errors.push(format!(
                    "{ENV_IDENTITY_TOKEN} and {ENV_IDENTITY_TOKEN_FILE} are both set: give one proof of identity"
                ));
                Proof::Token(String::new())
            }
            (None, None) => {
                p.errors.push(format!("neither {ENV_IDENTITY_TOKEN} nor {ENV_IDENTITY_TOKEN_FILE} is set: every sidecar proves its identity to the control plane"));
                Proof::Token(String::new())
            }
        };
        let sa = p
            .string(ENV_SERVICE_ACCOUNT)
            .unwrap_or_else(|| service.clone());
        let tls = Tls {
            proof,
            spiffe_id: format!("spiffe://{td}/ns/{namespace}/sa/{sa}"),
        };
        let inbound_mode = p.parse(ENV_INBOUND_MODE, Mode::Permissive, "an inbound mode");
        let telemetry = p.telemetry();
        let intercept = p.intercept();
        let demand = p.demand();
        let default_limit = RegexLimit::default().0;
        let regex_limit =
            RegexLimit(p.positive(ENV_MAX_REGEX_BYTES, default_limit as u32) as usize);
        let config = Config {
            regex_limit,
            telemetry,
            intercept,
            demand,
            inbound_mode,
            tls,
            outbound_addr: p.addr(ENV_OUTBOUND_ADDR, DEFAULT_OUTBOUND_ADDR),
            inbound_addr: p.addr(ENV_INBOUND_ADDR, DEFAULT_INBOUND_ADDR),
            advertise_addr: p.optional_addr(ENV_ADVERTISE_ADDR),
            admin_addr: p.addr(ENV_ADMIN_ADDR, DEFAULT_ADMIN_ADDR),
            app_addr: p.optional_addr(ENV_APP_ADDR),
            health: Health {
                path: health_path,
                interval: p.millis(ENV_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_INTERVAL_MS),
                timeout: p.millis(ENV_HEALTH_TIMEOUT_MS, DEFAULT_HEALTH_TIMEOUT_MS),
                failure_threshold: p.positive(
                    ENV_HEALTH_FAILURE_THRESHOLD,
                    DEFAULT_HEALTH_FAILURE_THRESHOLD,
                ),
                success_threshold: p.positive(
                    ENV_HEALTH_SUCCESS_THRESHOLD,
                    DEFAULT_HEALTH_SUCCESS_THRESHOLD,
                ),
            },
            drain_timeout: p.millis(ENV_DRAIN_TIMEOUT_MS, DEFAULT_DRAIN_TIMEOUT_MS),
            idle_timeout: p.millis(ENV_IDLE_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS),
            max_connections: p.positive(ENV_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS) as usize,
            workers: p.positive(ENV_WORKERS, DEFAULT_WORKERS) as usize,
            reconnect_max: p.millis(ENV_RECONNECT_MAX_MS, DEFAULT_RECONNECT_MAX_MS),
            control,
            identity: Identity {
                service,
                version,
                namespace,
                instance_id,
            },
        };
        if p.errors.is_empty() {
            Ok(config)
        } else {
            Err(Error(p.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `pairs` plus what every sidecar needs (token, control roots).
    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> =
            [(ENV_IDENTITY_TOKEN, "t"), (ENV_CONTROL_ROOTS, "/roots.pem")]
                .iter()
                .chain(pairs)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        env.retain(|_, v| !v.is_empty());
        env
    }

    #[test]
    fn defaults() {
        let c = Config::from_env(&env(&[(ENV_SERVICE, "echo")])).unwrap();
        assert_eq!(c.identity.namespace, "default");
        assert_eq!(c.outbound_addr, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(c.workers, 1);
        assert!(c.app_addr.is_none());
        assert_eq!(c.health.failure_threshold, 1);
    }

    #[test]
    fn one_proof_of_identity_a_token_or_a_token_file() {
        let c = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_IDENTITY_TOKEN, ""),
            (ENV_IDENTITY_TOKEN_FILE, "/var/run/secrets/mesh/token"),
        ]))
        .unwrap();
        assert_eq!(
            c.tls.proof,
            Proof::File("/var/run/secrets/mesh/token".into())
        );
        let err = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_IDENTITY_TOKEN_FILE, "/token"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("are both set"), "{err}");
        let err = Config::from_env(&env(&[(ENV_SERVICE, "echo"), (ENV_IDENTITY_TOKEN, "")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(ENV_IDENTITY_TOKEN) && err.contains(ENV_IDENTITY_TOKEN_FILE),
            "{err}"
        );
    }

    #[test]
    fn identity_from_token_namespace_and_service_account() {
        let c = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_NAMESPACE, "prod"),
            (ENV_IDENTITY_TOKEN, "t"),
        ]))
        .unwrap();
        assert_eq!(c.tls.spiffe_id, "spiffe://cluster.local/ns/prod/sa/echo");
        assert_eq!(
            c.control.identity,
            "spiffe://cluster.local/ns/mesh-system/sa/mesh-control"
        );
        let c = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_IDENTITY_TOKEN, "t"),
            (ENV_SERVICE_ACCOUNT, "web"),
            (ENV_TRUST_DOMAIN, "example.org"),
        ]))
        .unwrap();
        assert_eq!(c.tls.spiffe_id, "spiffe://example.org/ns/default/sa/web");
        assert_eq!(
            c.control.identity,
            "spiffe://example.org/ns/mesh-system/sa/mesh-control"
        );
        // No token or no roots: the sidecar could not prove or check anyone.
        let err = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_IDENTITY_TOKEN, ""),
            (ENV_CONTROL_ROOTS, ""),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(ENV_IDENTITY_TOKEN) && err.contains(ENV_CONTROL_ROOTS),
            "{err}"
        );
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let err = Config::from_env(&env(&[
            (ENV_OUTBOUND_ADDR, "nope"),
            (ENV_HEALTH_INTERVAL_MS, "-3"),
            (ENV_HEALTH_PATH, "healthz"),
            (ENV_CONTROL_ADDR, "http://127.0.0.1:1"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for key in [
            ENV_SERVICE,
            ENV_OUTBOUND_ADDR,
            ENV_HEALTH_INTERVAL_MS,
            ENV_HEALTH_PATH,
            ENV_CONTROL_ADDR,
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        assert_eq!(err.0.len(), 5);
    }

    #[test]
    fn interception_defaults_and_bad_values_are_named() {
        let c = Config::from_env(&env(&[(ENV_SERVICE, "echo")])).unwrap();
        assert_eq!(c.intercept.detect_timeout, Duration::from_millis(100));
        assert!(c.intercept.opaque(3306) && c.intercept.opaque(6379) && !c.intercept.opaque(80));
        let c = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_OPAQUE_PORTS, "7000-7010"),
        ]))
        .unwrap();
        assert!(c.intercept.opaque(7005) && !c.intercept.opaque(3306));
        let err = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_OPAQUE_PORTS, "3306,mysql"),
            (ENV_DETECT_TIMEOUT_MS, "soon"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("MESH_PROXY_OPAQUE_PORTS=\"3306,mysql\""),
            "{err}"
        );
        assert!(err.contains("MESH_PROXY_DETECT_TIMEOUT_MS"), "{err}");
    }

    #[test]
    fn telemetry_defaults_and_every_bad_telemetry_key() {
        let c = Config::from_env(&env(&[(ENV_SERVICE, "echo")])).unwrap();
        assert!(c.telemetry.enabled);
        assert_eq!(c.telemetry.report_interval, Duration::from_secs(5));
        assert!(c.telemetry.trace.is_none() && c.telemetry.access_log.is_none());
        let c = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_TRACE_COLLECTOR, "http://127.0.0.1:4317"),
            (ENV_TRACE_SAMPLING, "0.5"),
            (ENV_ACCESS_LOG, "json"),
            (ENV_ACCESS_LOG_REDACT, "Authorization, X-Secret"),
        ]))
        .unwrap();
        assert_eq!(c.telemetry.trace.unwrap().sampling, 0.5);
        assert_eq!(
            c.telemetry.access_log.unwrap().redact,
            vec!["authorization", "x-secret"]
        );
        let err = Config::from_env(&env(&[
            (ENV_SERVICE, "echo"),
            (ENV_TELEMETRY, "maybe"),
            (ENV_TRACE_COLLECTOR, "127.0.0.1:4317"),
            (ENV_TRACE_SAMPLING, "2"),
            (ENV_ACCESS_LOG, "xml"),
            (ENV_ACCESS_LOG_SAMPLING, "lots"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for key in [
            ENV_TELEMETRY,
            ENV_TRACE_COLLECTOR,
            ENV_TRACE_SAMPLING,
            ENV_ACCESS_LOG,
            ENV_ACCESS_LOG_SAMPLING,
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        assert_eq!(err.0.len(), 5, "{text}");
    }
}
