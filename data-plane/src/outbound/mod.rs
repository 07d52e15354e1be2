//! Outbound: requests from the local app, addressed by service name in Host
//! or :authority → route (first match) → faults → mirror → attempts, each
//! one weighted backend → endpoint (balancer, ejection) → peer sidecar, with
//! the route's timeout over all of them. `handle` takes the request and
//! answers it, `attempt` runs the attempts and retries, `mirror` sends the
//! shadow copies.

mod accept;
mod attempt;
mod handle;
mod mirror;
mod tcp;

pub use accept::Listener;
pub use handle::Outbound;
pub use tcp::Tcp;
