//! Generates the tonic/prost code for mesh's protos. Uses `$PROTOC` when set,
//! otherwise the vendored protoc, so a fresh machine needs no install step.
//!
//! The Discovery service is generated twice: once as usual (clients and the
//! message types), and once server-only with `DiscoveryResponse` mapped to
//! `crate::prebuilt::Prebuilt`, so the control plane encodes each snapshot
//! once and sends the same bytes to every sidecar. The wire format is the same.

use std::path::PathBuf;

const MESSAGES: &[&str] = &[
    "Node",
    "DiscoveryRequest",
    "ErrorDetail",
    "ServiceConfig",
    "Route",
    "RouteMatch",
    "WeightedBackend",
    "Cluster",
    "Endpoint",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "DeregisterRequest",
    "DeregisterResponse",
];

fn config(protoc: &std::path::Path) -> tonic_prost_build::Config {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    config
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    tonic_prost_build::configure().compile_with_config(
        config(&protoc),
        &[
            "mesh/v1/discovery.proto",
            "mesh/v1/admin.proto",
            "mesh/v1/identity.proto",
            "mesh/v1/echo.proto",
            "mesh/v1/telemetry.proto",
        ],
        &["."],
    )?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("prebuilt");
    std::fs::create_dir_all(&out)?;
    let mut builder = tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&out)
        .extern_path(".mesh.v1.DiscoveryResponse", "crate::prebuilt::Prebuilt");
    for m in MESSAGES {
        builder = builder.extern_path(format!(".mesh.v1.{m}"), format!("crate::v1::{m}"));
    }
    builder.compile_with_config(config(&protoc), &["mesh/v1/discovery.proto"], &["."])?;
    Ok(())
}
