//! One published version of the config: the view every sidecar receives,
//! encoded once for all the streams that need it whole, and the delta from
//! the version before.

use crate::index::View;
use mesh_proto::prebuilt::Prebuilt;
use mesh_proto::v1 as pb;

/// One published version of the config.
#[derive(Debug)]
pub struct Snapshot {
    /// Monotonic version.
    pub version: u64,
    /// What every sidecar receives.
    pub view: View,
    /// The same, encoded once for every stream that needs it whole (a new
    /// one, one that fell behind or refused something): at first need,
    /// since most streams of a busy mesh get only `delta`.
    full: std::sync::OnceLock<Prebuilt>,
    /// What changed since the version before (the one named here),
    /// encoded once for every stream that holds it; none for the first.
    pub delta: Option<(u64, Prebuilt)>,
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
            view,
            full: std::sync::OnceLock::new(),
            delta,
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
}
