//! Progress for the waits a person watches (`meshctl demo`, `up`): silent
//! for the first seconds, then one line every few seconds saying what is
//! awaited and how far it got, so a slow first run never looks hung.

use std::time::{Duration, Instant};

/// Quiet this long; most waits end sooner.
const QUIET: Duration = Duration::from_secs(3);
/// Then a line this often.
const EVERY: Duration = Duration::from_secs(5);

/// One wait being watched.
pub struct Slow {
    what: String,
    started: Instant,
    next: Duration,
}

impl Slow {
    /// Starts watching a wait for `what` ("echo instances to be ready").
    pub fn new(what: impl Into<String>) -> Slow {
        Slow {
            what: what.into(),
            started: Instant::now(),
            next: QUIET,
        }
    }

    /// Called on each poll; prints a line when one is due, with `detail`
    /// (how far it got) computed only then.
    pub fn tick(&mut self, detail: impl FnOnce() -> String) {
        if let Some(line) = self.due(self.started.elapsed(), detail) {
            println!("{line}");
        }
    }

    fn due(&mut self, elapsed: Duration, detail: impl FnOnce() -> String) -> Option<String> {
        if elapsed < self.next {
            return None;
        }
        self.next = elapsed + EVERY;
        Some(format!(
            "  … still waiting for {} ({}s): {}",
            self.what,
            elapsed.as_secs(),
            detail()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_at_first_then_every_few_seconds() {
        let mut s = Slow::new("x");
        let at = |s: &mut Slow, secs: u64| s.due(Duration::from_secs(secs), || "d".into());
        assert_eq!(at(&mut s, 0), None);
        assert_eq!(at(&mut s, 2), None);
        assert_eq!(
            at(&mut s, 3).as_deref(),
            Some("  … still waiting for x (3s): d")
        );
        assert_eq!(at(&mut s, 7), None);
        assert!(at(&mut s, 8).is_some());
    }
}
