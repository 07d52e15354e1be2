//! mesh-proxy: the per-pod sidecar. Outbound requests are routed by service
//! name, split by weight across backends and balanced across endpoints;
//! inbound requests go to the local app. Config arrives from mesh-control
//! over gRPC (`discovery`), the only writer of the live `State`.
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod body;
pub mod config;
pub mod connect;
pub mod control;
pub mod demand;
pub mod discovery;
pub mod errors;
pub mod forward;
pub mod health;
pub mod http;
pub mod inbound;
pub mod init;
pub mod intercept;
pub mod name;
pub mod outbound;
pub mod retry;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
