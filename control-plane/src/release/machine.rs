//! One release's state and its transitions: checks move it a step, hold
//! it, or roll it back; commands pause, resume, promote, abort or roll it
//! back. Pure (time comes in as unix ms), so the controller only reads
//! telemetry, persists and applies the weight a transition asks for.

use super::analysis::{Outcome, Sample};
use super::spec::Spec;
use serde::{Deserialize, Serialize};

/// Where a release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// At a step, its check due at the end of the interval.
    Progressing,
    /// At a step, too few canary requests to check.
    WaitingForTraffic,
    /// Held by hand; no checks.
    Paused,
    /// The last step passed; waits for `meshctl release promote`.
    WaitingForPromotion,
    /// The canary has all the traffic.
    Promoted,
    /// Traffic back on the stable: failed checks, the deadline, or by hand.
    RolledBack,
    /// Traffic back on the stable: stopped by hand.
    Aborted,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 7] = [
        Phase::Progressing,
        Phase::WaitingForTraffic,
        Phase::Paused,
        Phase::WaitingForPromotion,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    /// As status shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::WaitingForTraffic => "WaitingForTraffic",
            Phase::Paused => "Paused",
            Phase::WaitingForPromotion => "WaitingForPromotion",
            Phase::Promoted => "Promoted",
            Phase::RolledBack => "RolledBack",
            Phase::Aborted => "Aborted",
        }
    }

    /// Whether the release is over.
    pub fn finished(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }
}

/// One check, kept in the release's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// When, unix ms.
    pub at_ms: u64,
    /// The canary's weight while its window ran.
    pub canary_weight: u32,
    /// What it found.
    pub outcome: Outcome,
    /// What was measured against what.
    pub detail: String,
    /// The canary's numbers.
    pub canary: Sample,
    /// The stable's, same window.
    pub stable: Sample,
    /// How long the window was.
    pub window_ms: u64,
}

/// A command from `meshctl release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop checking and moving.
    Pause,
    /// Go on from the step it was paused at.
    Resume,
    /// The next step now, without a check (at the last step: promote).
    Promote,
    /// All traffic to the canary now.
    PromoteFull,
    /// All traffic back to the stable: stopped.
    Abort,
    /// All traffic back to the stable: failed by hand.
    Rollback,
}

impl Command {
    /// From its name in the API.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "promote" => Command::Promote,
            "promote-full" => Command::PromoteFull,
            "abort" => Command::Abort,
            "rollback" => Command::Rollback,
            _ => return None,
        })
    }
}

/// A command the release's phase does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the release of {service} is {phase}: {command:?} does not apply")]
pub struct Refused {
    /// Whose release.
    pub service: String,
    /// Its phase.
    pub phase: &'static str,
    /// What was asked.
    pub command: Command,
}

/// Most checks kept per release (consecutive no-data checks count once).
const MAX_CHECKS: usize = 200;

/// One release, as persisted with every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique among this control plane's releases.
    pub id: u64,
    /// What it does.
    pub spec: Spec,
    /// Where it is.
    pub phase: Phase,
    /// Why it is there.
    pub reason: String,
    /// Index into `spec.steps`.
    pub step: usize,
    /// The canary's weight asked for.
    pub canary_weight: u32,
    /// Unix ms.
    pub started_ms: u64,
    /// When the current step (or its resumption) began.
    pub step_started_ms: u64,
    /// The last transition.
    pub updated_ms: u64,
    /// 0 while under way.
    pub finished_ms: u64,
    /// When the next check is due; 0 when none is.
    pub next_check_ms: u64,
    /// The last step taken (or start, or resume), for the progress deadline.
    pub progressed_ms: u64,
    /// Failed checks in a row.
    pub failed_checks: u32,
    /// Newest last.
    pub checks: Vec<Check>,
    /// The phase a pause interrupted.
    pub paused_from: Option<Phase>,
    /// The weight asked for is not yet in the rules: set before the shift
    /// and cleared after it, so a restart between the two applies it.
    pub pending: bool,
    /// Why the pending weight did not apply, while it does not.
    #[serde(default)]
    pub blocked: String,
    /// Kubernetes mode: the generation of the Release object it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

impl Record {
    /// A release at its first step.
    pub fn new(id: u64, spec: Spec, now: u64) -> Record {
        let first = spec.steps[0];
        let reason = format!("started at {first}%");
        Record {
            id,
            phase: Phase::Progressing,
            reason,
            step: 0,
            canary_weight: first,
            started_ms: now,
            step_started_ms: now,
            updated_ms: now,
            finished_ms: 0,
            next_check_ms: now + spec.interval_ms,
            progressed_ms: now,
            failed_checks: 0,
            checks: Vec::new(),
            paused_from: None,
            pending: true,
            blocked: String::new(),
            generation: None,
            spec,
        }
    }

    /// Whether a check is due.
    pub fn due(&self, now: u64) -> bool {
        self.next_check_ms != 0 && now >= self.next_check_ms
    }

