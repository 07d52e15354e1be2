//! mesh-control's own metrics, served at `/metrics` on its HTTP port:
//! connections each listener holds open and those it refused at its limit,
//! registrations held and those refused, and the releases (`mesh_release_*`:
//! each service's phase, canary weight and checks by result). Label values
//! are names from this code (listeners, refusal reasons, phases) or from
//! release specs (services), never from requests.

use crate::listen::Limit;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `grpc`, `admin` or `http`.
    pub listener: &'static str,
}

/// Why a registration call was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A `registry::claim::Refusal` reason.
    pub reason: &'static str,
}

/// Registered instances (leases) held, and calls refused, by reason.
#[derive(Clone, Debug, Default)]
pub struct Registrations {
    /// Leases held now.
    pub held: Gauge,
    refused: Family<ReasonLabels, Counter>,
}

impl Registrations {
    /// Counts one refusal.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// One service's release.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    /// The service's namespace.
    pub namespace: String,
    /// The service released.
    pub service: String,
}

/// One phase of one service's release.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The service's namespace.
    pub namespace: String,
    /// The service released.
    pub service: String,
    /// A release phase.
    pub phase: &'static str,
}

/// One check result of one service's releases.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The service's namespace.
    pub namespace: String,
    /// The service released.
    pub service: String,
    /// passed, failed or no-data.
    pub result: &'static str,
}

/// The releases' metrics, shared with the controller that sets them.
#[derive(Clone, Debug, Default)]
pub struct Releases {
    /// 1 for the phase each service's latest release is in, 0 for the others.
    pub phase: Family<PhaseLabels, Gauge>,
    /// The canary's weight asked for, percent.
    pub canary_weight: Family<ReleaseLabels, Gauge>,
    /// Checks by result.
    pub checks: Family<CheckLabels, Counter>,
}

impl Releases {
    /// Shows `phase` (of `phases`) and `weight` for `namespace/service`.
    pub fn observe(
        &self,
        namespace: &str,
        service: &str,
        phase: &str,
        phases: &[&'static str],
        weight: u32,
    ) {
        for p in phases {
            let labels = PhaseLabels {
                namespace: namespace.into(),
                service: service.into(),
                phase: p,
            };
            self.phase
                .get_or_create(&labels)
                .set(i64::from(*p == phase));
        }
        let labels = ReleaseLabels {
            namespace: namespace.into(),
            service: service.into(),
        };
        self.canary_weight
            .get_or_create(&labels)
            .set(i64::from(weight));
    }

    /// Counts one check of `namespace/service` with `result`.
    pub fn checked(&self, namespace: &str, service: &str, result: &'static str) {
        let labels = CheckLabels {
            namespace: namespace.into(),
            service: service.into(),
            result,
        };
        self.checks.get_or_create(&labels).inc();
    }
}

/// The control plane's registry.
pub struct Metrics {
    registry: Registry,
    /// `mesh_release_*`, named as the dashboard's other mesh metrics are.
    release_registry: Registry,
    /// Releases, shared with the controller that sets them.
    pub releases: Releases,
    open: Family<ListenerLabels, Gauge>,
    refused: Family<ListenerLabels, Counter>,
    /// Registrations, shared with the state that counts them.
    pub registrations: Registrations,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mesh_control");
        let open = Family::<ListenerLabels, Gauge>::default();
        let refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_open",
            "Connections a listener holds open now",
            open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed on accept because the listener had its limit (--max-connections) open",
            refused.clone(),
        );
        let registrations = Registrations::default();
        registry.register(
            "registrations",
            "Registered instances (heartbeat leases) held now",
            registrations.held.clone(),
        );
        registry.register(
            "registration_refusals",
            "Discovery, heartbeat, deregistration and telemetry calls refused because the caller may not speak for the node it names",
            registrations.refused.clone(),
        );
        let releases = Releases::default();
        let mut release_registry = Registry::with_prefix("mesh_release");
        release_registry.register(
            "phase",
            "1 for the phase each service's latest release is in (Progressing, WaitingForTraffic, Paused, WaitingForPromotion, Promoted, RolledBack, Aborted), 0 for the others",
            releases.phase.clone(),
        );
        release_registry.register(
            "canary_weight",
            "The canary's weight each service's latest release asks for, percent",
            releases.canary_weight.clone(),
        );
        release_registry.register(
            "checks",
            "Release checks by result: passed, failed or no-data (too few canary requests)",
            releases.checks.clone(),
        );
        Metrics {
            registry,
            release_registry,
            releases,
            open,
            refused,
            registrations,
        }
    }
}

impl Metrics {
    /// The connection limit of listener `what`, counted here.
    pub fn limit(&self, what: &'static str, max: usize) -> Limit {
        let labels = ListenerLabels { listener: what };
        Limit::new(
            what,
            max,
            self.open.get_or_create(&labels).clone(),
            self.refused.get_or_create(&labels).clone(),
        )
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ =
            prometheus_client::encoding::text::encode_registry(&mut out, &self.release_registry);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `mesh_release_*` metric and label the dashboard's release
    /// panel asks for is one this registry exports.
    #[test]
    fn the_dashboard_reads_the_release_metrics_exported() {
        let m = Metrics::default();
        let phases = ["Progressing", "RolledBack"];
        m.releases
            .observe("default", "echo", "RolledBack", &phases, 0);
        m.releases.checked("default", "echo", "failed");
        let text = m.render();
        assert!(
            text.contains(
                "mesh_release_phase{namespace=\"default\",service=\"echo\",phase=\"RolledBack\"} 1"
            ) && text.contains(
                "mesh_release_phase{namespace=\"default\",service=\"echo\",phase=\"Progressing\"} 0"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../install/grafana/mesh-dashboard.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let exprs: Vec<String> = dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap().iter())
            .filter_map(|t| t["expr"].as_str())
            .filter(|e| e.contains("mesh_release_"))
            .map(String::from)
            .collect();
        assert!(exprs.len() >= 3, "{exprs:?}");
        for e in &exprs {
            for word in e.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if word.starts_with("mesh_release_") {
                    let name = word.trim_end_matches("_total");
                    assert!(text.contains(name), "{word} (in {e}) is not exported");
                }
            }
            let by = e
                .split("by (")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap();
            for label in by.split(',').map(str::trim) {
                assert!(
                    text.contains(&format!("{label}=\"")),
                    "label {label} (in {e})"
                );
            }
        }
    }
}
