//! A release's spec as the controller runs it: every field validated and
//! every default filled in, from `meshctl release start`'s flags or from a
//! Release document; every problem named at once.

pub use super::hook::{Hook, Webhook};
use crate::manifest::{self, meta};
use mesh_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Steps when none are given (percent of traffic on the canary).
pub const DEFAULT_STEPS: [u32; 5] = [5, 10, 25, 50, 100];
/// Time at each step before its check.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// Least canary success rate, percent.
pub const DEFAULT_SUCCESS_RATE: f64 = 99.0;
/// Most canary p99, ms.
pub const DEFAULT_P99_MS: f64 = 500.0;
/// Least canary requests in a window for a check to count.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// Failed checks in a row that roll back.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 2;
/// A release that has not moved for this long rolls back.
pub const DEFAULT_PROGRESS_DEADLINE_MS: u64 = 600_000;
/// The shortest interval: a window needs a few sidecar reports in it.
pub const MIN_INTERVAL_MS: u64 = 1_000;

/// A validated release spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// The service whose split moves.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// Keeps the traffic; empty until the controller resolves it from the split.
    pub stable: String,
    /// Being released.
    pub canary: String,
    /// Canary weights, ascending, each 1-100.
    pub steps: Vec<u32>,
    /// Time at each step before its check.
    pub interval_ms: u64,
    /// Least canary success rate, percent.
    pub success_rate: f64,
    /// Most canary p99, ms.
    pub p99_ms: f64,
    /// Least canary requests in a window.
    pub min_requests: u64,
    /// Failed checks in a row that roll back.
    pub failure_threshold: u32,
    /// No progress for this long rolls back.
    pub progress_deadline_ms: u64,
    /// Most points the canary's success rate may trail the stable's by.
    pub max_success_gap: Option<f64>,
    /// Most canary p99 / stable p99.
    pub max_p99_ratio: Option<f64>,
    /// Wait at the last step for `meshctl release promote`.
    pub manual_promotion: bool,
    /// Hooks the release calls.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// While under way, an idempotent request failing on the canary is
    /// retried once on the stable.
    #[serde(default = "shield_by_default")]
    pub shield: bool,
}

fn shield_by_default() -> bool {
    true
}

impl Spec {
    /// The hooks called at `hook`.
    pub fn hooks(&self, hook: Hook) -> impl Iterator<Item = &Webhook> {
        self.webhooks.iter().filter(move |w| w.hook == hook)
    }
}

/// Where the spec came from, for the problems' file and line.
struct Origin<'a> {
    file: &'a str,
    line: usize,
    object: String,
}

impl Origin<'_> {
    fn problem(&self, field: &str, problem: String) -> manifest::Error {
        manifest::Error {
            file: self.file.into(),
            line: self.line,
            object: Some(self.object.clone()),
            field: Some(field.into()),
            problem,
        }
    }
}

impl Spec {
    /// A spec from `meshctl release start`'s flags.
    pub fn from_proto(spec: &pb::ReleaseSpec) -> Result<Spec, Vec<manifest::Error>> {
        let namespace = if spec.namespace.is_empty() {
            meta::DEFAULT_NAMESPACE
        } else {
            &spec.namespace
        };
        let origin = Origin {
            file: "<flags>",
            line: 0,
            object: format!("Release {namespace}/{}", spec.service),
        };
        validate(spec, &origin, Vec::new())
    }

    /// A spec from a Release document (the one document of `file`).
    pub fn from_file(file: &str, content: &str) -> Result<Spec, Vec<manifest::Error>> {
        let docs = manifest::parse(file, content)?;
        let mut releases = docs.iter().filter_map(|d| match &d.doc {
            manifest::Document::Release(r) => Some((d, r)),
            _ => None,
        });
        let whole = |problem: &str| manifest::Error {
            file: file.into(),
            line: 0,
            object: None,
            field: None,
            problem: problem.into(),
        };
        let Some((at, r)) = releases.next() else {
            return Err(vec![whole("no Release document in the file")]);
        };
        if releases.next().is_some() || docs.len() > 1 {
            return Err(vec![whole(
                "one Release document per file, and nothing else in it",
            )]);
        }
        let origin = Origin {
            file,
            line: at.line,
            object: format!("Release {}/{}", r.metadata.namespace, r.metadata.name),
        };
        let (raw, problems) = from_document(r, &origin);
        validate(&raw, &origin, problems)
    }
}

