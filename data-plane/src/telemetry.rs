//! Mixer-style reporting: per-interval aggregates of the requests this
//! sidecar saw (counts, failures, latency buckets per service, backend and
//! version), streamed to the control plane over `mesh.v1.Telemetry/Report`.
//! The control plane keeps the rolling window; the sidecar keeps only the
//! interval in progress, so memory is bounded by the label set of one
//! interval.

use mesh_proto::v1 as pb;
use mesh_proto::v1::telemetry_client::TelemetryClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Key of one aggregate: direction, service, backend, version.
type Key = (&'static str, String, String, String);

#[derive(Default)]
struct Agg {
    requests: u64,
    failures: u64,
    buckets: Vec<u64>,
    sum: f64,
}

struct Interval {
    started: Instant,
    traffic: HashMap<Key, Agg>,
}

/// The interval in progress.
pub struct Aggregates {
    bounds: &'static [f64],
    current: Mutex<Interval>,
}

impl Aggregates {
    /// Empty aggregates over latency buckets with these upper bounds (s).
    pub fn new(bounds: &'static [f64]) -> Self {
        Aggregates {
            bounds,
            current: Mutex::new(Interval {
                started: Instant::now(),
                traffic: HashMap::new(),
            }),
        }
    }

    /// Adds one request.
    pub fn record(&self, key: Key, failed: bool, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let agg = cur.traffic.entry(key).or_default();
        if agg.buckets.is_empty() {
            agg.buckets = vec![0; self.bounds.len() + 1];
        }
        agg.requests += 1;
        agg.failures += u64::from(failed);
        agg.buckets[bucket] += 1;
        agg.sum += secs;
    }

    /// Ends the interval in progress and returns it as a report.
    pub fn take(&self, node: &pb::Node) -> pb::TelemetryReport {
        let (elapsed, traffic) = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now - cur.started;
            cur.started = now;
            (elapsed, std::mem::take(&mut cur.traffic))
        };
        pb::TelemetryReport {
            node: Some(node.clone()),
            interval_ms: elapsed.as_millis() as u64,
            bucket_bounds_seconds: self.bounds.to_vec(),
            traffic: traffic
                .into_iter()
                .map(
                    |((direction, service, backend, version), a)| pb::TrafficAggregate {
                        direction: direction.into(),
                        service,
                        backend,
                        version,
                        requests: a.requests,
                        failures: a.failures,
                        latency_buckets: a.buckets,
                        latency_sum_seconds: a.sum,
                    },
                )
                .collect(),
        }
    }
}

/// Streams one report per `interval` for as long as the sidecar runs,
/// reconnecting with backoff. A report taken while the stream is broken is
/// lost: the window is for live decisions, not accounting (Prometheus
/// counters on /metrics are never reset).
pub async fn report(
    channel: Channel,
    node: pb::Node,
    aggregates: Arc<Aggregates>,
    interval: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = TelemetryClient::new(channel.clone());
        let call = client.report(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::pin!(call);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut sent = false;
        loop {
            tokio::select! {
                r = &mut call => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "telemetry stream ended");
                    }
                    break;
                }
                _ = tick.tick() => {
                    if tx.send(aggregates.take(&node)).await.is_err() {
                        break;
                    }
                    sent = true;
                }
            }
        }
        if sent {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_holds_counts_failures_and_buckets_then_starts_empty() {
        static BOUNDS: [f64; 2] = [0.01, 0.1];
        let a = Aggregates::new(&BOUNDS);
        let key = || {
            (
                "outbound",
                "s".to_string(),
                "b".to_string(),
                "v1".to_string(),
            )
        };
        a.record(key(), false, Duration::from_millis(5));
        a.record(key(), true, Duration::from_millis(50));
        a.record(key(), false, Duration::from_secs(3));
        let node = pb::Node::default();
        let r = a.take(&node);
        assert_eq!(r.bucket_bounds_seconds, vec![0.01, 0.1]);
        assert_eq!(r.traffic.len(), 1);
        let t = &r.traffic[0];
        assert_eq!((t.requests, t.failures), (3, 1));
        assert_eq!(t.latency_buckets, vec![1, 1, 1]);
        assert!((t.latency_sum_seconds - 3.055).abs() < 1e-9);
        assert!(a.take(&node).traffic.is_empty());
    }
}
