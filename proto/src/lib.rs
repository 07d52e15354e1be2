//! mesh-proto: the generated gRPC contract between mesh-control, mesh-proxy
//! and meshctl. Only generated code and one wire-level helper (`prebuilt`)
//! live here; conversions into domain types belong to the consuming crate.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// `mesh.v1`: discovery (control plane → sidecars) and admin (meshctl → control plane).
pub mod v1 {
    tonic::include_proto!("mesh.v1");
}

/// `mesh.echo.v1`: the example workload's API.
pub mod echo {
    tonic::include_proto!("mesh.echo.v1");
}

pub mod prebuilt;