/// The document's fields in the flags' form; what does not convert is named.
fn from_document(
    r: &manifest::release::Release,
    origin: &Origin<'_>,
) -> (pb::ReleaseSpec, Vec<manifest::Error>) {
    let mut problems = Vec::new();
    let s = &r.spec;
    let a = s.analysis.clone().unwrap_or_default();
    let c = a.compare.clone().unwrap_or_default();
    let mut count = |field: &str, n: &Option<meta::RawNumber>| -> Option<u32> {
        let n = n.as_ref()?;
        n.as_count(field)
            .map_err(|e| problems.push(origin.problem(field, e)))
            .ok()
    };
    let steps = s.steps.as_ref().map(|steps| {
        (0..steps.len())
            .filter_map(|i| count(&format!("spec.steps[{i}]"), &Some(steps[i].clone())))
            .collect()
    });
    let step_weight = count("spec.stepWeight", &s.step_weight);
    let max_weight = count("spec.maxWeight", &s.max_weight);
    let min_requests = count("spec.analysis.minRequests", &a.min_requests);
    let failure_threshold = count("spec.analysis.failureThreshold", &a.failure_threshold);
    let mut duration = |field: &str, d: &Option<String>| -> Option<u64> {
        let d = d.as_ref()?;
        meta::duration_ms(d)
            .map_err(|e| problems.push(origin.problem(field, e)))
            .ok()
    };
    let interval_ms = duration("spec.interval", &s.interval).unwrap_or(0);
    let p99_ms = duration("spec.analysis.p99", &a.p99).map(|ms| ms as f64);
    let progress_deadline_ms = duration("spec.analysis.progressDeadline", &a.progress_deadline);
    if s.service != r.metadata.name {
        // One release per service, so the object's name is the service's.
        problems.push(origin.problem(
            "metadata.name",
            format!(
                "{:?} differs from spec.service {:?}; name a Release after its service",
                r.metadata.name, s.service
            ),
        ));
    }
    let mut raw = pb::ReleaseSpec {
        service: s.service.clone(),
        namespace: r.metadata.namespace.clone(),
        stable: s.stable.clone().unwrap_or_default(),
        canary: s.canary.clone(),
        steps: steps.unwrap_or_default(),
        step_weight: step_weight.unwrap_or(0),
        max_weight: max_weight.unwrap_or(0),
        interval_ms,
        success_rate: a.success_rate,
        p99_ms,
        min_requests: min_requests.map(u64::from),
        failure_threshold,
        progress_deadline_ms,
        max_success_gap: c.max_success_rate_gap,
        max_p99_ratio: c.max_p99_ratio,
        manual_promotion: s.manual_promotion.unwrap_or(false),
        webhooks: Vec::new(),
        shield: s.shield,
    };
    for (i, w) in s.webhooks.iter().enumerate() {
        let at = |f: &str| format!("spec.webhooks[{i}].{f}");
        let timeout_ms = w.timeout.as_ref().and_then(|t| {
            meta::duration_ms(t)
                .map_err(|e| problems.push(origin.problem(&at("timeout"), e)))
                .ok()
        });
        let retries = w.retries.as_ref().and_then(|n| {
            n.as_count("retries")
                .map_err(|e| problems.push(origin.problem(&at("retries"), e)))
                .ok()
        });
        let ca_bundle = w.ca_bundle.as_ref().and_then(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| {
                    problems.push(origin.problem(&at("caBundle"), format!("not base64: {e}")))
                })
                .ok()
        });
        raw.webhooks.push(pb::ReleaseWebhook {
            name: w.name.clone(),
            r#type: w.kind.clone(),
            url: w.url.clone(),
            timeout_ms: timeout_ms.unwrap_or(0),
            retries,
            metadata: w.metadata.clone().into_iter().collect(),
            ca_bundle: ca_bundle.unwrap_or_default(),
        });
    }
    (raw, problems)
}

