//! How the upstream pools' failures become sidecar errors: our own
//! connection-attempt limit apart from the upstream's faults, and a connect
//! failure apart from a broken exchange (ejection and retries tell them apart).

use crate::connect::PendingLimit;
use crate::errors::Error;
use http::uri::Authority;

/// A boxed error from a connector, a handshake or a send.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed connection attempt to `endpoint`.
pub(super) fn connect_error(endpoint: &Authority, e: BoxError) -> Error {
    if let Some(limit) = find_source::<PendingLimit>(e.as_ref()) {
        return Error::PendingLimit {
            addr: endpoint.to_string(),
            limit: limit.0,
        };
    }
    upstream(endpoint, true, e)
}

/// An upstream failure; `connect` when no request reached it.
pub(super) fn upstream(endpoint: &Authority, connect: bool, source: BoxError) -> Error {
    Error::Upstream {
        addr: endpoint.to_string(),
        connect,
        source,
    }
}

/// The first error of type `T` in `e`'s source chain.
fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
