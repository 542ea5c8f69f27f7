//! The `flint` command line.

use crate::client::{self, ClusterFile};
use crate::local::LocalCluster;
use crate::progress::Progress;
use crate::server::{self, DriverConfig};
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use flint_executor_host::ExecutorConfig;
use flint_executor_host::tls::{self, ClusterCredentials};
use flint_protocol::conf::Conf;
use flint_protocol::wire::{AppSummary, SubmitRequest};
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
    /// Start a driver; executors and submitters join it with `DIR/cluster.json`.
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
        /// The driver's `cluster.json`.
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
        /// The driver's `cluster.json` (asks its JSON API).
        #[arg(
            long,
            conflicts_with = "event_log",
            required_unless_present = "event_log"
        )]
        join: Option<PathBuf>,
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
    /// Submit a job to a running driver; exits 0 when it succeeded.
    Submit {
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
        let l = crate::ui::bind(&self.ui_host, self.ui_port)
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
            let (name, component) = load_job(&job)?;
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
            let req = request(name, component, args, &conf);
            let mut progress = Progress::new();
            let result = client::submit(&cluster.member, &cluster.driver_addr, req, |e| {
                progress.on(e)
            })
            .await?;
            finish(result, &report)
        }
        Command::New { name, sdk } => {
            let sdk = sdk.unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("guest-sdk")
            });
            new_job_crate(&name, &sdk)?;
            eprintln!(
                "flint: created job crate {0}; run it with `flint run {0} -- INPUT OUTPUT`",
                name.display()
            );
            Ok(())
        }
        Command::History { dir, web } => {
            let sink = crate::ui::EventSink::replay(&dir)?;
            let jobs = sink.state().jobs.len();
            let listener = web.bind()?;
            eprintln!("flint history: {jobs} job(s) from {}", dir.display());
            crate::ui::spawn(listener, sink)?;
            shutdown_on_signal().cancelled().await;
            Ok(())
        }
        Command::Usage {
            tenant,
            join,
            event_log,
        } => {
            let report = match (join, event_log) {
                (_, Some(dir)) => crate::ui::EventSink::replay(&dir)?.state().usage(&tenant),
                (Some(join), None) => {
                    let cluster = ClusterFile::load(&join)?;
                    let Some(ui) = cluster.ui else {
                        bail!(
                            "the driver of {} serves no API (started with --no-ui)",
                            join.display()
                        );
                    };
                    let path = format!("/api/v1/usage?tenant={tenant}");
                    let body = tokio::task::spawn_blocking(move || crate::ui::http_get(&ui, &path))
                        .await??;
                    serde_json::from_str(&body).context("the driver's usage answer")?
                }
                (None, None) => bail!("give --join or --event-log"),
            };
            print!("{}", crate::ui::usage_text(&report));
            Ok(())
        }
        Command::Tenant {
            command:
                TenantCommand::Add {
                    name,
                    tenants,
                    allowed_paths,
                },
        } => {
            let token = crate::tenants::add_tenant(&tenants, &name, allowed_paths)?;
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
        } => {
            let conf = settings.load()?;
            let tenants = match &tenants {
                Some(f) => crate::tenants::Tenants::load(f)?,
                None => Default::default(),
            };
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("creating state dir {}", state_dir.display()))?;
            let creds = ClusterCredentials::generate()?;
            let endpoint = tls::endpoint(&creds.driver, listen)
                .with_context(|| format!("listening on {listen}"))?;
            let addr = endpoint.local_addr()?;
            let cluster_file = state_dir.join("cluster.json");
            let ui = if no_ui { None } else { Some(web.bind()?) };
            let ui_addr = match &ui {
                Some(l) => Some(l.local_addr()?.to_string()),
                None => None,
            };
            ClusterFile {
                driver: addr.to_string(),
                protocol_version: flint_protocol::PROTOCOL_VERSION,
                member: creds.member,
                ui: ui_addr,
            }
            .save(&cluster_file)
            .with_context(|| format!("writing {}", cluster_file.display()))?;
            println!(
                "flint driver listening on {addr}; members join with {}",
                cluster_file.display()
            );
            let shutdown = shutdown_on_signal();
            server::serve(
                DriverConfig {
                    conf,
                    sandbox: None,
                    cache_dir: Some(cache_dir.unwrap_or_else(|| state_dir.join("compiled"))),
                    ui,
                    event_log: web.event_log.clone(),
                    tenants,
                },
                endpoint,
                shutdown,
            )
            .await?;
            Ok(())
        }
        Command::Executor {
            join,
            cores,
            work_dir,
            listen,
            cache_dir,
            metrics_addr,
            settings,
        } => {
            let conf = settings.load()?;
            let metrics =
                std::sync::Arc::new(flint_executor_host::metrics::ExecutorMetrics::default());
            let metrics_listener = std::net::TcpListener::bind(metrics_addr)
                .with_context(|| format!("metrics on {metrics_addr}"))?;
            let served_at = metrics_listener.local_addr()?.to_string();
            serve_metrics(metrics_listener, metrics.clone())?;
            let cluster = ClusterFile::load(&join)?;
            check_version(&cluster)?;
            let endpoint = tls::endpoint(&cluster.member, listen)
                .with_context(|| format!("listening on {listen}"))?;
            let config = ExecutorConfig {
                driver_addr: cluster.driver.clone(),
                cores,
                cache_dir: Some(cache_dir.unwrap_or_else(|| work_dir.join("compiled"))),
                work_dir,
                advertise_addr: None,
                sandbox: None,
                decommission_timeout: conf.duration("executor.decommission_timeout"),
                cache_memory: conf.bytes("executor.cache_memory"),
                metrics,
                metrics_addr: Some(served_at),
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
            let cluster = ClusterFile::load(&join)?;
            check_version(&cluster)?;
            let (name, component) = load_job(&job)?;
            let mut req = request(name, component, args, &conf);
            if let Some(f) = &token_file {
                let token = std::fs::read_to_string(f)
                    .with_context(|| format!("reading token file {}", f.display()))?;
                req.token = Some(token.trim().to_string());
            }
            let mut progress = Progress::new();
            let result =
                client::submit(&cluster.member, &cluster.driver, req, |e| progress.on(e)).await?;
            finish(result, &report)
        }
    }
}

