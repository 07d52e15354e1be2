//! One release's due check: the analysis of its window, the hooks, and
//! the transition, persisted before its weight is applied.

use super::analysis::{self, Outcome};
use super::machine::{self, Command};
use super::{Controller, Error, now_ms, reads, spec};

impl Controller {
    /// `k`'s check, if one is due: the analysis, then the hooks (outside
    /// the lock), then the transition, unless a command moved it meanwhile.
    pub(super) async fn check(&self, k: &str) -> Result<(), Error> {
        let now = now_ms();
        let r = match self.lock().active.get(k) {
            Some(r) if r.due(now) && !r.pending => r.clone(),
            _ => return Ok(()),
        };
        let samples = reads::samples(&self.state, &self.window, &r, r.window_ms(now));
        let (mut outcome, mut detail) = analysis::judge(&r.spec, &samples[0], &samples[1]);
        if outcome != Outcome::NoData
            && let Err(e) = self.hooks.all(&r, spec::Hook::Rollout).await
        {
            outcome = Outcome::Failed;
            detail = format!("{e}; {detail}");
        }
        let mut verdict = None;
        for hook in r.spec.hooks(spec::Hook::Rollback) {
            if self.hooks.call(&r, hook).await.is_ok() {
                verdict = Some((
                    Command::Rollback,
                    format!("the rollback webhook {}", hook.name),
                ));
                break;
            }
        }
        let last = r.step + 1 == r.spec.steps.len();
        if verdict.is_none()
            && last
            && outcome == Outcome::Passed
            && !r.spec.manual_promotion
            && r.spec.hooks(spec::Hook::ConfirmPromotion).count() > 0
            && self
                .hooks
                .all(&r, spec::Hook::ConfirmPromotion)
                .await
                .is_ok()
        {
            verdict = Some((
                Command::Promote,
                "the confirm-promotion webhook".to_string(),
            ));
        }
        {
            let mut book = self.lock();
            let Some(current) = book.active.get_mut(k) else {
                return Ok(());
            };
            if current.updated_ms != r.updated_ms || current.phase != r.phase {
                // A command moved it while the hooks ran; the next tick judges anew.
                return Ok(());
            }
            match verdict {
                Some((Command::Rollback, who)) => {
                    current.command(now, Command::Rollback, &who)?;
                }
                other => {
                    self.metrics
                        .checked(&r.spec.namespace, &r.spec.service, outcome.as_str());
                    current.on_check(now, outcome, detail, samples);
                    if let Some((command, who)) = other
                        && current.phase == machine::Phase::WaitingForPromotion
                    {
                        current.command(now, command, &who)?;
                    }
                }
            }
            tracing::info!(release = %k, phase = current.phase.as_str(), weight = current.canary_weight, reason = %current.reason, "release check");
            self.save(&book)?;
        }
        self.flush(k).await
    }
}
