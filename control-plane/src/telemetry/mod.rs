//! The Mixer-style view of the mesh: receives the sidecars' per-interval
//! aggregates (`mesh.v1.Telemetry/Report`), keeps a rolling window of them
//! per sidecar, and answers golden-metric queries (rate, success rate,
//! latency percentiles per service and version) for meshctl and the release
//! controller, with no Prometheus server involved.

use mesh_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;

pub mod peers;
use tonic::{Request, Response, Status, Streaming};

/// The longest window a query may ask for; older reports are dropped.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);
/// The window when a query names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// A report the window refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No node.
    #[error("telemetry report without a node")]
    NoNode,
    /// Bucket bounds not ascending, or counts not one longer than bounds.
    #[error("telemetry report from {instance}: {problem}")]
    Buckets {
        /// Reporter.
        instance: String,
        /// What is wrong.
        problem: String,
    },
    /// A direction other than inbound or outbound.
    #[error("unknown direction {0:?}: expected inbound or outbound")]
    Direction(String),
    /// A pull of the window by someone other than a replica.
    #[error(
        "Held: only a replica of the control plane ({expected}) may pull its telemetry; the caller is {}",
        .caller.as_deref().unwrap_or("anonymous")
    )]
    NotAPeer {
        /// The caller's verified ID, if any.
        caller: Option<String>,
        /// The control plane's.
        expected: String,
    },
}

struct Received {
    at: Instant,
    /// The order this replica received it in; none for a report pulled
    /// from a peer, which is never served on (each report has one home).
    seq: Option<u64>,
    report: pb::TelemetryReport,
}

/// Reports per sidecar (namespace/service/instance), oldest first.
pub struct Window {
    reporters: Mutex<Reporters>,
    /// Names this process's numbering of reports: a peer's cursor from
    /// before a restart means nothing here, and its pull starts over.
    epoch: u64,
}

#[derive(Default)]
struct Reporters {
    by: HashMap<String, VecDeque<Received>>,
    /// The number of the last report received here.
    last: u64,
    /// When sidecars gone quiet were last forgotten.
    swept: Option<Instant>,
}

impl Default for Window {
    fn default() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Window {
            reporters: Mutex::default(),
            epoch: (nanos ^ u64::from(std::process::id()) << 40).max(1),
        }
    }
}

impl Reporters {
    /// Files `r` under `instance`, in time order: a pulled report arrives
    /// late, and goes where its age puts it.
    fn insert(&mut self, instance: String, r: Received) {
        let now = Instant::now();
        let q = self.by.entry(instance).or_default();
        let at = q.partition_point(|x| x.at <= r.at);
        q.insert(at, r);
        while q.front().is_some_and(|r| now - r.at > MAX_WINDOW) {
            q.pop_front();
        }
        // Sidecars gone for longer than the longest window are forgotten;
        // looked for once a second, not on every report of a large mesh.
        if self.swept.is_none_or(|t| now - t >= Duration::from_secs(1)) {
            self.by
                .retain(|_, q| q.back().is_some_and(|r| now - r.at <= MAX_WINDOW));
            self.swept = Some(now);
        }
    }
}

fn check(report: &pb::TelemetryReport) -> Result<String, Error> {
    let node = report.node.as_ref().ok_or(Error::NoNode)?;
    let instance = format!("{}/{}/{}", node.namespace, node.service, node.instance_id);
    let bounds = &report.bucket_bounds_seconds;
    let bad = |problem: String| Error::Buckets {
        instance: instance.clone(),
        problem,
    };
    if bounds.windows(2).any(|w| w[0] >= w[1]) || bounds.iter().any(|b| !b.is_finite()) {
        return Err(bad("bucket bounds must be finite and ascending".into()));
    }
    for t in &report.traffic {
        if t.latency_buckets.len() != bounds.len() + 1 {
            return Err(bad(format!(
                "{} latency buckets for {} bounds (expected {})",
                t.latency_buckets.len(),
                bounds.len(),
                bounds.len() + 1
            )));
        }
        if t.direction != "inbound" && t.direction != "outbound" {
            return Err(Error::Direction(t.direction.clone()));
        }
    }
    Ok(instance)
}

