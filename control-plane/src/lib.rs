//! mesh-control: the control plane. Discovers services (local registry),
//! validates TrafficSplit rules, and streams per-sidecar config over gRPC.
//! Data flows one way: registry + rules → `index` → `state` snapshots →
//! `discovery` streams. Nothing here touches the data path.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod discovery;
pub mod errors;
pub mod http;
pub mod identity;
pub mod index;
pub mod manifest;
pub mod policy;
pub mod registry;
pub mod routing;
pub mod rules;
pub mod state;
pub mod store;
pub mod telemetry;
