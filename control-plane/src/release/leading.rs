//! The Kubernetes side of the controller's loop: what the Release
//! objects say each tick. A follower mirrors their status (and a new
//! leader resumes from it); the leader carries out their command
//! annotations and starts (or refuses) each generation it has not run.

use super::book::Book;
use super::{Controller, Error, cluster};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What the Kubernetes loop remembers between ticks, so the watch's lag
/// never makes it act twice.
#[derive(Default)]
pub(super) struct Seen {
    /// Whether this replica led at the last tick.
    led: bool,
    /// The generation last refused, by release.
    refused: HashMap<String, i64>,
    /// Commands carried out, by release and the resourceVersion they came in.
    commands: HashSet<(String, String)>,
}

impl Controller {
    /// Kubernetes mode, each tick: a follower mirrors the Release objects'
    /// status (and a new leader resumes from it); the leader carries out
    /// command annotations, starts the objects whose spec it has not run
    /// (or refuses them in their status), and forgets deleted ones. Either
    /// way the shields of the releases under way go to the state.
    pub(super) async fn follow(
        self: &Arc<Self>,
        objects: &cluster::Objects,
        leader: bool,
        seen: &mut Seen,
    ) {
        let found = objects.list();
        if !leader || !seen.led {
            let book = Book::from_objects(&found);
            if leader {
                tracing::info!(
                    releases = book.active.len(),
                    "leading: releases under way resume from their status"
                );
            }
            *self.lock() = book;
            self.unsaved().clear();
            seen.led = leader;
        }
        if leader {
            self.lock().active.retain(|k, _| {
                let kept = found.iter().any(|f| f.key() == *k);
                if !kept {
                    tracing::warn!(release = %k, "Release object deleted: the release is forgotten, its weights stay as they are");
                }
                kept
            });
            for f in &found {
                self.take(objects, f, seen).await;
            }
        }
        let shields = self.lock().shields();
        if let Err(e) = self
            .state
            .off_runtime(move |s| s.set_shields(shields))
            .await
        {
            tracing::error!(error = %e, "setting the release shields failed");
        }
    }

    /// The leader's part for one object: its command, then its start.
    async fn take(
        self: &Arc<Self>,
        objects: &cluster::Objects,
        f: &cluster::Found,
        seen: &mut Seen,
    ) {
        let k = f.key();
        if let Some(action) = &f.command
            && seen.commands.insert((k.clone(), f.version.clone()))
        {
            let who = format!("the {} annotation", cluster::COMMAND);
            match self.act(&k, action, &who).await {
                Ok(_) => tracing::info!(release = %k, %action, "release command carried out"),
                Err(e) => {
                    tracing::warn!(release = %k, %action, error = %e, "release command refused")
                }
            }
            if let Err(e) = objects.clear(&f.namespace, &f.name).await {
                tracing::warn!(release = %k, error = %e, "clearing the release command");
            }
        }
        let started = {
            let book = self.lock();
            book.active.contains_key(&k)
                || book
                    .latest(&k)
                    .is_some_and(|r| r.generation == Some(f.generation))
        };
        if started
            || f.status.observed_generation == Some(f.generation)
            || seen.refused.get(&k) == Some(&f.generation)
        {
            return;
        }
        let begun = match f.spec.clone() {
            Ok(spec) => self.begin(spec, Some(f.generation)).await.map(drop),
            Err(problems) => Err(Error::Invalid(problems)),
        };
        let Err(e) = begun else { return };
        let reason = match &e {
            Error::Invalid(problems) => {
                let all: Vec<String> = problems.iter().map(|p| p.in_object()).collect();
                all.join("; ")
            }
            other => other.to_string(),
        };
        tracing::warn!(release = %k, generation = f.generation, %reason, "Release refused");
        seen.refused.insert(k, f.generation);
        let status = cluster::Status {
            phase: cluster::REFUSED.into(),
            reason,
            observed_generation: Some(f.generation),
            ..f.status.clone()
        };
        if let Err(e) = objects.write(&f.namespace, &f.name, &status).await {
            tracing::warn!(error = %e, "writing a refused Release's status");
        }
    }
}
