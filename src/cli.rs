//! The `flint` command line: flags parsed, tracing set up, and each subcommand handed
//! to the library that does the work (`flint-driver`, `flint-executor-host`,
//! `flint-client`, or the local cluster of [`crate::local`]).

use crate::local::LocalCluster;
use crate::progress::Progress;
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use flint_client::Submission;
use flint_driver::{Credentials, DriverConfig, UiConfig};
use flint_executor_host::ExecutorConfig;
use flint_protocol::conf::Conf;
use flint_protocol::wire::{AppError, AppErrorKind, AppSummary};
use flint_transport::{ClientFile, ClusterFile};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "flint",
    version,
    about = "Flint: a Spark-style engine whose user code is WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job on an embedded local cluster (driver and executors in this process).
    Run {
        /// A built job `.wasm`, or a job crate directory (built for wasm32-wasip2 first).
        job: PathBuf,
        #[arg(long, default_value_t = 2)]
        executors: u32,
        /// Task slots per executor.
        #[arg(long, default_value_t = 2)]
        cores: u32,
        /// Serve the web UI while the job runs (see --ui-port).
        #[arg(long)]
        ui: bool,
        #[command(flatten)]
        web: WebUi,
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        report: Report,
        /// Arguments for the job's `main`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Start a driver. It writes STATE_DIR/cluster.json (executors join with it; the
    /// operator keeps it), STATE_DIR/client.json (tenants submit with it) and
    /// STATE_DIR/admin.token (reads the whole web UI).
    Driver {
        #[arg(long, default_value = "127.0.0.1:7077")]
        listen: std::net::SocketAddr,
        #[arg(long)]
        state_dir: PathBuf,
        /// Compiled-component cache; default STATE_DIR/compiled.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Tenants file (TOML, see `flint tenant add`); without one the cluster is open.
        #[arg(long)]
        tenants: Option<PathBuf>,
        /// Do not serve the web UI.
        #[arg(long)]
        no_ui: bool,
        #[command(flatten)]
        web: WebUi,
        #[command(flatten)]
        settings: Settings,
    },
    /// Start an executor that joins a driver.
    Executor {
        /// The driver's `cluster.json` (the operator's; a tenant's `client.json` cannot
        /// make an executor).
        #[arg(long)]
        join: PathBuf,
        #[arg(long, default_value_t = 2)]
        cores: u32,
        #[arg(long)]
        work_dir: PathBuf,
        /// Where this executor serves shuffle data.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Compiled-component cache; default WORK_DIR/compiled.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Where to serve Prometheus metrics (`/metrics`); port 0 picks one.
        #[arg(long, default_value = "127.0.0.1:0")]
        metrics_addr: std::net::SocketAddr,
        #[command(flatten)]
        settings: Settings,
    },
    /// What a tenant's jobs consumed: from a running driver (`--join`) or from event logs.
    Usage {
        #[arg(long)]
        tenant: String,
        /// The driver's `client.json` (asks its JSON API).
        #[arg(
            long,
            conflicts_with = "event_log",
            required_unless_present = "event_log"
        )]
        join: Option<PathBuf>,
        /// A tenant's token (or the admin token) for a UI that requires one.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Event logs to read instead (`--event-log` of the driver).
        #[arg(long)]
        event_log: Option<PathBuf>,
    },
    /// Manage the tenants file of a driver.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Create a job crate in directory NAME, ready for `flint run NAME`.
    New {
        name: PathBuf,
        /// The guest SDK to depend on (default: the one this flint was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Serve the web UI of finished jobs from the event logs in DIR (`--event-log`).
    History {
        dir: PathBuf,
        #[command(flatten)]
        web: WebUi,
    },
    /// Submit a job to a running driver; exits 0 when it succeeded, 3 when the
    /// submission was refused, 4 when a limit was hit or the plan is invalid, 1 otherwise.
    Submit {
        /// The driver's `client.json`.
        #[arg(long)]
        join: PathBuf,
        /// A file holding this tenant's API token (clusters with tenants require one).
        #[arg(long)]
        token_file: Option<PathBuf>,
        job: PathBuf,
        #[command(flatten)]
        settings: Settings,
        #[command(flatten)]
        report: Report,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant; prints its new API token once (only its hash is stored).
    Add {
        name: String,
        #[arg(long)]
        tenants: PathBuf,
        /// A path prefix the tenant may read and write (repeatable; none: anywhere).
        #[arg(long = "allowed-path")]
        allowed_paths: Vec<String>,
    },
}

#[derive(Args)]
struct WebUi {
    /// The web UI's port; 4040 moves on to the next free port, 0 picks any.
    #[arg(long, default_value_t = 4040)]
    ui_port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    ui_host: String,
    /// Append every scheduler event to DIR, one JSON-lines file per job.
    #[arg(long, value_name = "DIR")]
    event_log: Option<PathBuf>,
}

impl WebUi {
    /// Binds the UI's port and says where it is.
    fn bind(&self) -> anyhow::Result<std::net::TcpListener> {
        let l = flint_driver::ui::bind(&self.ui_host, self.ui_port)
            .with_context(|| format!("web UI on {}:{}", self.ui_host, self.ui_port))?;
        eprintln!("flint web UI at http://{}", l.local_addr()?);
        Ok(l)
    }
}

#[derive(Args)]
struct Settings {
    /// A setting, KEY=VALUE (repeatable); see `flint_protocol::conf::KEYS`.
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    conf: Vec<String>,
    /// A file of `key = value` lines; `--conf` wins over it.
    #[arg(long)]
    conf_file: Option<PathBuf>,
}

impl Settings {
    fn load(&self) -> anyhow::Result<Conf> {
        let mut c = Conf::default();
        if let Some(f) = &self.conf_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading config file {}", f.display()))?;
            c.merge_file(&f.display().to_string(), &text)?;
        }
        for pair in &self.conf {
            c.set_pair(pair)?;
        }
        Ok(c)
    }
}

