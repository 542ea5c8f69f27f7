//! The embedded local cluster of `flint run`: a driver and N executors in this process,
//! talking over loopback QUIC with the same certificates as a real cluster.

use crate::server::{self, DriverConfig};
use flint_executor_host::ExecutorConfig;
use flint_executor_host::sandbox::{Sandbox, SandboxOptions};
use flint_executor_host::tls::{self, ClusterCredentials, Identity};
use flint_protocol::conf::Conf;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

pub struct LocalCluster {
    pub driver_addr: String,
    pub member: Identity,
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
        let creds = ClusterCredentials::generate()?;
        let loopback: std::net::SocketAddr = "127.0.0.1:0".parse()?;
        let driver_ep = tls::endpoint(&creds.driver, loopback)?;
        let driver_addr = driver_ep.local_addr()?.to_string();
        // One sandbox for the whole process: a component compiles once, not once per executor.
        let sandbox = Sandbox::new(SandboxOptions {
            fuel: false,
            max_instances: executors * cores * 2 + 8,
            max_memory_bytes: conf.bytes("task.memory").max(1 << 20),
            cache_dir,
        })?;
        let shutdown = CancellationToken::new();
        let work = tempfile::Builder::new().prefix("flint-local-").tempdir()?;
        let conf_grace = conf.duration("executor.decommission_timeout");
        let cache_memory = conf.bytes("executor.cache_memory");
        tokio::spawn(server::serve(
            DriverConfig {
                conf,
                sandbox: Some(sandbox.clone()),
                cache_dir: None,
                ui,
                event_log,
                tenants: Default::default(),
            },
            driver_ep,
            shutdown.clone(),
        ));
        for i in 0..executors {
            let ep = tls::endpoint(&creds.member, loopback)?;
            let config = ExecutorConfig {
                driver_addr: driver_addr.clone(),
                cores,
                work_dir: work.path().join(format!("executor-{i}")),
                advertise_addr: None,
                sandbox: Some(sandbox.clone()),
                cache_dir: None,
                decommission_timeout: conf_grace,
                cache_memory,
                metrics: Default::default(),
                metrics_addr: None,
            };
            let token = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = flint_executor_host::serve(config, ep, token).await {
                    tracing::error!("local executor {i} stopped: {e}");
                }
            });
        }
        Ok(LocalCluster {
            driver_addr,
            member: creds.member,
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