/// Merged latency buckets over one set of bounds.
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
        }
    }

    fn add(&mut self, bounds: &[f64], counts: &[u64]) {
        for (i, c) in counts.iter().enumerate() {
            // A sidecar with other bounds: file each bucket under the first
            // of ours that holds its upper bound.
            let upper = bounds.get(i).copied().unwrap_or(f64::INFINITY);
            let j = self
                .bounds
                .iter()
                .position(|b| upper <= *b)
                .unwrap_or(self.bounds.len());
            self.counts[j] += c;
        }
    }

    /// The q-quantile in seconds, interpolated inside its bucket as
    /// Prometheus's `histogram_quantile` does.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            if *c > 0 && (seen + c) as f64 >= rank {
                let Some(upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let into = (rank - seen as f64) / *c as f64;
                return Some(lower + (upper - lower) * into);
            }
            seen += c;
        }
        self.bounds.last().copied()
    }
}

#[derive(Default)]
struct Acc {
    reporters: u32,
    requests: u64,
    failures: u64,
    rps: f64,
    latency: Option<Histogram>,
}

impl Window {
    /// Adds one report from a sidecar.
    pub fn add(&self, report: pb::TelemetryReport) -> Result<(), Error> {
        let instance = check(&report)?;
        let mut reporters = self.lock();
        reporters.last += 1;
        let seq = Some(reporters.last);
        let at = Instant::now();
        reporters.insert(instance, Received { at, seq, report });
        Ok(())
    }

    /// Adds reports a peer received, each `age` ago; returns the first
    /// problem of those refused (the others are added).
    pub fn add_pulled(
        &self,
        reports: impl IntoIterator<Item = (Duration, pb::TelemetryReport)>,
    ) -> Option<Error> {
        let now = Instant::now();
        let mut refused = None;
        let mut reporters = self.lock();
        for (age, report) in reports {
            let instance = match check(&report) {
                Ok(i) => i,
                Err(e) => {
                    refused.get_or_insert(e);
                    continue;
                }
            };
            let Some(at) = now.checked_sub(age).filter(|_| age <= MAX_WINDOW) else {
                continue;
            };
            let seq = None;
            reporters.insert(instance, Received { at, seq, report });
        }
        refused
    }

    /// What a peer pulls: the reports received here after number `after`
    /// (all of them when `epoch` is another process's), each with its age.
    pub fn held(&self, epoch: u64, after: u64) -> pb::HeldResponse {
        let after = if epoch == self.epoch { after } else { 0 };
        let now = Instant::now();
        let reporters = self.lock();
        let mut reports = Vec::new();
        for q in reporters.by.values() {
            // Reports received here are numbered in their queue's order.
            for r in q.iter().rev() {
                match r.seq {
                    None => continue,
                    Some(seq) if seq <= after => break,
                    Some(_) => reports.push(pb::HeldReport {
                        age_ms: (now - r.at).as_millis() as u64,
                        report: Some(r.report.clone()),
                    }),
                }
            }
        }
        pb::HeldResponse {
            epoch: self.epoch,
            last: reporters.last,
            reports,
        }
    }