#[derive(Args)]
struct Report {
    /// Write the application summary (per-executor metrics) as JSON here.
    #[arg(long)]
    summary_json: Option<PathBuf>,
}

/// An application that failed, with its typed error: the exit code says which kind.
#[derive(Debug)]
struct Failed(AppError);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "({}) {}",
            self.0.kind,
            self.0.chain.join("\n  caused by: ")
        )
    }
}

impl std::error::Error for Failed {}

impl Failed {
    /// 3: refused before anything ran; 4: a limit, an invalid plan, a denied path; 1: the
    /// job or its program failed.
    fn exit_code(&self) -> u8 {
        match self.0.kind {
            AppErrorKind::Refused => 3,
            AppErrorKind::Limit { .. } | AppErrorKind::InvalidPlan | AppErrorKind::Denied => 4,
            _ => 1,
        }
    }
}

/// Entry point of the `flint` binary.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(f) = e.downcast_ref::<Failed>() {
                eprintln!("error: {f}");
                return ExitCode::from(f.exit_code());
            }
            eprintln!(
                "error: {}",
                e.chain()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("\n  caused by: ")
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            job,
            executors,
            cores,
            ui,
            web,
            settings,
            report,
            args,
        } => {
            let conf = settings.load()?;
            if executors == 0 || cores == 0 {
                bail!("--executors and --cores must be at least 1");
            }
            let (name, component) = crate::job_crate::load_job(&job)?;
            let listener = if ui { Some(web.bind()?) } else { None };
            let cluster = LocalCluster::start_with(
                executors,
                cores,
                conf.clone(),
                default_cache_dir(),
                listener,
                web.event_log.clone(),
            )
            .await?;
            let submission = Submission {
                name,
                component,
                args,
                conf: conf.application_pairs(),
                token: None,
            };
            submit(&cluster.client, submission, &report).await
        }
        Command::New { name, sdk } => {
            let sdk =
                sdk.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-sdk"));
            crate::job_crate::new_job_crate(&name, &sdk)?;
            eprintln!(
                "flint: created job crate {0}; run it with `flint run {0} -- INPUT OUTPUT`",
                name.display()
            );
            Ok(())
        }
        Command::History { dir, web } => {
            let sink = flint_driver::ui::EventSink::replay(&dir)?;
            let jobs = sink.state().jobs.len();
            let listener = web.bind()?;
            if !listener.local_addr()?.ip().is_loopback() {
                bail!("flint history serves on loopback only (--ui-host 127.0.0.1)");
            }
            eprintln!("flint history: {jobs} job(s) from {}", dir.display());
            flint_driver::ui::spawn(listener, sink, flint_driver::ui::Access::open())?;
            shutdown_on_signal().cancelled().await;
            Ok(())
        }
        Command::Usage {
            tenant,
            join,
            token_file,
            event_log,
        } => usage(&tenant, join, token_file, event_log).await,
        Command::Tenant {
            command:
                TenantCommand::Add {
                    name,
                    tenants,
                    allowed_paths,
                },
        } => {
            let token = flint_driver::tenants::add_tenant(&tenants, &name, allowed_paths)?;
            eprintln!(
                "tenant {name} added to {}; its token (shown once, keep it in a file for --token-file):",
                tenants.display()
            );
            println!("{token}");
            Ok(())
        }
        Command::Driver {
            listen,
            state_dir,
            cache_dir,
            tenants,
            no_ui,
            web,
            settings,
        } => driver(listen, state_dir, cache_dir, tenants, no_ui, web, settings).await,
        Command::Executor {
            join,
            cores,
            work_dir,
            listen,
            cache_dir,
            metrics_addr,
            settings,
        } => {
            let settings = settings.load()?.settings();
            let cluster = ClusterFile::load(&join)?;
            let identity = flint_executor_host::enrol(&cluster)
                .await
                .with_context(|| format!("enrolling with the driver at {}", cluster.driver))?;
            let endpoint = identity
                .endpoint(listen)
                .with_context(|| format!("listening on {listen}"))?;
            let metrics_listener = std::net::TcpListener::bind(metrics_addr)
                .with_context(|| format!("metrics on {metrics_addr}"))?;
            let config = ExecutorConfig {
                driver_addr: cluster.driver.clone(),
                identity,
                cores,
                cache_dir: Some(cache_dir.unwrap_or_else(|| work_dir.join("compiled"))),
                work_dir,
                advertise_addr: None,
                sandbox: None,
                decommission_timeout: settings.executor_decommission_timeout,
                cache_memory: settings.executor_cache_memory,
                memory: settings.executor_memory,
                metrics: Default::default(),
                metrics_listener: Some(std::sync::Arc::new(metrics_listener)),
            };
            flint_executor_host::serve(config, endpoint, shutdown_on_signal())
                .await
                .with_context(|| format!("executor of driver {}", cluster.driver))?;
            Ok(())
        }
        Command::Submit {
            join,
            token_file,
            job,
            settings,
            report,
            args,
        } => {
            let conf = settings.load()?;
            let client = ClientFile::load(&join)?;
            let (name, component) = crate::job_crate::load_job(&job)?;
            let token = token_file.as_deref().map(read_token).transpose()?;
            let submission = Submission {
                name,
                component,
                args,
                conf: conf.pairs(),
                token,
            };
            submit(&client, submission, &report).await
        }
    }
}

