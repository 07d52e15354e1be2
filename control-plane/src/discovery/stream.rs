//! One sidecar's side of a discovery stream, without the I/O: what it
//! subscribes to and holds, the response that takes it to the newest
//! snapshot (none when nothing it receives changed), and what its replies
//! mean. A stream that takes every service gets the responses encoded once
//! for all such streams; one that takes a part gets its part put together
//! from resources each encoded once.

use crate::index::subset::{Held, Refused, Selected, Subscription};
use crate::index::{nonce, parse_nonce};
use crate::state::Snapshot;
use mesh_proto::prebuilt::Prebuilt;
use mesh_proto::v1 as pb;
use std::sync::Arc;

/// What the sidecar holds.
#[derive(Debug)]
enum Holds {
    /// Nothing it told us of: its next response is whole.
    Nothing,
    /// The whole view of this version.
    Version(u64),
    /// These resources, as the response with this `version_info` left
    /// them (or as it said on connecting).
    Part(String, Held),
}

/// One sidecar's stream.
#[derive(Debug)]
pub(super) struct Stream {
    /// It applies incremental responses.
    incremental: bool,
    subscription: Subscription,
    holds: Holds,
    /// Numbers the responses made for this stream alone, for their nonces.
    seq: u64,
    /// The unknown names the last response listed.
    unknown: Vec<String>,
    /// The nonce of the last response sent, and whether it was answered.
    last: Option<(String, bool)>,
    /// The subscription changed: answer even if nothing it receives did,
    /// so a request waiting on a name learns that it has all there is.
    answer: bool,
    /// The last snapshot a part was selected from, and the selection.
    selected: Option<(Arc<Snapshot>, Selected)>,
}

/// What a reply says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    /// Not a reply to anything sent (a subscription change only).
    None,
    /// It runs this version, and holds what the stream was sent as of
    /// `current` (later, when nothing it holds changed since).
    Ack { version: u64, current: Option<u64> },
    /// It refused a whole response: the config's verdict.
    Nack { version: u64, reason: String },
    /// It could not apply an incremental one: send it whole, now.
    Resend { version: u64, reason: String },
}

impl Stream {
    /// The stream of a sidecar that first asked with `first`.
    pub(super) fn new(node: &pb::Node, first: &pb::DiscoveryRequest) -> Result<Self, Refused> {
        let subscription = Subscription::new(&node.namespace, &node.service, &first.subscribe)?;
        // What a reconnecting sidecar says it holds is only its own
        // business: a wrong claim gets it a wrong config, which it checks.
        let claimed = first.incremental
            && !first.version_info.is_empty()
            && !(first.service_versions.is_empty() && first.cluster_versions.is_empty());
        let holds = if claimed {
            Holds::Part(
                first.version_info.clone(),
                Held {
                    services: first.service_versions.clone().into_iter().collect(),
                    clusters: first.cluster_versions.clone().into_iter().collect(),
                },
            )
        } else {
            Holds::Nothing
        };
        Ok(Stream {
            incremental: first.incremental,
            subscription,
            holds,
            seq: 0,
            unknown: Vec::new(),
            last: None,
            answer: false,
            selected: None,
        })
    }

    /// Applies a later request's subscription change; whether it changed.
    pub(super) fn subscribe(&mut self, req: &pb::DiscoveryRequest) -> Result<bool, Refused> {
        if req.subscribe.is_empty() && req.unsubscribe.is_empty() {
            return Ok(false);
        }
        let was_all = self.subscription.all();
        let changed = self.subscription.change(&req.subscribe, &req.unsubscribe)?;
        self.answer |= changed;
        if changed {
            self.selected = None;
        }
        if !was_all && self.subscription.all() {
            // From a part to everything: the shared responses build on
            // whole versions, so start over from one.
            self.holds = Holds::Nothing;
        }
        Ok(changed)
    }

    /// The response that brings the sidecar to `snap`, if anything it
    /// receives differs from what it holds.
    pub(super) fn next(&mut self, snap: &Arc<Snapshot>) -> Option<Prebuilt> {
        let message = if self.subscription.all() {
            self.next_whole_view(snap)
        } else {
            self.next_part(snap)
        };
        if let Some(m) = &message {
            self.last = Some((m.1.clone(), false));
        }
        message.map(|(m, _)| m)
    }

    /// Whether every response sent so far was answered.
    pub(super) fn answered(&self) -> bool {
        self.last.as_ref().is_none_or(|(_, answered)| *answered)
    }

