//! One published version of the config: the view every sidecar receives a
//! part of, encoded once for all the streams that need it whole, the delta
//! from the version before, and each resource encoded once for the streams
//! that hold only some.

use crate::index::View;
use crate::index::subset::Lookup;
use mesh_proto::prebuilt::{Entry, Prebuilt};
use mesh_proto::v1 as pb;
use std::sync::{Arc, OnceLock};

/// One published version of the config.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// The whole mesh's config.
    pub view: View,
    /// The same, encoded once for every stream that needs it whole (a new
    /// one, one that fell behind or refused something): at first need,
    /// since most streams of a busy mesh get only `delta`.
    full: OnceLock<Prebuilt>,
    /// What changed since the version before (the one named here),
    /// encoded once for every stream that holds it; none for the first.
    pub delta: Option<(u64, Prebuilt)>,
    /// The view's resources by key, at first need (or the version
    /// before's, when it has the same resources in the same order).
    lookup: OnceLock<Arc<Lookup>>,
    /// Each service and cluster encoded, at its first need: a stream that
    /// holds a few services makes only those few be encoded, once for
    /// every stream that receives them.
    services: Vec<OnceLock<Entry>>,
    clusters: Vec<OnceLock<Entry>>,
}

impl Snapshot {
    /// `delta`: the incremental response from the version it names.
    pub(super) fn new(
        version: u64,
        view: View,
        delta: Option<(u64, &pb::DiscoveryResponse)>,
    ) -> Self {
        let delta = delta.map(|(base, d)| (base, Prebuilt::new(d)));
        Snapshot {
            version,
            services: view.services.iter().map(|_| OnceLock::new()).collect(),
            clusters: view.clusters.iter().map(|_| OnceLock::new()).collect(),
            view,
            full: OnceLock::new(),
            delta,
            lookup: OnceLock::new(),
        }
    }

    /// The full snapshot, encoded.
    pub fn full(&self) -> Prebuilt {
        let encoded = self
            .full
            .get_or_init(|| Prebuilt::new(&self.view.response(self.version)));
        // A refcount bump.
        encoded.clone()
    }

    /// The view's resources by key, shared with the versions before and
    /// after that have the same resources in the same order.
    pub fn lookup(&self) -> &Arc<Lookup> {
        self.lookup
            .get_or_init(|| Arc::new(Lookup::new(&self.view)))
    }

    /// Takes `before`'s lookup, if it made one: this view has the same
    /// services and clusters in the same order (only endpoints changed).
    pub(super) fn share_lookup(&mut self, before: &Snapshot) {
        if let Some(l) = before.lookup.get() {
            let _ = self.lookup.set(Arc::clone(l));
        }
    }

    /// The `i`th service of the view, encoded.
    pub fn service(&self, i: usize) -> &Entry {
        self.services[i].get_or_init(|| Entry::service(&self.view.services[i]))
    }

    /// The `i`th cluster of the view, encoded.
    pub fn cluster(&self, i: usize) -> &Entry {
        self.clusters[i].get_or_init(|| Entry::cluster(&self.view.clusters[i]))
    }
}
