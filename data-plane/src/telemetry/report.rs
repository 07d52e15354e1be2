//! Mixer-style reporting: per-interval aggregates of the requests this
//! sidecar saw (counts, failures, latency buckets per service, backend and
//! version), streamed to the control plane over `mesh.v1.Telemetry/Report`.
//! The control plane keeps the rolling window; the sidecar keeps only the
//! interval in progress (counts per label set, swapped to zero at each
//! report).

use mesh_proto::v1 as pb;
use mesh_proto::v1::telemetry_client::TelemetryClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Key of one aggregate: direction, service, backend, version.
pub type Key = (&'static str, String, String, String);

/// One aggregate's counts since the last report. Requests add with atomics;
/// the reporter swaps them to zero, so the hot path takes no lock.
#[derive(Debug)]
pub struct Cell {
    bounds: &'static [f64],
    requests: AtomicU64,
    failures: AtomicU64,
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Cell {
    /// Adds one request that took `secs`.
    pub fn record(&self, failed: bool, secs: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Every aggregate this sidecar has seen, and when the interval began.
pub struct Aggregates {
    bounds: &'static [f64],
    cells: Mutex<HashMap<Key, Arc<Cell>>>,
    started: Mutex<Instant>,
}

impl Aggregates {
    /// Empty aggregates over latency buckets with these upper bounds (s).
    pub fn new(bounds: &'static [f64]) -> Self {
        Aggregates {
            bounds,
            cells: Mutex::default(),
            started: Mutex::new(Instant::now()),
        }
    }

    /// The cell of `key`, created on first use. Cells live as long as the
    /// sidecar: their number is bounded like the metric label sets.
    pub fn cell(&self, key: Key) -> Arc<Cell> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Cell {
                    bounds: self.bounds,
                    requests: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    buckets: (0..=self.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                    sum_micros: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Ends the interval in progress and returns it as a report.
    pub fn take(&self, node: &pb::Node) -> pb::TelemetryReport {
        let elapsed = {
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let elapsed = now - *started;
            *started = now;
            elapsed
        };
        let cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let mut traffic = Vec::new();
        for ((direction, service, backend, version), c) in cells.iter() {
            let requests = c.requests.swap(0, Ordering::Relaxed);
            if requests == 0 {
                continue;
            }
            traffic.push(pb::TrafficAggregate {
                direction: (*direction).into(),
                service: service.clone(),
                backend: backend.clone(),
                version: version.clone(),
                requests,
                failures: c.failures.swap(0, Ordering::Relaxed),
                latency_buckets: c
                    .buckets
                    .iter()
                    .map(|b| b.swap(0, Ordering::Relaxed))
                    .collect(),
                latency_sum_seconds: c.sum_micros.swap(0, Ordering::Relaxed) as f64 / 1e6,
            });
        }
        pb::TelemetryReport {
            node: Some(node.clone()),
            interval_ms: elapsed.as_millis() as u64,
            bucket_bounds_seconds: self.bounds.to_vec(),
            traffic,
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
        let c = a.cell(key());
        c.record(false, 0.005);
        a.cell(key()).record(true, 0.05);
        c.record(false, 3.0);
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
