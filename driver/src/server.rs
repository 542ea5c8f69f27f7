//! The driver's QUIC endpoint: executors register here, submitters submit here.

use crate::app::{DriverShared, run_application};
use crate::cluster::{ClusterLoop, Event};
use flint_executor_host::net::{self, NetError};
use flint_executor_host::sandbox::{Sandbox, SandboxError, SandboxOptions};
use flint_protocol::conf::Conf;
use flint_protocol::scheduler::SchedulerConf;
use flint_protocol::wire::{self, FetchModule, FromExecutor, Hello, SubmitEvent, ToExecutor};
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub struct DriverConfig {
    pub conf: Conf,
    /// A sandbox to share (local mode); `None`: make one caching in `cache_dir`.
    pub sandbox: Option<Arc<Sandbox>>,
    pub cache_dir: Option<PathBuf>,
    /// Serve the web UI on this listener.
    pub ui: Option<std::net::TcpListener>,
    /// Append scheduler events here, one JSON-lines file per job.
    pub event_log: Option<PathBuf>,
    /// Who may submit; open (everyone is `default`) when empty.
    pub tenants: crate::tenants::Tenants,
}

#[derive(Debug, Error)]
pub enum DriverError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    EventLog(#[from] crate::ui::EventLogError),
    #[error("web UI: {0}")]
    Ui(std::io::Error),
}

/// Serves until `shutdown` fires.
pub async fn serve(
    config: DriverConfig,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
) -> Result<(), DriverError> {
    let sandbox = match config.sandbox {
        Some(s) => s,
        None => Sandbox::new(SandboxOptions {
            fuel: false,
            max_instances: 32,
            max_memory_bytes: 4 << 30,
            cache_dir: config.cache_dir,
        })?,
    };
    let conf = config.conf;
    let (events, rx) = mpsc::channel(4096);
    let sched = SchedulerConf {
        executor_timeout_ms: conf.duration("executor.timeout").as_millis() as u64,
        fair: conf.fair(),
    };
    let tick = conf
        .duration("executor.heartbeat_interval")
        .min(std::time::Duration::from_millis(200));
    let sink = crate::ui::EventSink::live(config.event_log)?;
    if let Some(listener) = config.ui {
        crate::ui::spawn(listener, sink.clone()).map_err(DriverError::Ui)?;
    }
    let cluster = tokio::spawn(ClusterLoop::new(sched, tick, sink).run(rx));
    let shared = Arc::new(DriverShared::new(events, sandbox, conf, config.tenants));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = handle_connection(shared, conn).await {
                        tracing::debug!("connection ended: {e}");
                    }
                }
                Err(e) => tracing::info!("refused a connection: {e}"),
            }
        });
    }
    cluster.abort();
    endpoint.close(0u32.into(), b"driver stopping");
    Ok(())
}

async fn handle_connection(
    shared: Arc<DriverShared>,
    conn: quinn::Connection,
) -> Result<(), NetError> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    match net::expect_frame::<Hello>(&mut recv, wire::MAX_FRAME).await? {
        Hello::Executor(hello) => {
            if hello.protocol_version != flint_protocol::PROTOCOL_VERSION {
                let reason = format!(
                    "protocol version {} is not this driver's {}",
                    hello.protocol_version,
                    flint_protocol::PROTOCOL_VERSION
                );
                net::write_frame(&mut send, &ToExecutor::Refused { reason }).await?;
                let _ = send.finish();
                return Ok(());
            }
            let (tx, mut rx) = mpsc::channel::<ToExecutor>(1024);
            let (id_tx, id_rx) = oneshot::channel();
            let _ = shared
                .events
                .send(Event::ExecutorUp {
                    cores: hello.cores,
                    shuffle_addr: hello.shuffle_addr,
                    metrics_addr: hello.metrics_addr,
                    tx,
                    reply: id_tx,
                })
                .await;
            let Ok(id) = id_rx.await else { return Ok(()) };
            let heartbeat_interval_ms = shared
                .conf
                .duration("executor.heartbeat_interval")
                .as_millis() as u64;
            net::write_frame(
                &mut send,
                &ToExecutor::Welcome {
                    executor: id,
                    heartbeat_interval_ms,
                },
            )
            .await?;
            let writer = tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if net::write_frame(&mut send, &msg).await.is_err() {
                        break;
                    }
                }
            });
            let modules = {
                let (conn, shared) = (conn.clone(), shared.clone());
                tokio::spawn(async move {
                    while let Ok((mut s, mut r)) = conn.accept_bi().await {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let Ok(req) = net::expect_frame::<FetchModule>(&mut r, 1024).await
                            else {
                                return;
                            };
                            let reply = match req {
                                FetchModule::Module(module) => shared
                                    .modules
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get(&module)
                                    .cloned()
                                    .ok_or_else(|| format!("the driver has no component {module}")),
                                FetchModule::Broadcast { app, id, secret } => {
                                    shared.broadcast(app, id, &secret)
                                }
                            };
                            let _ = net::send_blob(
                                &mut s,
                                reply
                                    .as_deref()
                                    .map(|b| b.as_slice())
                                    .map_err(|e| e.clone()),
                            )
                            .await;
                        });
                    }
                })
            };
            while let Ok(Some(msg)) =
                net::read_frame::<FromExecutor>(&mut recv, wire::MAX_FRAME).await
            {
                if shared
                    .events
                    .send(Event::Executor { id, msg })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            writer.abort();
            modules.abort();
            let _ = shared.events.send(Event::ExecutorDown { id }).await;
            Ok(())
        }
        Hello::Submit(req) => {
            if req.protocol_version != flint_protocol::PROTOCOL_VERSION {
                let msg = format!(
                    "protocol version {} is not this driver's {}",
                    req.protocol_version,
                    flint_protocol::PROTOCOL_VERSION
                );
                net::write_frame(&mut send, &SubmitEvent::Finished(Err(vec![msg]))).await?;
                let _ = send.finish();
                return Ok(());
            }
            // Who is asking, before anything of theirs runs.
            let tenant = match shared.tenants.authenticate(req.token.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(addr = %conn.remote_address(), "refused a submission: {e}");
                    net::write_frame(&mut send, &SubmitEvent::Finished(Err(vec![e.to_string()])))
                        .await?;
                    let _ = send.finish();
                    let _ = conn.closed().await;
                    return Ok(());
                }
            };
            let (tx, mut rx) = mpsc::channel::<SubmitEvent>(64);
            let app = tokio::spawn(run_application(shared, req, tenant, tx));
            while let Some(ev) = rx.recv().await {
                net::write_frame(&mut send, &ev).await?;
            }
            let result = app.await.unwrap_or_else(|e| {
                Err(vec![format!(
                    "the application crashed the driver task: {e}"
                )])
            });
            net::write_frame(&mut send, &SubmitEvent::Finished(result)).await?;
            let _ = send.finish();
            // Keep the connection until the submitter has read everything and closes.
            let _ = conn.closed().await;
            Ok(())
        }
    }
}
