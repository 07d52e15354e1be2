//! mesh-control: the control plane. Discovers services (`registry`), reads
//! rule documents (`manifest`) and validates them (`rules`), builds the
//! config every sidecar gets (`index`), and streams it over gRPC
//! (`discovery`) from one writer (`state`). Data flows one way:
//! manifest → rules → index → state → discovery. Nothing here touches the
//! data path.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod config;
pub mod discovery;
pub mod errors;
pub mod http;
pub mod identity;
pub mod index;
pub mod inject;
pub mod kubernetes;
pub mod listen;
pub mod manifest;
pub mod metrics;
pub mod mtls;
pub mod proxies;
pub mod registry;
pub mod release;
pub mod rules;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod webhook;