    fn next_whole_view(&mut self, snap: &Snapshot) -> Option<(Prebuilt, String)> {
        let v = snap.version;
        let shared_delta = match (&self.holds, &snap.delta) {
            (Holds::Version(held), _) if *held == v => return None,
            (Holds::Version(held), Some((base, d))) if self.incremental && base == held => {
                Some(d.clone())
            }
            _ => None,
        };
        let held = std::mem::replace(&mut self.holds, Holds::Version(v));
        if let Some(d) = shared_delta {
            return Some((d, nonce(v, true)));
        }
        match held {
            // What it said on connecting: only what differs from that.
            Holds::Part(base, mut part) if self.incremental => {
                let selected = self.subscription.select(&snap.view, snap.lookup());
                let change = part.update(&snap.view, &selected);
                Some(self.assemble(snap, &base, change, Vec::new()))
            }
            _ => Some((snap.full(), nonce(v, false))),
        }
    }

    /// Whether `snap` has the same resources in the same order as the
    /// snapshot this stream's part was last selected from (its lookup is
    /// shared: only endpoints changed), so the part is the same indices and
    /// only what is not shared with that snapshot can differ. Most changes
    /// of a large mesh are such, and cost a stream in proportion to what
    /// changed in its part, not to the mesh or the part.
    fn same_part(&self, snap: &Arc<Snapshot>) -> bool {
        let Some((prev, _)) = &self.selected else {
            return false;
        };
        !self.answer
            && self.incremental
            && matches!(self.holds, Holds::Part(..))
            && Arc::ptr_eq(prev.lookup(), snap.lookup())
    }

    fn next_part(&mut self, snap: &Arc<Snapshot>) -> Option<(Prebuilt, String)> {
        if self.same_part(snap) {
            let (Some((prev, selected)), Holds::Part(base, held)) =
                (&mut self.selected, &mut self.holds)
            else {
                unreachable!("same_part checked both");
            };
            let change = held.update_shared(&prev.view, &snap.view, selected);
            *prev = Arc::clone(snap);
            if change.is_empty() {
                return None;
            }
            let base = std::mem::replace(base, snap.version.to_string());
            let unknown = selected.unknown.clone();
            return Some(self.assemble(snap, &base, change, unknown));
        }
        let selected = self.subscription.select(&snap.view, snap.lookup());
        self.selected = Some((Arc::clone(snap), selected.clone()));
        let (base, mut held) = match std::mem::replace(&mut self.holds, Holds::Nothing) {
            Holds::Part(base, held) if self.incremental => (base, held),
            _ => (String::new(), Held::default()),
        };
        let change = held.update(&snap.view, &selected);
        let unknown = selected.unknown;
        let answer = std::mem::take(&mut self.answer);
        if !base.is_empty() && change.is_empty() && unknown == self.unknown && !answer {
            self.holds = Holds::Part(base, held);
            return None;
        }
        self.holds = Holds::Part(snap.version.to_string(), held);
        Some(self.assemble(snap, &base, change, unknown))
    }

    /// A response of this stream's own: `change` on top of `base` (empty:
    /// whole).
    fn assemble(
        &mut self,
        snap: &Snapshot,
        base: &str,
        change: crate::index::subset::Change,
        unknown: Vec<String>,
    ) -> (Prebuilt, String) {
        self.seq += 1;
        let nonce = format!("{}/{}", nonce(snap.version, !base.is_empty()), self.seq);
        let head = pb::DiscoveryResponse {
            version_info: snap.version.to_string(),
            nonce: nonce.clone(),
            base_version: base.to_string(),
            removed_services: change.removed_services,
            removed_clusters: change.removed_clusters,
            unknown: unknown.clone(),
            ..Default::default()
        };
        self.unknown = unknown;
        let entries = change
            .services
            .iter()
            .map(|&i| snap.service(i))
            .chain(change.clusters.iter().map(|&i| snap.cluster(i)));
        (Prebuilt::assemble(&head, entries), nonce)
    }

    /// What `req` answers, `current` being the newest version evaluated
    /// for this stream.
    pub(super) fn reply(&mut self, req: &pb::DiscoveryRequest, current: u64) -> Reply {
        let Some((version, delta)) = parse_nonce(&req.response_nonce) else {
            return Reply::None;
        };
        let last = self.last.as_mut().filter(|(n, _)| *n == req.response_nonce);
        let is_last = last.is_some();
        if let Some((_, answered)) = last {
            *answered = true;
        }
        match req.error_detail.as_ref().map(|e| e.message.clone()) {
            None => Reply::Ack {
                version,
                current: (is_last && current > version).then_some(current),
            },
            Some(reason) => {
                // It runs something other than what we think it holds.
                self.holds = Holds::Nothing;
                self.selected = None;
                if delta {
                    Reply::Resend { version, reason }
                } else {
                    Reply::Nack { version, reason }
                }
            }
        }
    }
}