fn validate(
    s: &pb::ReleaseSpec,
    origin: &Origin<'_>,
    mut problems: Vec<manifest::Error>,
) -> Result<Spec, Vec<manifest::Error>> {
    let mut bad = |field: &str, problem: String| problems.push(origin.problem(field, problem));
    let webhooks = super::hook::validate(s, &mut bad);
    if s.service.is_empty() {
        bad(
            "spec.service",
            "missing: name the service to release".into(),
        );
    }
    if s.canary.is_empty() {
        bad("spec.canary", "missing: name the backend to release".into());
    }
    if !s.canary.is_empty() && (s.canary == s.stable || s.canary == s.service) {
        bad(
            "spec.canary",
            format!(
                "{:?} is the {}; the canary is another backend",
                s.canary,
                if s.canary == s.stable {
                    "stable"
                } else {
                    "service itself"
                }
            ),
        );
    }
    let steps = steps(s, &mut bad);
    let interval_ms = match s.interval_ms {
        0 => DEFAULT_INTERVAL_MS,
        ms => ms,
    };
    let longest = crate::telemetry::MAX_WINDOW.as_millis() as u64;
    if !(MIN_INTERVAL_MS..=longest).contains(&interval_ms) {
        bad(
            "spec.interval",
            format!(
                "{interval_ms} ms is outside {MIN_INTERVAL_MS} ms to {longest} ms (the telemetry the control plane keeps)"
            ),
        );
    }
    let success_rate = s.success_rate.unwrap_or(DEFAULT_SUCCESS_RATE);
    if !(0.0..=100.0).contains(&success_rate) {
        bad(
            "spec.analysis.successRate",
            format!("{success_rate} is not a percentage (0-100)"),
        );
    }
    let p99_ms = s.p99_ms.unwrap_or(DEFAULT_P99_MS);
    if !(p99_ms.is_finite() && p99_ms > 0.0) {
        bad(
            "spec.analysis.p99",
            format!("{p99_ms} ms must be more than 0"),
        );
    }
    let min_requests = s.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    if min_requests == 0 {
        bad(
            "spec.analysis.minRequests",
            "0 would promote on no data; at least 1".into(),
        );
    }
    let failure_threshold = s.failure_threshold.unwrap_or(DEFAULT_FAILURE_THRESHOLD);
    if failure_threshold == 0 {
        bad(
            "spec.analysis.failureThreshold",
            "must be at least 1".into(),
        );
    }
    let progress_deadline_ms = s
        .progress_deadline_ms
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE_MS);
    if progress_deadline_ms < interval_ms {
        bad(
            "spec.analysis.progressDeadline",
            format!("{progress_deadline_ms} ms is shorter than the interval ({interval_ms} ms)"),
        );
    }
    if let Some(gap) = s.max_success_gap
        && !(0.0..=100.0).contains(&gap)
    {
        bad(
            "spec.analysis.compare.maxSuccessRateGap",
            format!("{gap} is not a number of points (0-100)"),
        );
    }
    if let Some(ratio) = s.max_p99_ratio
        && !(ratio.is_finite() && ratio > 0.0)
    {
        bad(
            "spec.analysis.compare.maxP99Ratio",
            format!("{ratio} must be more than 0"),
        );
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Spec {
        service: s.service.clone(),
        namespace: if s.namespace.is_empty() {
            meta::DEFAULT_NAMESPACE.into()
        } else {
            s.namespace.clone()
        },
        stable: s.stable.clone(),
        canary: s.canary.clone(),
        steps,
        interval_ms,
        success_rate,
        p99_ms,
        min_requests,
        failure_threshold,
        progress_deadline_ms,
        max_success_gap: s.max_success_gap,
        max_p99_ratio: s.max_p99_ratio,
        manual_promotion: s.manual_promotion,
        webhooks,
        shield: s.shield.unwrap_or(true),
    })
}

/// The steps: given, or stepWeight up to maxWeight, or the default.
fn steps(s: &pb::ReleaseSpec, bad: &mut impl FnMut(&str, String)) -> Vec<u32> {
    if !s.steps.is_empty() && (s.step_weight > 0 || s.max_weight > 0) {
        bad(
            "spec.steps",
            "give steps or stepWeight/maxWeight, not both".into(),
        );
        return Vec::new();
    }
    if s.steps.is_empty() && s.step_weight == 0 {
        if s.max_weight > 0 {
            bad("spec.stepWeight", "missing: maxWeight needs it".into());
        }
        return DEFAULT_STEPS.to_vec();
    }
    if s.steps.is_empty() {
        let max = if s.max_weight == 0 { 100 } else { s.max_weight };
        if s.step_weight > 100 || max > 100 || s.step_weight > max {
            bad(
                "spec.stepWeight",
                format!(
                    "{} up to {max}: both are percentages, the step no more than the maximum",
                    s.step_weight
                ),
            );
            return Vec::new();
        }
        return (1..=max / s.step_weight)
            .map(|i| i * s.step_weight)
            .collect();
    }
    for (i, w) in s.steps.iter().enumerate() {
        if !(1..=100).contains(w) {
            bad(
                &format!("spec.steps[{i}]"),
                format!("{w} is not a percentage of 1-100"),
            );
        } else if i > 0 && *w <= s.steps[i - 1] {
            bad(
                &format!("spec.steps[{i}]"),
                format!("{w} after {}: steps must ascend", s.steps[i - 1]),
            );
        }
    }
    s.steps.clone()
}
