//! mesh-control binary: parse config (exit 64 naming every bad flag and
//! value, or a bad mesh file), bind, print the bound
//! addresses as one JSON line on stdout, serve until SIGINT/SIGTERM.

use mesh_control::app;
use mesh_control::config::{self, Config};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_CONTROL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::from_args(std::env::args()) {
        Ok(c) => c,
        Err(e @ config::Error::Info(_)) => {
            print!("{e}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mesh-control: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async move {
        let bound = match app::build(config).await {
            Ok(b) => b,
            Err(
                e @ (app::Error::Config(_)
                | app::Error::Read { .. }
                | app::Error::Tokens(_)
                | app::Error::Ca(_)),
            ) => {
                eprintln!("mesh-control: {e}");
                return std::process::ExitCode::from(64);
            }
            Err(e) => {
                eprintln!("mesh-control: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        println!(
            "{}",
            serde_json::json!({
                "component": "mesh-control",
                "grpc": bound.grpc_addr,
                "http": bound.http_addr,
                "admin": bound.admin_addr,
                "webhook": bound.webhook_addr,
                "credentials": bound.credentials,
                "roots": bound.roots,
            })
        );
        match bound.run(shutdown_signal()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-control: {e}");
                std::process::ExitCode::FAILURE
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
    tracing::info!("shutting down");
}
