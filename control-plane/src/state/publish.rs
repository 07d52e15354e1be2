//! Publication: the view rebuilt from the registry and the rules (only
//! the touched services' clusters when nothing but endpoints changed), the
//! delta from the version before, and the snapshot every stream sees.

use super::{Inner, Snapshot, State};
use crate::index;
use std::collections::BTreeSet;
use std::sync::Arc;

impl State {
    /// Rebuilds the view and publishes it if anything changed.
    pub(super) fn publish(&self, inner: &mut Inner) -> u64 {
        // Whether or not anything changes (or is published at all once
        // stopped), every change taken so far has had its turn.
        self.flushing(inner);
        if self.stopped() {
            return inner.version;
        }
        let before = self.snapshots.borrow().clone();
        let next_version = inner.version + 1;
        // Only endpoints changed, of services it knows: remake just those,
        // and the delta is those.
        let dirty = inner.dirty.replace(BTreeSet::new());
        let part = dirty
            .filter(|_| Arc::ptr_eq(&inner.rules, &inner.built_from))
            .and_then(|d| index::rebuild::after(&before.view, &inner.registry, &inner.rules, &d));
        inner.built_from = inner.rules.clone();
        let (view, delta, same_keys) = match part {
            Some((view, changed)) => {
                let delta = view.delta_of(&changed, before.version, next_version);
                (view, delta, true)
            }
            None => {
                let view = index::build(&inner.registry, &inner.rules);
                // What changed decides whether anything did: one comparison
                // of the two views, not two.
                let delta = view.delta(&before.view, before.version, next_version);
                (view, delta, false)
            }
        };
        if !mesh_proto::incremental::is_empty(&delta) {
            inner.version = next_version;
            self.proxies.published(inner.version);
            let mut next = Snapshot::new(inner.version, view, Some((before.version, &delta)));
            if same_keys {
                next.share_lookup(&before);
            }
            self.snapshots.send_replace(Arc::new(next));
        }
        inner.version
    }
}