fn read_token(f: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(f)
        .with_context(|| format!("reading token file {}", f.display()))?;
    Ok(token.trim().to_string())
}

/// `flint driver`: binds, writes the files the others join with, serves.
async fn driver(
    listen: std::net::SocketAddr,
    state_dir: PathBuf,
    cache_dir: Option<PathBuf>,
    tenants: Option<PathBuf>,
    no_ui: bool,
    web: WebUi,
    settings: Settings,
) -> anyhow::Result<()> {
    let conf = settings.load()?;
    let tenants = match &tenants {
        Some(f) => flint_driver::tenants::Tenants::load(f)?,
        None => Default::default(),
    };
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating state dir {}", state_dir.display()))?;
    let credentials = Credentials::generate()?;
    let endpoint = credentials
        .endpoint(listen)
        .with_context(|| format!("listening on {listen}"))?;
    let addr = endpoint.local_addr()?.to_string();
    let admin_token = hex_token();
    let admin_file = state_dir.join("admin.token");
    write_private(&admin_file, &admin_token)?;
    let ui = if no_ui {
        None
    } else {
        Some(UiConfig {
            listener: web.bind()?,
            admin_token: Some(admin_token),
        })
    };
    let ui_addr = match &ui {
        Some(u) => Some(u.listener.local_addr()?.to_string()),
        None => None,
    };
    let cluster_file = state_dir.join("cluster.json");
    credentials.cluster_file(&addr).save(&cluster_file)?;
    let client_file = state_dir.join("client.json");
    credentials.client_file(&addr, ui_addr).save(&client_file)?;
    println!(
        "flint driver listening on {addr}; executors join with {}, tenants submit with {}",
        cluster_file.display(),
        client_file.display()
    );
    flint_driver::serve(
        DriverConfig {
            conf,
            credentials,
            sandbox: None,
            cache_dir: Some(cache_dir.unwrap_or_else(|| state_dir.join("compiled"))),
            ui,
            event_log: web.event_log.clone(),
            tenants,
        },
        endpoint,
        shutdown_on_signal(),
    )
    .await?;
    Ok(())
}

