//! Routing rules: the one route model (`model`) and the validation that
//! compiles SMI HTTPRouteGroups, Gateway API HTTPRoutes and mesh
//! TrafficPolicies into it, every problem of every document at once.

mod compile;
mod gateway;
mod limits;
pub mod model;
mod traffic;

pub use compile::routing_from;

#[cfg(test)]
mod tests;
