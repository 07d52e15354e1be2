//! mesh-proxy binary: parse config before binding anything (exit 64 when
//! bad), bind, print the bound addresses as one JSON line on stdout, serve
//! until SIGTERM/SIGINT, then deregister and drain. `mesh-proxy init` is
//! the pod's redirect step instead (`init`).

use mesh_proxy::{app, config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("init") {
        return mesh_proxy::init::main(&args[1..]);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_PROXY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match config::Config::from_env(&config::ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            return ExitCode::from(64);
        }
    };
    // One thread per worker, each with a runtime of its own (`app`): on
    // small machines the tail comes from cross-thread wake-ups, not from
    // parsing (see shared/PEERS.md), so nothing on the request path is
    // handed from one thread to another. One worker is the default.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let bound = match app::build(config).await {
            Ok(b) => b,
            // A roots file that cannot be used is a configuration error.
            Err(e @ app::Error::Control(_)) => {
                eprintln!("mesh-proxy: {e}");
                return ExitCode::from(64);
            }
            Err(e) => {
                eprintln!("mesh-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{}",
            serde_json::json!({
                "component": "mesh-proxy",
                "outbound": bound.outbound_addr,
                "inbound": bound.inbound_addr,
                "admin": bound.admin_addr,
            })
        );
        match bound.run(shutdown_signal()).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("mesh-proxy: drain timeout passed with requests still in flight");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("mesh-proxy: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