fn check_version(c: &ClusterFile) -> anyhow::Result<()> {
    if c.protocol_version != flint_protocol::PROTOCOL_VERSION {
        bail!(
            "the cluster speaks protocol version {}, this flint speaks {}",
            c.protocol_version,
            flint_protocol::PROTOCOL_VERSION
        );
    }
    Ok(())
}

fn request(name: String, component: Vec<u8>, args: Vec<String>, conf: &Conf) -> SubmitRequest {
    SubmitRequest {
        protocol_version: flint_protocol::PROTOCOL_VERSION,
        name,
        component,
        args,
        conf: conf.pairs(),
        token: None,
    }
}

fn finish(result: Result<AppSummary, Vec<String>>, report: &Report) -> anyhow::Result<()> {
    match result {
        Ok(summary) => {
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
            let outputs = if summary.outputs.is_empty() {
                String::new()
            } else {
                format!("; output in {}", summary.outputs.join(", "))
            };
            eprintln!(
                "flint: done in {:.2}s: {} job(s), {} task attempt(s) ({} failed and retried, {} fetch failures, {} speculative, {} killed), {} shuffle bytes written, {} fetched from peers{outputs}.",
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
        Err(chain) => {
            let mut it = chain.into_iter().rev();
            let mut err = anyhow::anyhow!(it.next().unwrap_or_else(|| "the job failed".into()));
            for c in it {
                err = err.context(c);
            }
            Err(err)
        }
    }
}

/// Serves an executor's `/metrics`.
fn serve_metrics(
    listener: std::net::TcpListener,
    metrics: std::sync::Arc<flint_executor_host::metrics::ExecutorMetrics>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
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

/// A job's name and component bytes: a `.wasm` file, or a crate directory to build.
fn load_job(job: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let wasm = if job.is_dir() {
        build_job_crate(job)?
    } else {
        job.to_path_buf()
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading job {}", wasm.display()))?;
    let name = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".into());
    Ok((name, bytes))
}

/// Writes a job crate (`Cargo.toml`, `src/lib.rs`, `.gitignore`) into the new directory
/// `dir`: a word count to start from, depending on the guest SDK at `sdk`.
pub fn new_job_crate(dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the new crate needs a directory name")?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if !valid {
        bail!(
            "{name:?} is not a crate name: use letters, digits, `-` and `_`, starting with a letter"
        );
    }
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = std::path::absolute(sdk)?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("no guest SDK at {} (give one with --sdk)", sdk.display());
    }
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A Flint job is one WebAssembly component: build it with `flint run .`, or
# `cargo build --target wasm32-wasip2 --release`.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
flint-guest-sdk = {{ path = {sdk:?} }}
serde = {{ version = "1", features = ["derive"] }}

# Its own workspace, wherever it is created.
[workspace]

# What `flint run` builds with: optimised, without DWARF (smaller to compile on load).
[profile.guest]
inherits = "release"
debug = false
strip = "debuginfo"
"#,
            sdk = sdk.display().to_string()
        ),
    )?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    std::fs::write(
        dir.join("src/lib.rs"),
        r#"//! A Flint job: `flint run . -- INPUT OUTPUT` counts the words of INPUT into OUTPUT.
//!
//! `main` runs on the driver and builds a lazy plan; the closures run in tasks on the
//! executors. See the guest SDK's documentation (`cargo doc -p flint-guest-sdk --open`).

use flint::{Context, Result};

#[flint::main]
fn main(ctx: &mut Context) -> Result<()> {
    let [input, output] = ctx.args()?;
    ctx.text_file(&input)?
        .flat_map(|line: String| {
            line.split_whitespace()
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .map(|w: String| (w, 1u64))
        .reduce_by_key(|a, b| a + b)
        .save_as_text(&output)?;
    Ok(())
}
"#,
    )?;
    Ok(())
}

/// `cargo build --target wasm32-wasip2 --profile guest` in a job crate; returns its `.wasm`.
pub fn build_job_crate(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} is a directory without a Cargo.toml: give a job crate or a .wasm file",
            dir.display()
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let meta = std::process::Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .with_context(|| "running cargo metadata (is cargo installed?)")?;
    if !meta.status.success() {
        bail!(
            "cargo metadata failed for {}: {}",
            manifest.display(),
            String::from_utf8_lossy(&meta.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let target_dir =
        PathBuf::from(meta["target_directory"].as_str().unwrap_or("target")).join("flint-guest");
    eprintln!("flint: building {} for wasm32-wasip2", dir.display());
    let out = std::process::Command::new(&cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "building {} failed (see cargo's output above); is the target installed? `rustup target add wasm32-wasip2`",
            dir.display()
        );
    }
    let manifest_abs = std::fs::canonicalize(&manifest)?;
    let mut found = None;
    for line in out.stdout.split(|b| *b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let same = msg["manifest_path"]
            .as_str()
            .map(PathBuf::from)
            .and_then(|p| std::fs::canonicalize(p).ok())
            == Some(manifest_abs.clone());
        if !same {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                found = Some(PathBuf::from(f));
            }
        }
    }
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "{} built no .wasm: a job crate needs `crate-type = [\"cdylib\"]`",
            dir.display()
        )
    })
}
