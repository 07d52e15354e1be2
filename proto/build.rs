//! Generates the tonic/prost code for mesh's protos. Uses `$PROTOC` when set,
//! otherwise the vendored protoc, so a fresh machine needs no install step.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "mesh/v1/discovery.proto",
            "mesh/v1/admin.proto",
            "mesh/v1/echo.proto",
        ],
        &["."],
    )?;
    Ok(())
}
