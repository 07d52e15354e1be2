//! meshctl: the mesh command-line tool. Parses arguments and calls into the
//! library; every failure prints one readable message and exits non-zero.

use clap::{Parser, Subcommand};
use meshctl::cli::{self, Output};
use meshctl::client::{Control, DEFAULT_CONTROL};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Operate a mesh: rules, releases and a local mesh"
)]
struct Args {
    /// Control plane admin API URL (mTLS) [default: the mesh `meshctl up`
    /// last started, else https://127.0.0.1:15011].
    #[arg(long, global = true, env = "MESH_CONTROL_URL")]
    control: Option<String>,
    /// Directory with the operator's cert.pem, key.pem and roots.pem
    /// [default: the credentials of the mesh `meshctl up` last started].
    #[arg(long, global = true, env = "MESH_CREDENTIALS")]
    credentials: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole local mesh from one mesh file until Ctrl-C.
    Up {
        /// Mesh file or directory.
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Keep control-plane state here (default: a fresh temporary directory).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Where process logs go.
        #[arg(long, default_value = ".mesh/logs")]
        log_dir: PathBuf,
    },
    /// Run the canary-release demo end to end.
    Demo {
        /// Requests measured at each step.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
    /// Validate and apply rules (all or nothing).
    Apply {
        /// Rule files or directories.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete rules: those the files name, or one by kind and name (all or
    /// nothing; what remains must still validate).
    Delete {
        /// Rule files or directories naming what to delete.
        #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
        files: Vec<PathBuf>,
        /// Kind: TrafficSplit, HTTPRouteGroup, HTTPRoute, TrafficPolicy or AuthorizationPolicy.
        #[arg(required_unless_present = "files", requires = "name")]
        kind: Option<String>,
        /// Name.
        name: Option<String>,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Show resources.
    Get {
        #[command(subcommand)]
        what: Get,
    },
    /// Shift traffic between versions and inspect releases.
    Release {
        #[command(subcommand)]
        what: Release,
    },
    /// Health of the mesh: config in sync, certificates fresh, CA root valid.
    /// Exits non-zero when anything needs attention.
    Check,
    /// Golden metrics per service and version: RPS, success rate, latency.
    Stat {
        #[command(flatten)]
        query: StatArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The same as stat, redrawn live in the terminal.
    Top {
        #[command(flatten)]
        query: StatArgs,
        /// Redraw period.
        #[arg(long, default_value = "2s")]
        every: String,
        /// Stop after this many frames (default: until Ctrl-C).
        #[arg(long)]
        frames: Option<u32>,
    },
    /// Which config version each sidecar runs.
    ProxyStatus {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(clap::Args)]
struct StatArgs {
    /// Service (default: every service).
    service: Option<String>,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// How far back to look, e.g. 30s or 5m (at most 10m).
    #[arg(long, default_value = "30s")]
    window: String,
    /// inbound: as the serving sidecars saw it; outbound: as callers saw it.
    #[arg(long, default_value = "inbound", value_parser = ["inbound", "outbound"])]
    direction: String,
}

impl StatArgs {
    fn query(self) -> meshctl::stat::Query {
        meshctl::stat::Query {
            service: self.service.unwrap_or_default(),
            namespace: self.namespace,
            window: self.window,
            direction: self.direction,
        }
    }
}

#[derive(Subcommand)]
enum Get {
    /// TrafficSplits in force.
    Splits {
        /// Namespace (default: all).
        #[arg(short, long, default_value = "")]
        namespace: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The effective routes and backend policies of one service.
    Routes {
        /// Service.
        service: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum Release {
    /// Send N% of a service's traffic to one backend, the rest to the others.
    Shift {
        /// Root service of the split.
        service: String,
        /// Backend that receives the weight.
        #[arg(long)]
        to: String,
        /// Percentage, 0–100.
        #[arg(long)]
        weight: u32,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Weights and live endpoints per backend.
    Status {
        /// Root service.
        service: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // `up` starts the control plane whose admin API `--control` names;
    // `demo` starts its own. Every other command talks to one.
    let control_needed = !matches!(args.command, Cmd::Demo { .. } | Cmd::Up { .. });
    let control = if control_needed {
        Control::resolve(args.control.clone(), args.credentials.clone())?
    } else {
        Control::new(DEFAULT_CONTROL, "")
    };
    let control = &control;
    if matches!(args.command, Cmd::Up { .. } | Cmd::Demo { .. }) {
        // Under `cargo run`, build the binaries `up` starts; installed, a no-op.
        meshctl::procs::ensure_built_showing_progress(!cfg!(debug_assertions));
    }
    match args.command {
        Cmd::Up {
            file,
            state_dir,
            log_dir,
        } => {
            let admin = args
                .control
                .as_deref()
                .unwrap_or(DEFAULT_CONTROL)
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .to_string();
            up(admin, file, state_dir, log_dir).await
        }
        Cmd::Demo { requests } => meshctl::demo::run(requests).await,
        Cmd::Apply { files } => cli::apply(control, &files).await,
        Cmd::Delete {
            files,
            kind,
            name,
            namespace,
        } => cli::delete(control, &files, kind, name, &namespace).await,
        Cmd::Get {
            what: Get::Splits { namespace, output },
        } => cli::get_splits(control, &namespace, output).await,
        Cmd::Get {
            what:
                Get::Routes {
                    service,
                    namespace,
                    output,
                },
        } => meshctl::routes::get_routes(control, &namespace, &service, output).await,
        Cmd::Release {
            what:
                Release::Shift {
                    service,
                    to,
                    weight,
                    namespace,
                },
        } => {
            let version = cli::shift(control, &namespace, &service, &to, weight).await?;
            let st = cli::status(control, &namespace, &service).await?;
            let weights: Vec<(String, u32)> = st
                .backends
                .iter()
                .map(|b| (b.service.clone(), b.weight))
                .collect();
            cli::print_shift(&service, &weights);
            println!("config version {version} pushed to sidecars");
            Ok(())
        }
        Cmd::Release {
            what:
                Release::Status {
                    service,
                    namespace,
                    output,
                },
        } => {
            let st = cli::status(control, &namespace, &service).await?;
            print!("{}", cli::render_status(&st, output)?);
            if output == Output::Json {
                println!();
            }
            Ok(())
        }
        Cmd::ProxyStatus { output } => cli::proxy_status(control, output).await,
        Cmd::Stat { query, output } => meshctl::stat::stat(control, &query.query(), output).await,
        Cmd::Top {
            query,
            every,
            frames,
        } => {
            let every = mesh_control::manifest::meta::duration_ms(&every)
                .map_err(|e| anyhow::anyhow!("--every {e}"))?;
            let every = std::time::Duration::from_millis(every.max(100));
            meshctl::stat::top(control, &query.query(), every, frames).await
        }
        Cmd::Check => {
            if meshctl::check::run(control).await? {
                Ok(())
            } else {
                anyhow::bail!("the mesh needs attention (see the warnings above)")
            }
        }
    }
}

async fn up(
    admin_addr: String,
    file: PathBuf,
    state_dir: Option<PathBuf>,
    log_dir: PathBuf,
) -> anyhow::Result<()> {
    let mesh = meshctl::up::Mesh::start(&meshctl::up::Options {
        file,
        state_dir,
        grpc_addr: meshctl::up::DEFAULT_GRPC.into(),
        admin_addr,
        log_dir,
    })
    .await?;
    let recorded = mesh.control()?.record()?;
    println!(
        "mesh is up. Ctrl-C to stop. Later meshctl commands use its admin API and credentials ({}).\n",
        recorded.display()
    );
    print!("{}", mesh.describe());
    if let Some(client) = mesh.replicas.iter().find(|r| r.app.is_none())
        && let Ok(out) = client.sidecar.addr("outbound")
    {
        println!(
            "\ntry:\n  curl -H 'Host: echo' http://{out}/\n  meshctl release shift echo --to echo-v2 --weight 10\n  meshctl release status echo"
        );
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("\nstopping…");
    mesh.shutdown().await;
    Ok(())
}
