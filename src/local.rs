//! The embedded local cluster of `flint run`: a driver and N executors in this process,
//! talking over loopback QUIC. It is the same code as a real cluster, not a second path:
//! the executors enrol with the driver's cluster file as separate hosts would, and the
//! job is submitted with the client file a tenant would hold.

use flint_driver::{Credentials, DriverConfig, UiConfig};
use flint_executor_host::ExecutorConfig;
use flint_protocol::conf::Conf;
use flint_sandbox::{Sandbox, SandboxOptions};
use flint_transport::ClientFile;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

pub struct LocalCluster {
    /// What the local tenant submits with.
    pub client: ClientFile,
    shutdown: CancellationToken,
    _work: tempfile::TempDir,
}

impl LocalCluster {
    pub async fn start(
        executors: u32,
        cores: u32,
        conf: Conf,
        cache_dir: Option<PathBuf>,
    ) -> anyhow::Result<LocalCluster> {
        Self::start_with(executors, cores, conf, cache_dir, None, None).await
    }

    /// `start`, with the web UI on `ui` and an event log in `event_log`.
    pub async fn start_with(
        executors: u32,
        cores: u32,
        conf: Conf,
        cache_dir: Option<PathBuf>,
        ui: Option<std::net::TcpListener>,
        event_log: Option<PathBuf>,
    ) -> anyhow::Result<LocalCluster> {
        let settings = conf.settings();
        let credentials = Credentials::generate()?;
        let loopback: std::net::SocketAddr = "127.0.0.1:0".parse()?;
        let driver_ep = credentials.endpoint(loopback)?;
        let driver_addr = driver_ep.local_addr()?.to_string();
        let ui_addr = match &ui {
            Some(l) => Some(l.local_addr()?.to_string()),
            None => None,
        };
        let cluster_file = credentials.cluster_file(&driver_addr);
        let client = credentials.client_file(&driver_addr, ui_addr);
        // One sandbox for the whole process: a component compiles once, not once per executor.
        let sandbox = Sandbox::new(SandboxOptions {
            fuel: false,
            max_instances: executors * cores * 2 + 8,
            max_memory_bytes: settings.task_memory.max(settings.main_memory).max(1 << 20),
            cache_dir,
        })?;
        let shutdown = CancellationToken::new();
        let work = tempfile::Builder::new().prefix("flint-local-").tempdir()?;
        tokio::spawn(flint_driver::serve(
            DriverConfig {
                conf,
                credentials,
                sandbox: Some(sandbox.clone()),
                cache_dir: None,
                ui: ui.map(|listener| UiConfig {
                    listener,
                    admin_token: None,
                }),
                event_log,
                tenants: Default::default(),
            },
            driver_ep,
            shutdown.clone(),
        ));
        for i in 0..executors {
            let identity = flint_executor_host::enrol(&cluster_file).await?;
            let ep = identity.endpoint(loopback)?;
            let config = ExecutorConfig {
                driver_addr: driver_addr.clone(),
                identity,
                cores,
                work_dir: work.path().join(format!("executor-{i}")),
                advertise_addr: None,
                sandbox: Some(sandbox.clone()),
                cache_dir: None,
                decommission_timeout: settings.executor_decommission_timeout,
                cache_memory: settings.executor_cache_memory,
                // The executors of one process share its machine.
                memory: match settings.executor_memory {
                    0 => flint_executor_host::memory::default_total() / u64::from(executors.max(1)),
                    m => m,
                },
                metrics: Default::default(),
                metrics_listener: None,
            };
            let token = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = flint_executor_host::serve(config, ep, token).await {
                    tracing::error!("local executor {i} stopped: {e}");
                }
            });
        }
        Ok(LocalCluster {
            client,
            shutdown,
            _work: work,
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
