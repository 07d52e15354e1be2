//! mesh-control's own metrics, served at `/metrics` on its HTTP port:
//! connections each listener holds open and those it refused at its limit,
//! registrations held and those refused. Label values are names from this
//! code (listeners, refusal reasons), never from requests.

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

/// The control plane's registry.
pub struct Metrics {
    registry: Registry,
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
        Metrics {
            registry,
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
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