fn hex_token() -> String {
    let t: [u8; 32] = rand::random();
    hex::encode(t)
}

/// Writes a secret readable by the owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// `flint usage`: from a running driver's API, or from event logs.
async fn usage(
    tenant: &str,
    join: Option<PathBuf>,
    token_file: Option<PathBuf>,
    event_log: Option<PathBuf>,
) -> anyhow::Result<()> {
    let report = match (join, event_log) {
        (_, Some(dir)) => flint_driver::ui::EventSink::replay(&dir)?
            .state()
            .usage(tenant),
        (Some(join), None) => {
            let client = ClientFile::load(&join)?;
            let Some(ui) = client.ui else {
                bail!(
                    "the driver of {} serves no API (started with --no-ui)",
                    join.display()
                );
            };
            let token = token_file.as_deref().map(read_token).transpose()?;
            let path = format!("/api/v1/usage?tenant={tenant}");
            let body = tokio::task::spawn_blocking(move || {
                flint_driver::ui::http_get(&ui, &path, token.as_deref())
            })
            .await??;
            serde_json::from_str(&body).context("the driver's usage answer")?
        }
        (None, None) => bail!("give --join or --event-log"),
    };
    print!("{}", flint_driver::ui::usage_text(&report));
    Ok(())
}

/// Submits and reports: the summary on success, the typed error otherwise.
async fn submit(client: &ClientFile, s: Submission, report: &Report) -> anyhow::Result<()> {
    let mut progress = Progress::new();
    let result = flint_client::submit(client, s, |e| progress.on(e))
        .await
        .with_context(|| format!("submitting to the driver at {}", client.driver))?;
    finish(result, report)
}

fn finish(result: Result<AppSummary, AppError>, report: &Report) -> anyhow::Result<()> {
    let summary = result.map_err(Failed)?;
    print!("{}", summary.stdout);
    let shuffled: u64 = summary
        .executors
        .iter()
        .map(|e| e.metrics.shuffle_write_bytes)
        .sum();
    let remote: u64 = summary
        .executors
        .iter()
        .map(|e| e.metrics.shuffle_read_remote_bytes)
        .sum();
    let (spilled, runs) = summary.executors.iter().fold((0, 0), |(b, n), e| {
        (b + e.metrics.spill_bytes, n + e.metrics.spill_count)
    });
    let spill = if runs == 0 {
        String::new()
    } else {
        format!(", {spilled} bytes spilled in {runs} run(s)")
    };
    for schema in &summary.inferred_schemas {
        eprintln!("flint: inferred the CSV schema of {schema}");
    }
    let outputs = if summary.outputs.is_empty() {
        String::new()
    } else {
        format!("; output in {}", summary.outputs.join(", "))
    };
    eprintln!(
        "flint: done in {:.2}s: {} job(s), {} task attempt(s) ({} failed and retried, {} fetch failures, {} speculative, {} killed), {} shuffle bytes written, {} fetched from peers{spill}{outputs}.",
        summary.elapsed_ms as f64 / 1000.0,
        summary.jobs,
        summary.tasks,
        summary.failed_tasks,
        summary.fetch_failures,
        summary.speculative_tasks,
        summary.killed_tasks,
        shuffled,
        remote
    );
    if let Some(path) = &report.summary_json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Fires on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        t.cancel();
    });
    token
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FLINT_CACHE_DIR") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("flint").join("compiled"))
}
