//! Releases as the Admin API shows them.

use super::analysis::Sample;
use super::machine::{Check, Record};
use super::spec::Spec;
use mesh_proto::v1 as pb;

fn spec(s: &Spec) -> pb::ReleaseSpec {
    pb::ReleaseSpec {
        service: s.service.clone(),
        namespace: s.namespace.clone(),
        stable: s.stable.clone(),
        canary: s.canary.clone(),
        steps: s.steps.clone(),
        step_weight: 0,
        max_weight: 0,
        interval_ms: s.interval_ms,
        success_rate: Some(s.success_rate),
        p99_ms: Some(s.p99_ms),
        min_requests: Some(s.min_requests),
        failure_threshold: Some(s.failure_threshold),
        progress_deadline_ms: Some(s.progress_deadline_ms),
        max_success_gap: s.max_success_gap,
        max_p99_ratio: s.max_p99_ratio,
        manual_promotion: s.manual_promotion,
        shield: Some(s.shield),
        webhooks: s
            .webhooks
            .iter()
            .map(|w| pb::ReleaseWebhook {
                name: w.name.clone(),
                r#type: w.hook.as_str().into(),
                url: w.url.clone(),
                timeout_ms: w.timeout_ms,
                retries: Some(w.retries),
                metadata: w.metadata.clone().into_iter().collect(),
                ca_bundle: w.ca_pem.clone().unwrap_or_default().into_bytes(),
            })
            .collect(),
    }
}

fn sample(s: &Sample) -> pb::ReleaseSample {
    pb::ReleaseSample {
        requests: s.requests,
        failures: s.failures,
        success_rate: s.success_rate,
        p99_ms: s.p99_ms,
    }
}

/// One check.
pub(super) fn check(c: &Check) -> pb::ReleaseCheck {
    pb::ReleaseCheck {
        at_unix_ms: c.at_ms,
        canary_weight: c.canary_weight,
        outcome: c.outcome.as_str().into(),
        detail: c.detail.clone(),
        canary: Some(sample(&c.canary)),
        stable: Some(sample(&c.stable)),
        window_ms: c.window_ms,
    }
}

/// One release.
pub fn release(r: &Record) -> pb::Release {
    pb::Release {
        spec: Some(spec(&r.spec)),
        phase: r.phase.as_str().into(),
        reason: r.reason.clone(),
        step: r.step as u32,
        canary_weight: r.canary_weight,
        steps: r.spec.steps.clone(),
        started_unix_ms: r.started_ms,
        step_started_unix_ms: r.step_started_ms,
        updated_unix_ms: r.updated_ms,
        finished_unix_ms: r.finished_ms,
        next_check_unix_ms: r.next_check_ms,
        failed_checks: r.failed_checks,
        checks: r.checks.iter().map(check).collect(),
        id: r.id,
        blocked: r.blocked.clone(),
    }
}

/// A release with the current window's numbers.
pub fn response(r: &Record, current: Option<pb::ReleaseCheck>, now: u64) -> pb::ReleaseResponse {
    pb::ReleaseResponse {
        release: Some(release(r)),
        current,
        problems: Vec::new(),
        now_unix_ms: now,
    }
}