    /// This process's numbering: a pull answered with it reached itself.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reporters> {
        self.reporters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Golden metrics over the last `window`, one row per service (all
    /// versions) and one per service and version, sorted.
    pub fn stats(
        &self,
        service: Option<&str>,
        window: Duration,
        direction: &str,
    ) -> Vec<pb::StatsRow> {
        self.rows(service, window, direction, false)
    }

    /// `stats` over only the reports whose whole interval lies inside the
    /// window: a release's step judges the traffic since the step began,
    /// not a report that straddles its start.
    pub fn stats_within(
        &self,
        service: Option<&str>,
        window: Duration,
        direction: &str,
    ) -> Vec<pb::StatsRow> {
        self.rows(service, window, direction, true)
    }

    fn rows(
        &self,
        service: Option<&str>,
        window: Duration,
        direction: &str,
        whole: bool,
    ) -> Vec<pb::StatsRow> {
        let now = Instant::now();
        let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
        let reporters = self.lock();
        for q in reporters.by.values() {
            let recent: Vec<&pb::TelemetryReport> = q
                .iter()
                .filter(|r| {
                    let covered = if whole {
                        Duration::from_millis(r.report.interval_ms)
                    } else {
                        Duration::ZERO
                    };
                    now - r.at + covered <= window
                })
                .map(|r| &r.report)
                .collect();
            // Each sidecar's rate is its count over the time its own reports
            // cover, so a sidecar that joined mid-window is not diluted.
            let covered: u64 = recent.iter().map(|r| r.interval_ms).sum();
            if covered == 0 {
                continue;
            }
            let mut mine: BTreeMap<(String, String), Acc> = BTreeMap::new();
            for r in &recent {
                for t in r.traffic.iter().filter(|t| t.direction == direction) {
                    if service.is_some_and(|s| s != t.service) {
                        continue;
                    }
                    // Every aggregate counts toward its service's row, and
                    // toward its version's row when an endpoint answered.
                    let mut keys = vec![(t.service.clone(), String::new())];
                    if !t.version.is_empty() {
                        keys.push((t.service.clone(), t.version.clone()));
                    }
                    for key in keys {
                        let a = mine.entry(key).or_default();
                        a.requests += t.requests;
                        a.failures += t.failures;
                        a.latency
                            .get_or_insert_with(|| Histogram::new(&r.bucket_bounds_seconds))
                            .add(&r.bucket_bounds_seconds, &t.latency_buckets);
                    }
                }
            }
            for (key, m) in mine {
                let a = acc.entry(key).or_default();
                a.reporters += 1;
                a.requests += m.requests;
                a.failures += m.failures;
                a.rps += m.requests as f64 * 1000.0 / covered as f64;
                if let Some(h) = m.latency {
                    match &mut a.latency {
                        None => a.latency = Some(h),
                        Some(all) => all.add(&h.bounds, &h.counts),
                    }
                }
            }
        }
        acc.into_iter()
            .map(|((service, version), a)| {
                let q = |q: f64| {
                    a.latency
                        .as_ref()
                        .and_then(|h| h.quantile(q))
                        .map(|s| s * 1000.0)
                };
                pb::StatsRow {
                    service,
                    version,
                    reporters: a.reporters,
                    requests: a.requests,
                    failures: a.failures,
                    success_rate: (a.requests > 0)
                        .then(|| 1.0 - a.failures as f64 / a.requests as f64),
                    rps: a.rps,
                    p50_ms: q(0.5),
                    p95_ms: q(0.95),
                    p99_ms: q(0.99),
                }
            })
            .collect()
    }
}

/// The gRPC service sidecars report to; a report also counts as the
/// sidecar being seen, for proxy-status.
pub struct Service {
    /// Where reports go.
    pub window: std::sync::Arc<Window>,
    /// Whose last-seen times reports refresh.
    pub state: std::sync::Arc<crate::state::State>,
    /// The control plane's own ID: the only caller that may pull the
    /// window (`Held`).
    pub peer: String,
    /// Turns true when a stopping control plane ends every stream.
    pub ending: crate::listen::Ending,
}

#[tonic::async_trait]
impl pb::telemetry_server::Telemetry for Service {
    async fn report(
        &self,
        req: Request<Streaming<pb::TelemetryReport>>,
    ) -> Result<Response<pb::TelemetryAck>, Status> {
        let caller = crate::mtls::identity_of(&req);
        if caller.is_none() {
            self.state.speaks_for("Report", None, "", "")?;
        }
        let mut stream = req.into_inner();
        let mut ending = self.ending.clone();
        loop {
            let report = tokio::select! {
                next = stream.next() => match next {
                    Some(report) => report,
                    None => break,
                },
                _ = ending.ended() => return Err(crate::listen::Ending::status()),
            };
            // A bad report ends the stream with the reason; the window keeps
            // what it had.
            let report = report?;
            // Each report speaks for its node: nobody reports for another.
            if let Some(node) = &report.node {
                self.state.speaks_for(
                    "Report",
                    caller.as_deref(),
                    &node.namespace,
                    &node.service,
                )?;
                self.state
                    .proxies()
                    .seen(&node.namespace, &node.instance_id);
            }
            self.window.add(report)?;
        }
        Ok(Response::new(pb::TelemetryAck {}))
    }

