//! The sidecar's telemetry settings: the master switch, aggregate reports,
//! trace export and access logs, parsed with the rest of `MESH_PROXY_*`.

use super::parse::Parser;
use std::time::Duration;

/// `on` (default) or `off`: off counts nothing, reports nothing, traces
/// nothing and logs no access (the baseline for overhead measurements).
pub const ENV_TELEMETRY: &str = "MESH_PROXY_TELEMETRY";
/// How often aggregates go to the control plane, in ms.
pub const ENV_TELEMETRY_INTERVAL_MS: &str = "MESH_PROXY_TELEMETRY_INTERVAL_MS";
const DEFAULT_TELEMETRY_INTERVAL_MS: u64 = 5_000;
/// OTLP/gRPC collector URL for traces; unset means no tracing at all.
pub const ENV_TRACE_COLLECTOR: &str = "MESH_PROXY_TRACE_COLLECTOR";
/// Share of new traces (no sampled parent) that are sampled, 0–1.
pub const ENV_TRACE_SAMPLING: &str = "MESH_PROXY_TRACE_SAMPLING";
const DEFAULT_TRACE_SAMPLING: f64 = 0.01;
/// `json` writes one access-log line per request on stdout; unset or `off`: none.
pub const ENV_ACCESS_LOG: &str = "MESH_PROXY_ACCESS_LOG";
/// Share of requests logged, 0–1.
pub const ENV_ACCESS_LOG_SAMPLING: &str = "MESH_PROXY_ACCESS_LOG_SAMPLING";
/// Comma-separated request headers whose values are logged as `[REDACTED]`;
/// replaces the default list.
pub const ENV_ACCESS_LOG_REDACT: &str = "MESH_PROXY_ACCESS_LOG_REDACT";
const DEFAULT_REDACT: &str = "authorization,proxy-authorization,cookie,x-api-key";

/// Telemetry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// Master switch.
    pub enabled: bool,
    /// Aggregate reporting interval.
    pub report_interval: Duration,
    /// Trace export, when a collector is configured.
    pub trace: Option<Trace>,
    /// Access logs, when on.
    pub access_log: Option<AccessLog>,
}

/// Trace export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// OTLP/gRPC collector URL.
    pub collector: String,
    /// Sampling ratio for traces this sidecar starts.
    pub sampling: f64,
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// Share of requests logged.
    pub sampling: f64,
    /// Lower-case header names whose values are never written.
    pub redact: Vec<String>,
}

impl Parser<'_> {
    fn ratio(&mut self, key: &str, default: f64) -> f64 {
        let r = self.parse(key, default, "a ratio");
        if !(0.0..=1.0).contains(&r) {
            self.errors
                .push(format!("{key}={r}: must be between 0 and 1"));
            return default;
        }
        r
    }

    pub(super) fn telemetry(&mut self) -> Telemetry {
        let enabled = match self.string(ENV_TELEMETRY).as_deref().map(str::trim) {
            None | Some("on") => true,
            Some("off") => false,
            Some(v) => {
                self.errors
                    .push(format!("{ENV_TELEMETRY}={v:?}: must be on or off"));
                true
            }
        };
        let report_interval = self.millis(ENV_TELEMETRY_INTERVAL_MS, DEFAULT_TELEMETRY_INTERVAL_MS);
        let sampling = self.ratio(ENV_TRACE_SAMPLING, DEFAULT_TRACE_SAMPLING);
        let trace = self
            .string(ENV_TRACE_COLLECTOR)
            .map(|c| c.trim().to_string());
        if let Some(c) = &trace
            && !(c.starts_with("http://") || c.starts_with("https://"))
        {
            self.errors.push(format!(
                "{ENV_TRACE_COLLECTOR}={c:?}: must be a URL such as http://127.0.0.1:4317"
            ));
        }
        let log_sampling = self.ratio(ENV_ACCESS_LOG_SAMPLING, 1.0);
        let redact = self
            .string(ENV_ACCESS_LOG_REDACT)
            .unwrap_or_else(|| DEFAULT_REDACT.into())
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let access_log = match self.string(ENV_ACCESS_LOG).as_deref().map(str::trim) {
            None | Some("off") => None,
            Some("json") => Some(AccessLog {
                sampling: log_sampling,
                redact,
            }),
            Some(v) => {
                self.errors
                    .push(format!("{ENV_ACCESS_LOG}={v:?}: must be json or off"));
                None
            }
        };
        Telemetry {
            enabled,
            report_interval,
            trace: trace.map(|collector| Trace {
                collector,
                sampling,
            }),
            access_log,
        }
    }
}
