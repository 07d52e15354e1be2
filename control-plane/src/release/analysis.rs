//! One step's check: the canary's own traffic in the step's window against
//! the spec's thresholds, and against the stable's in the same window.
//! Pure, so every verdict is shown by a unit test.

use super::spec::Spec;
use serde::{Deserialize, Serialize};

/// One backend's own traffic (what its sidecars served) in a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Requests served.
    pub requests: u64,
    /// 5xx and gRPC errors among them.
    pub failures: u64,
    /// Percent, when any request was served.
    pub success_rate: Option<f64>,
    /// Milliseconds, when any request was served.
    pub p99_ms: Option<f64>,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every threshold held.
    Passed,
    /// At least one did not.
    Failed,
    /// Too few canary requests to judge.
    NoData,
    /// Moved on by `meshctl release promote`, without a check.
    ByHand,
}

impl Outcome {
    /// As status shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::NoData => "no-data",
            Outcome::ByHand => "promoted-by-hand",
        }
    }
}

/// The verdict on `canary` (and `stable`, for the comparisons), with what
/// was measured against what.
pub fn judge(spec: &Spec, canary: &Sample, stable: &Sample) -> (Outcome, String) {
    if canary.requests < spec.min_requests {
        return (
            Outcome::NoData,
            format!(
                "{} canary requests in the window, {} needed",
                canary.requests, spec.min_requests
            ),
        );
    }
    let mut failed = Vec::new();
    let mut held = Vec::new();
    let sr = canary.success_rate.unwrap_or(0.0);
    let line = format!("success rate {sr:.1}%");
    if sr < spec.success_rate {
        failed.push(format!("{line} < {:.1}%", spec.success_rate));
    } else {
        held.push(format!("{line} ≥ {:.1}%", spec.success_rate));
    }
    let p99 = canary.p99_ms.unwrap_or(0.0);
    if p99 > spec.p99_ms {
        failed.push(format!("p99 {p99:.0} ms > {:.0} ms", spec.p99_ms));
    } else {
        held.push(format!("p99 {p99:.0} ms ≤ {:.0} ms", spec.p99_ms));
    }
    // The comparisons need the stable to have served enough to compare with.
    let stable_judged = stable.requests >= spec.min_requests;
    if let (Some(gap), true) = (spec.max_success_gap, stable_judged) {
        let theirs = stable.success_rate.unwrap_or(0.0);
        let behind = theirs - sr;
        let line = format!("{behind:.1} points behind the stable's {theirs:.1}%");
        if behind > gap {
            failed.push(format!("{line} > {gap:.1}"));
        } else {
            held.push(format!("{line} ≤ {gap:.1}"));
        }
    }
    if let (Some(ratio), true, Some(theirs)) = (spec.max_p99_ratio, stable_judged, stable.p99_ms)
        && theirs > 0.0
    {
        let r = p99 / theirs;
        let line = format!("p99 {r:.2}× the stable's {theirs:.0} ms");
        if r > ratio {
            failed.push(format!("{line} > {ratio:.2}×"));
        } else {
            held.push(format!("{line} ≤ {ratio:.2}×"));
        }
    }
    let n = format!("{} canary requests", canary.requests);
    if failed.is_empty() {
        (Outcome::Passed, format!("{}, {n}", held.join(", ")))
    } else {
        (Outcome::Failed, format!("{}, {n}", failed.join(", ")))
    }
}
