//! The releases a controller holds: those under way by service, the
//! finished ones, the next id. Local mode persists it whole
//! (releases.json); Kubernetes mode rebuilds it from the Release objects'
//! status, and writes each object's status back from it.

use super::cluster::{Found, HISTORY as OBJECT_HISTORY, Status};
use super::machine::Record;
use crate::rules::Shield;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Finished releases kept.
const HISTORY: usize = 100;

/// `namespace/service`, a release's key.
pub fn key(namespace: &str, service: &str) -> String {
    format!("{namespace}/{service}")
}

fn key_of(r: &Record) -> String {
    key(&r.spec.namespace, &r.spec.service)
}

/// Every release, as persisted.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Book {
    /// The last id given.
    pub(super) next_id: u64,
    /// Under way, by `namespace/service`.
    pub(super) active: BTreeMap<String, Record>,
    /// Finished, oldest first.
    pub(super) history: Vec<Record>,
}

impl Book {
    /// The book the Release objects' status records make: a new leader
    /// resumes from it, and a follower shows it.
    pub(super) fn from_objects(found: &[Found]) -> Book {
        let mut book = Book::default();
        for f in found {
            book.history.extend(f.status.history.iter().cloned());
            match &f.status.record {
                Some(r) if !r.phase.finished() => {
                    book.active.insert(f.key(), r.clone());
                }
                Some(r) => book.history.push(r.clone()),
                None => {}
            }
        }
        book.history.sort_by_key(|r| (r.finished_ms, r.id));
        book.next_id = book
            .active
            .values()
            .chain(&book.history)
            .map(|r| r.id)
            .max()
            .unwrap_or(0);
        book
    }

    /// `k`'s release under way, else its last one.
    pub(super) fn latest(&self, k: &str) -> Option<&Record> {
        self.active
            .get(k)
            .or_else(|| self.history.iter().rev().find(|r| key_of(r) == k))
    }

    /// `k`'s past releases, newest first (the one under way first).
    pub(super) fn of(&self, k: &str) -> impl Iterator<Item = &Record> {
        self.active
            .get(k)
            .into_iter()
            .chain(self.history.iter().rev().filter(move |r| key_of(r) == k))
    }

    /// The status `k`'s Release object should carry.
    pub(super) fn status(&self, k: &str) -> Option<Status> {
        let latest = self.latest(k)?;
        let mut before: Vec<Record> = self.of(k).filter(|r| r.id != latest.id).cloned().collect();
        before.truncate(OBJECT_HISTORY);
        before.reverse();
        Some(Status::of(latest, before))
    }

    /// Files `k`'s finished release in the history.
    pub(super) fn finish(&mut self, k: &str) -> Option<Record> {
        let done = self.active.remove(k)?;
        self.history.push(done.clone());
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
        Some(done)
    }

    /// The shields of the releases under way that keep one.
    pub(super) fn shields(&self) -> BTreeMap<(String, String), Shield> {
        self.active
            .values()
            .filter(|r| r.spec.shield)
            .map(|r| {
                let s = &r.spec;
                (
                    (s.namespace.clone(), s.service.clone()),
                    Shield {
                        namespace: s.namespace.clone(),
                        service: s.service.clone(),
                        canary: s.canary.clone(),
                        stable: s.stable.clone(),
                    },
                )
            })
            .collect()
    }
}