    async fn held(
        &self,
        req: Request<pb::HeldRequest>,
    ) -> Result<Response<pb::HeldResponse>, Status> {
        let caller = crate::mtls::identity_of(&req);
        if caller.as_deref() != Some(self.peer.as_str()) {
            let expected = self.peer.clone();
            return Err(Error::NotAPeer { caller, expected }.into());
        }
        let r = req.into_inner();
        Ok(Response::new(self.window.held(r.epoch, r.after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];

    fn report(
        instance: &str,
        version: &str,
        interval_ms: u64,
        t: &[(&str, u64, u64, [u64; 4])],
    ) -> pb::TelemetryReport {
        pb::TelemetryReport {
            node: Some(pb::Node {
                service: "echo".into(),
                version: version.into(),
                namespace: "default".into(),
                instance_id: instance.into(),
            }),
            interval_ms,
            bucket_bounds_seconds: BOUNDS.to_vec(),
            traffic: t
                .iter()
                .map(
                    |(service, requests, failures, buckets)| pb::TrafficAggregate {
                        direction: "inbound".into(),
                        service: (*service).into(),
                        backend: (*service).into(),
                        version: version.into(),
                        requests: *requests,
                        failures: *failures,
                        latency_buckets: buckets.to_vec(),
                        latency_sum_seconds: 0.0,
                    },
                )
                .collect(),
        }
    }

    #[test]
    fn rows_per_service_and_version_with_rates_over_each_reporters_cover() {
        let w = Window::default();
        // v1: two 1 s intervals, 100 requests each, 10 failing.
        for _ in 0..2 {
            w.add(report(
                "a",
                "v1",
                1000,
                &[("echo.default", 100, 10, [50, 50, 0, 0])],
            ))
            .unwrap();
        }
        // v2 joined for one 500 ms interval.
        w.add(report(
            "b",
            "v2",
            500,
            &[("echo.default", 50, 0, [0, 0, 50, 0])],
        ))
        .unwrap();
        let rows = w.stats(Some("echo.default"), DEFAULT_WINDOW, "inbound");
        let find = |v: &str| rows.iter().find(|r| r.version == v).unwrap();
        let all = find("");
        assert_eq!((all.requests, all.failures, all.reporters), (250, 20, 2));
        assert!((all.rps - 200.0).abs() < 1e-9, "{}", all.rps);
        assert!((all.success_rate.unwrap() - 0.92).abs() < 1e-9);
        let v1 = find("v1");
        assert!((v1.rps - 100.0).abs() < 1e-9);
        assert!((v1.success_rate.unwrap() - 0.9).abs() < 1e-9);
        // 200 requests: half ≤ 10 ms, half in (10, 100] ms → p50 = 10 ms,
        // p95 = 10 + 90 × 0.9 = 91 ms.
        assert!((v1.p50_ms.unwrap() - 10.0).abs() < 1e-9);
        assert!((v1.p95_ms.unwrap() - 91.0).abs() < 1e-9);
        let v2 = find("v2");
        assert!((v2.rps - 100.0).abs() < 1e-9);
        assert!(v2.p50_ms.unwrap() > 100.0 && v2.p99_ms.unwrap() <= 1000.0);
        assert_eq!(rows.len(), 3);
        assert!(
            w.stats(Some("other.default"), DEFAULT_WINDOW, "inbound")
                .is_empty()
        );
        assert!(w.stats(None, DEFAULT_WINDOW, "outbound").is_empty());
        // Reports of 1 s (and one of 500 ms) just in: a 700 ms window
        // holds the whole of only the short one.
        let within = w.stats_within(None, Duration::from_millis(700), "inbound");
        assert_eq!(within.iter().map(|r| r.requests).max(), Some(50));
        assert!(within.iter().all(|r| r.version != "v1"), "{within:?}");
    }

    #[test]
    fn a_peer_pulls_what_was_received_here_once_and_never_what_was_pulled() {
        let here = Window::default();
        let one =
            |i: &str, n: u64| report(i, "v2", 1000, &[("echo.default", n, n / 2, [n, 0, 0, 0])]);
        here.add(one("a", 10)).unwrap();
        here.add(one("b", 20)).unwrap();
        // A first pull (no cursor) takes the whole window.
        let first = here.held(0, 0);
        assert_eq!((first.epoch, first.last), (here.epoch(), 2));
        let mut counts: Vec<u64> = first
            .reports
            .iter()
            .map(|h| h.report.as_ref().unwrap().traffic[0].requests)
            .collect();
        counts.sort();
        assert_eq!(counts, [10, 20]);
        // From the cursor, only what came since.
        here.add(one("a", 30)).unwrap();
        let next = here.held(first.epoch, first.last);
        assert_eq!(next.last, 3);
        assert_eq!(next.reports.len(), 1, "{:?}", next.reports);
        assert_eq!(
            next.reports[0].report.as_ref().unwrap().traffic[0].requests,
            30
        );
        assert!(here.held(next.epoch, next.last).reports.is_empty());
        // A cursor of another process's numbering starts over.
        assert_eq!(here.held(next.epoch + 1, next.last).reports.len(), 3);

        // The puller's window reads the peer's sidecars beside its own,
        // and serves on only its own.
        let there = Window::default();
        assert_ne!(there.epoch(), here.epoch());
        there.add(one("c", 40)).unwrap();
        let pulled = here
            .held(0, 0)
            .reports
            .into_iter()
            .map(|h| (Duration::from_millis(h.age_ms), h.report.unwrap()));
        assert!(there.add_pulled(pulled).is_none());
        let rows = there.stats(Some("echo.default"), DEFAULT_WINDOW, "inbound");
        let v2 = rows.iter().find(|r| r.version == "v2").unwrap();
        assert_eq!((v2.requests, v2.failures, v2.reporters), (100, 50, 3));
        let served = there.held(0, 0).reports;
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].report.as_ref().unwrap().traffic[0].requests, 40);
    }

    #[test]
    fn pulled_reports_keep_their_age_and_bad_ones_are_named() {
        let w = Window::default();
        let r = |n: u64| report("a", "v1", 1000, &[("echo.default", n, 0, [n, 0, 0, 0])]);
        let mut bad = r(1);
        bad.traffic[0].direction = "sideways".into();
        let refused = w.add_pulled([
            (Duration::from_secs(20), r(5)),
            (Duration::ZERO, bad),
            (Duration::from_secs(2), r(7)),
            // Older than any window: dropped.
            (MAX_WINDOW + Duration::from_secs(1), r(100)),
        ]);
        assert_eq!(refused, Some(Error::Direction("sideways".into())));
        let total = |window: Duration| {
            w.stats_within(None, window, "inbound")
                .iter()
                .find(|row| row.version.is_empty())
                .map_or(0, |row| row.requests)
        };
        // Received 2 s and 20 s ago (each covering 1 s), by age, not by
        // when they were pulled.
        assert_eq!(total(Duration::from_secs(5)), 7);
        assert_eq!(total(Duration::from_secs(30)), 12);
        assert_eq!(total(MAX_WINDOW), 12);
    }

    #[test]
    fn the_plus_inf_bucket_reports_the_last_bound() {
        let w = Window::default();
        w.add(report(
            "a",
            "v1",
            1000,
            &[("echo.default", 10, 0, [0, 0, 0, 10])],
        ))
        .unwrap();
        let rows = w.stats(None, DEFAULT_WINDOW, "inbound");
        assert_eq!(rows[0].p99_ms, Some(1000.0));
    }

    #[test]
    fn malformed_reports_are_refused_naming_the_problem() {
        let w = Window::default();
        let mut r = report("a", "v1", 1000, &[("echo.default", 1, 0, [1, 0, 0, 0])]);
        r.traffic[0].latency_buckets.pop();
        let e = w.add(r).unwrap_err().to_string();
        assert!(
            e.contains("3 latency buckets for 3 bounds (expected 4)"),
            "{e}"
        );
        let mut r = report("a", "v1", 1000, &[]);
        r.bucket_bounds_seconds = vec![1.0, 0.5];
        assert!(w.add(r).unwrap_err().to_string().contains("ascending"));
        let mut r = report("a", "v1", 1000, &[("echo.default", 1, 0, [1, 0, 0, 0])]);
        r.traffic[0].direction = "sideways".into();
        assert_eq!(w.add(r).unwrap_err(), Error::Direction("sideways".into()));
        assert_eq!(
            w.add(pb::TelemetryReport::default()).unwrap_err(),
            Error::NoNode
        );
        assert!(w.stats(None, DEFAULT_WINDOW, "inbound").is_empty());
    }
}
