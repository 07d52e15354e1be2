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
    /// Speak to a Kubernetes cluster through this kubeconfig instead of a
    /// local mesh (apply, delete, get splits, release shift|status).
    #[arg(long, global = true, env = "MESH_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to speak to (cluster mode; default: the
    /// kubeconfig's current context, from $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, env = "MESH_KUBE_CONTEXT")]
    context: Option<String>,
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
    /// Print the manifests that install mesh on a Kubernetes cluster
    /// (`meshctl install | kubectl apply -f -`).
    Install {
        /// A value to change: replicas, image, imagePullPolicy, logLevel,
        /// resources.{requests,limits}.{cpu,memory}, leaseDurationSeconds.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Write the files into this directory (as install/ holds them)
        /// instead of printing one stream.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Print what `meshctl install` created, for `kubectl delete -f -`.
    Uninstall,
    /// Print manifests with mesh's sidecar added to every pod (Pods,
    /// Deployments, StatefulSets, DaemonSets, Jobs, CronJobs, Lists), as the
    /// injection webhook would add it.
    Inject {
        /// Manifest file, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The mesh's roots (PEM) sidecars know the control plane by
        /// [default: from the cluster's injection webhook configuration,
        /// with --kubeconfig or --context].
        #[arg(long)]
        roots: Option<PathBuf>,
        /// The sidecar's image.
        #[arg(long, default_value = "mesh/mesh-proxy:0.1.0")]
        proxy_image: String,
        /// The control plane's gRPC URL as pods reach it.
        #[arg(long, default_value = "https://mesh-control.mesh-system.svc:15010")]
        control_addr: String,
        /// The SPIFFE trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Print manifests with what `meshctl inject` (or the webhook) added
    /// removed again, exactly.
    Uninject {
        /// Manifest file, or - for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Health of the mesh: config in sync, certificates fresh, CA root valid.
    /// Against a cluster: CRDs established, a leader, the CA Secret, the
    /// webhook's caBundle, every rule object accepted. Exits non-zero when
    /// anything needs attention.
    Check {
        /// Before an install: the cluster answers, is 1.29 or newer, and
        /// lets you create what `meshctl install` renders (cluster mode).
        #[arg(long)]
        pre: bool,
    },
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
    /// Weights and live endpoints per backend, and the automated release
    /// under way (or the last one) with its current window's numbers.
    Status {
        /// Root service.
        service: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Follow the automated release until it ends.
        #[arg(long)]
        watch: bool,
    },
    #[command(flatten)]
    Auto(meshctl::release::Auto),
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
    // Rendering needs neither a mesh nor a cluster.
    if let Cmd::Install { sets, output_dir } = &args.command {
        return install(sets, output_dir.as_deref());
    }
    if let Cmd::Inject {
        file,
        roots,
        proxy_image,
        control_addr,
        trust_domain,
    } = &args.command
    {
        let roots_pem = match roots {
            Some(r) => std::fs::read_to_string(r)
                .map_err(|e| anyhow::anyhow!("--roots {}: {e}", r.display()))?,
            None if args.kubeconfig.is_some() || args.context.is_some() => {
                let c = meshctl::cluster::Cluster::connect(
                    args.kubeconfig.as_deref(),
                    args.context.as_deref(),
                )
                .await?;
                c.injection_roots().await?
            }
            None => anyhow::bail!(
                "meshctl inject needs the mesh's roots: give --roots FILE, or --kubeconfig to read them from the cluster"
            ),
        };
        let template = mesh_control::inject::Template {
            image: proxy_image.clone(),
            pull_policy: "IfNotPresent".into(),
            control_addr: control_addr.clone(),
            roots_pem,
            trust_domain: trust_domain.clone(),
        };
        let name = file.display().to_string();
        let (out, lines) =
            meshctl::inject::inject(&meshctl::inject::read(file)?, &name, &template)?;
        for l in lines {
            eprintln!("{l}");
        }
        print!("{out}");
        return Ok(());
    }
    if let Cmd::Uninject { file } = &args.command {
        let name = file.display().to_string();
        let (out, count) = meshctl::inject::uninject(&meshctl::inject::read(file)?, &name)?;
        eprintln!("{name}: injection removed from {count} pod(s)");
        print!("{out}");
        return Ok(());
    }
    if let Cmd::Uninstall = &args.command {
        let files = meshctl::install::render(&meshctl::install::Values::default());
        print!("{}", meshctl::install::uninstall(&files));
        return Ok(());
    }
    if args.kubeconfig.is_some() || args.context.is_some() {
        return in_cluster(args).await;
    }
    // `up` starts the control plane whose admin API `--control` names;
    // `demo` starts its own. Every other command talks to one.
    let control_needed = !matches!(args.command, Cmd::Demo { .. } | Cmd::Up { .. });
    let control = if control_needed {
        Control::resolve(args.control.clone(), args.credentials.clone())?
    } else {
        Control::new(DEFAULT_CONTROL, "")
    };
    let control = &control;
    if matches!(
        args.command,
        Cmd::Apply { .. } | Cmd::Delete { .. } | Cmd::Get { .. } | Cmd::Release { .. }
    ) {
        eprintln!("meshctl: local mesh at {}", control.url);
    }
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
                    watch,
                },
        } => {
            if watch {
                return meshctl::release::watch(control, &namespace, &service, output).await;
            }
            meshctl::release::status(control, &namespace, &service, output).await
        }
        Cmd::Release {
            what: Release::Auto(auto),
        } => meshctl::release::run(control, auto).await,
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
        // Rendered above, before any mode.
        Cmd::Install { .. } | Cmd::Uninstall | Cmd::Inject { .. } | Cmd::Uninject { .. } => Ok(()),
        Cmd::Check { pre: true } => {
            anyhow::bail!("check --pre checks a cluster: give --kubeconfig or --context")
        }
        Cmd::Check { pre: false } => {
            if meshctl::check::run(control).await? {
                Ok(())
            } else {
                anyhow::bail!("the mesh needs attention (see the warnings above)")
            }
        }
    }
}