    /// The window a check at `now` reads: the step so far, at most one interval.
    pub fn window_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.step_started_ms)
            .clamp(1, self.spec.interval_ms)
    }

    /// Takes a check's result. Returns whether the weight changed.
    pub fn on_check(
        &mut self,
        now: u64,
        outcome: Outcome,
        detail: String,
        samples: [Sample; 2],
    ) -> bool {
        let [canary, stable] = samples;
        let silent = canary.requests == 0;
        let check = Check {
            at_ms: now,
            canary_weight: self.canary_weight,
            outcome,
            detail: detail.clone(),
            canary,
            stable,
            window_ms: self.window_ms(now),
        };
        // A long wait for traffic is one entry, kept current.
        match self.checks.last_mut() {
            Some(last) if last.outcome == Outcome::NoData && outcome == Outcome::NoData => {
                *last = check
            }
            _ => self.checks.push(check),
        }
        if self.checks.len() > MAX_CHECKS {
            self.checks.remove(0);
        }
        self.updated_ms = now;
        self.next_check_ms = now + self.spec.interval_ms;
        match outcome {
            Outcome::NoData => {
                let deadline = self.spec.progress_deadline_ms;
                if now.saturating_sub(self.progressed_ms) >= deadline {
                    // A canary nobody called is said plainly.
                    let none = if silent { " (no canary traffic)" } else { "" };
                    let reason = format!(
                        "no progress for the progress deadline of {} s{none}: {detail}",
                        deadline / 1000
                    );
                    return self.finish(now, Phase::RolledBack, reason);
                }
                if self.phase == Phase::Progressing {
                    self.phase = Phase::WaitingForTraffic;
                }
                self.reason = format!("waiting for traffic: {detail}");
                false
            }
            Outcome::Failed => {
                self.failed_checks += 1;
                if self.failed_checks >= self.spec.failure_threshold {
                    let reason = format!(
                        "{} failed checks in a row at {}%: {detail}",
                        self.failed_checks, self.canary_weight
                    );
                    return self.finish(now, Phase::RolledBack, reason);
                }
                if self.phase == Phase::WaitingForTraffic {
                    self.phase = Phase::Progressing;
                }
                self.reason = format!(
                    "check failed ({} of {} before rollback): {detail}",
                    self.failed_checks, self.spec.failure_threshold
                );
                false
            }
            Outcome::Passed | Outcome::ByHand => {
                self.failed_checks = 0;
                self.advance(now)
            }
        }
    }

    /// The next step, or at the last one, promotion (or the wait for it).
    fn advance(&mut self, now: u64) -> bool {
        if self.step + 1 < self.spec.steps.len() {
            self.step += 1;
            self.canary_weight = self.spec.steps[self.step];
            self.phase = Phase::Progressing;
            self.step_started_ms = now;
            self.progressed_ms = now;
            self.reason = format!("step {} of {}", self.step + 1, self.spec.steps.len());
            self.pending = true;
            return true;
        }
        let confirms = self.spec.hooks(super::spec::Hook::ConfirmPromotion).count() > 0;
        if (self.spec.manual_promotion || confirms) && self.phase != Phase::WaitingForPromotion {
            self.phase = Phase::WaitingForPromotion;
            self.progressed_ms = now;
            self.reason = if self.spec.manual_promotion {
                "the last step passed: waiting for meshctl release promote".into()
            } else {
                "the last step passed: waiting for the confirm-promotion webhook".into()
            };
            return false;
        }
        if self.phase == Phase::WaitingForPromotion {
            // Checks go on while it waits; a passing one changes nothing.
            self.progressed_ms = now;
            return false;
        }
        self.finish(now, Phase::Promoted, "every step passed".into())
    }

    fn finish(&mut self, now: u64, phase: Phase, reason: String) -> bool {
        let weight = if phase == Phase::Promoted { 100 } else { 0 };
        let changed = weight != self.canary_weight;
        self.phase = phase;
        self.reason = reason;
        self.canary_weight = weight;
        self.finished_ms = now;
        self.updated_ms = now;
        self.next_check_ms = 0;
        self.paused_from = None;
        // Always applied, even when the weight looks unchanged: the rules
        // must end exactly stable/canary at 0/100 or 100/0.
        self.pending = true;
        changed
    }

    /// Applies a command from `who`. Returns whether the weight changed.
    pub fn command(&mut self, now: u64, command: Command, who: &str) -> Result<bool, Refused> {
        let refused = |r: &Record| Refused {
            service: r.spec.service.clone(),
            phase: r.phase.as_str(),
            command,
        };
        if self.phase.finished() {
            return Err(refused(self));
        }
        self.updated_ms = now;
        Ok(match command {
            Command::Pause if self.phase == Phase::Paused => return Err(refused(self)),
            Command::Pause => {
                self.paused_from = Some(self.phase);
                self.phase = Phase::Paused;
                self.next_check_ms = 0;
                self.reason = format!("paused by {who}");
                false
            }
            Command::Resume if self.phase != Phase::Paused => return Err(refused(self)),
            Command::Resume => {
                self.phase = self.paused_from.take().unwrap_or(Phase::Progressing);
                // The window starts again: traffic while paused is not judged.
                self.step_started_ms = now;
                self.progressed_ms = now;
                self.next_check_ms = now + self.spec.interval_ms;
                self.reason = format!("resumed by {who}");
                false
            }
            Command::Promote if self.phase == Phase::WaitingForPromotion => {
                self.finish(now, Phase::Promoted, format!("promoted by {who}"))
            }
            Command::Promote => {
                let at = self.canary_weight;
                self.paused_from = None;
                // on_check sets the next check (or none, if it finishes).
                let changed = self.on_check(
                    now,
                    Outcome::ByHand,
                    format!("{who} moved on from {at}%"),
                    Default::default(),
                );
                if self.phase == Phase::Paused {
                    self.phase = Phase::Progressing;
                }
                changed
            }
            Command::PromoteFull => {
                self.finish(now, Phase::Promoted, format!("promoted in full by {who}"))
            }
            Command::Abort => self.finish(now, Phase::Aborted, format!("aborted by {who}")),
            Command::Rollback => {
                self.finish(now, Phase::RolledBack, format!("rolled back by {who}"))
            }
        })
    }
}
