//! meshctl's internals, a library so the end-to-end tests drive the same
//! process supervision and traffic code as `meshctl up` and `meshctl demo`.
//! This is a CLI crate: errors are `anyhow` and end up in front of a person.
#![warn(missing_docs)]

pub mod check;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cluster_check;
pub mod cluster_release;
pub mod demo;
pub mod demo_release;
pub mod inject;
pub mod install;
pub mod install_objects;
pub mod procs;
pub mod progress;
pub mod release;
pub mod routes;
pub mod stat;
pub mod traffic;
pub mod up;