/// `meshctl install`: one stream on stdout, or the files under a directory.
fn install(sets: &[String], dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let files = meshctl::install::render(&meshctl::install::Values::from_sets(sets)?);
    let Some(dir) = dir else {
        print!("{}", meshctl::install::stream(&files));
        return Ok(());
    };
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// The commands that work against a cluster, there; the others are
/// refused by name.
async fn in_cluster(args: Args) -> anyhow::Result<()> {
    use meshctl::cluster;
    let what = match &args.command {
        Cmd::Apply { .. }
        | Cmd::Delete { .. }
        | Cmd::Get {
            what: Get::Splits { .. },
        }
        | Cmd::Release {
            what: Release::Shift { .. } | Release::Status { .. } | Release::Auto(_),
        }
        | Cmd::Check { .. } => None,
        Cmd::Up { .. } => Some("up"),
        Cmd::Install { .. } | Cmd::Uninstall | Cmd::Inject { .. } | Cmd::Uninject { .. } => None,
        Cmd::Demo { .. } => Some("demo"),
        Cmd::Get { .. } => Some("get routes"),
        Cmd::Stat { .. } => Some("stat"),
        Cmd::Top { .. } => Some("top"),
        Cmd::ProxyStatus { .. } => Some("proxy-status"),
    };
    if let Some(what) = what {
        anyhow::bail!(
            "meshctl {what} is not in cluster mode: it reads a control plane's admin API, which meshctl reaches only on a local mesh (drop --kubeconfig/--context)"
        );
    }
    let c = cluster::Cluster::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    eprintln!("meshctl: {}", c.describe());
    match args.command {
        Cmd::Apply { files } => cluster::apply(&c, &files).await,
        Cmd::Delete {
            files,
            kind,
            name,
            namespace,
        } => cluster::delete(&c, &files, kind, name, &namespace).await,
        Cmd::Get {
            what: Get::Splits { namespace, output },
        } => cluster::get_splits(&c, &namespace, output).await,
        Cmd::Release {
            what:
                Release::Shift {
                    service,
                    to,
                    weight,
                    namespace,
                },
        } => {
            let weights = cluster::shift(&c, &namespace, &service, &to, weight).await?;
            cli::print_shift(&service, &weights);
            Ok(())
        }
        Cmd::Release {
            what:
                Release::Status {
                    service,
                    namespace,
                    output,
                    watch,
                },
        } => {
            if watch {
                let fetch = || meshctl::cluster_release::fetch(&c, &namespace, &service);
                return meshctl::release::watch_with(fetch, &namespace, &service, output).await;
            }
            // The release first, as on a local mesh.
            let release = meshctl::cluster_release::fetch(&c, &namespace, &service).await?;
            let st = cluster::status(&c, &namespace, &service).await?;
            meshctl::release::print_status(&st, release, output)
        }
        Cmd::Release {
            what: Release::Auto(auto),
        } => meshctl::cluster_release::run(&c, auto).await,
        Cmd::Check { pre } => {
            let passed = if pre {
                meshctl::cluster_check::pre(&c).await?
            } else {
                meshctl::cluster_check::run(&c).await?
            };
            if passed {
                Ok(())
            } else {
                anyhow::bail!("the mesh on {} needs attention (see above)", c.describe())
            }
        }
        _ => anyhow::bail!("this command is not in cluster mode"),
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
