//! mesh-proto: the generated gRPC contract between mesh-control, mesh-proxy
//! and meshctl. Only generated code, two wire-level helpers (`prebuilt`,
//! and `incremental`, which both planes use to make and apply a delta),
//! the grammar of the port and CIDR lists a pod carries (`lists`) and
//! the contract's one size limit live here; conversions into domain types
//! belong to the consuming crate.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// `mesh.v1`: discovery (control plane → sidecars) and admin (meshctl → control plane).
pub mod v1 {
    tonic::include_proto!("mesh.v1");
}

/// `mesh.echo.v1`: the example workload's API.
pub mod echo {
    tonic::include_proto!("mesh.echo.v1");
}

pub mod incremental;
pub mod lists;
pub mod prebuilt;

/// The most rule text one `Admin.Apply` or `Admin.Delete` carries, summed
/// over its files: the admin server takes requests this large (plus framing)
/// and meshctl refuses a larger set before sending it, naming the files.
pub const MAX_APPLY_BYTES: usize = 16 << 20;
