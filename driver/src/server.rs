//! The driver's QUIC endpoint. Every connection opens with the preamble and a small
//! hello; what it may say depends on who it is (its TLS identity):
//! - a connection with an executor certificate registers as an executor, and only that;
//! - a connection without one submits (with a tenant token) or enrols (with the
//!   operator's enrolment token), never speaks as an executor.
//!
//! Anything else is refused with a reason and the connection closed.

use crate::app::{Application, DriverShared, application_conf, run_application};
use crate::cluster::{ClusterLoop, Event};
use flint_protocol::conf::Conf;
use flint_protocol::scheduler::SchedulerConf;
use flint_protocol::wire::{
    self, AppError, AppErrorKind, EnrolGrant, EnrolReply, EnrolRequest, ExecutorHello, FetchModule,
    FromExecutor, Hello, SubmitEvent, SubmitHello, ToExecutor,
};
use flint_sandbox::{Sandbox, SandboxError, SandboxOptions};
use flint_transport::net::{self, NetError};
use flint_transport::tls::{self, ClusterAuthority, DriverIdentity, TlsError};
use flint_transport::{ClientFile, ClusterFile, FileKind};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Messages to one executor that go out in one write, at most.
const WRITE_BATCH: usize = 64;

/// The driver's secrets: the cluster's authorities, its own identity, and the enrolment
/// token that lets a host become an executor. Made at start; the token goes into
/// `cluster.json` only.
pub struct Credentials {
    authority: ClusterAuthority,
    identity: DriverIdentity,
    enrolment_token: String,
}

impl Credentials {
    pub fn generate() -> Result<Credentials, TlsError> {
        let authority = ClusterAuthority::generate()?;
        let identity = authority.driver_identity()?;
        let token: [u8; 32] = rand::random();
        Ok(Credentials {
            authority,
            identity,
            enrolment_token: hex::encode(token),
        })
    }

    /// The driver's endpoint on `listen`.
    pub fn endpoint(&self, listen: std::net::SocketAddr) -> Result<quinn::Endpoint, NetError> {
        tls::driver_endpoint(&self.identity, listen)
    }

    /// What an executor joins with (the operator keeps it).
    pub fn cluster_file(&self, driver: &str) -> ClusterFile {
        ClusterFile {
            file: FileKind::Cluster,
            driver: driver.to_string(),
            protocol_version: flint_protocol::PROTOCOL_VERSION,
            driver_ca_pem: self.authority.driver_ca_pem().to_string(),
            enrolment_token: self.enrolment_token.clone(),
        }
    }

    /// What a tenant is given.
    pub fn client_file(&self, driver: &str, ui: Option<String>) -> ClientFile {
        ClientFile {
            file: FileKind::Client,
            driver: driver.to_string(),
            protocol_version: flint_protocol::PROTOCOL_VERSION,
            driver_ca_pem: self.authority.driver_ca_pem().to_string(),
            ui,
        }
    }
}

/// The web UI's listener and who may read it.
pub struct UiConfig {
    pub listener: std::net::TcpListener,
    /// Required of every request when the listener is not on loopback (with a tenant's
    /// token, which sees that tenant's jobs only).
    pub admin_token: Option<String>,
}

pub struct DriverConfig {
    pub conf: Conf,
    pub credentials: Credentials,
    /// A sandbox to share (local mode); `None`: make one caching in `cache_dir`.
    pub sandbox: Option<Arc<Sandbox>>,
    pub cache_dir: Option<PathBuf>,
    /// Serve the web UI.
    pub ui: Option<UiConfig>,
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

/// What connection handlers share besides the applications' state.
struct Endpointed {
    shared: Arc<DriverShared>,
    authority: ClusterAuthority,
    enrolment_sha256: [u8; 32],
}

/// Serves until `shutdown` fires.
pub async fn serve(
    config: DriverConfig,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
) -> Result<(), DriverError> {
    let conf = config.conf;
    let settings = conf.settings();
    let sandbox = match config.sandbox {
        Some(s) => s,
        None => Sandbox::new(SandboxOptions {
            fuel: false,
            max_instances: settings.max_apps + 2,
            max_memory_bytes: settings.main_memory.max(1 << 20),
            cache_dir: config.cache_dir,
        })?,
    };
    let (events, rx) = mpsc::channel(4096);
    let sched = SchedulerConf {
        executor_timeout_ms: settings.executor_timeout.as_millis() as u64,
        fair: settings.scheduler_mode == flint_protocol::conf::SchedulingMode::Fair,
    };
    let tick = settings
        .executor_heartbeat_interval
        .min(Duration::from_millis(200));
    let sink = crate::ui::EventSink::live(config.event_log)?;
    if let Some(ui) = config.ui {
        let access = crate::ui::Access::new(&ui.listener, ui.admin_token, config.tenants.clone())
            .map_err(DriverError::Ui)?;
        crate::ui::spawn(ui.listener, sink.clone(), access).map_err(DriverError::Ui)?;
    }
    let cluster = tokio::spawn(ClusterLoop::new(sched, tick, sink, events.clone()).run(rx));
    let credentials = config.credentials;
    let ctx = Arc::new(Endpointed {
        shared: Arc::new(DriverShared::new(events, sandbox, conf, config.tenants)),
        enrolment_sha256: Sha256::digest(credentials.enrolment_token.as_bytes()).into(),
        authority: credentials.authority,
    });
    // Connections not yet past their hello, at once: each may hold a few MiB of windows.
    let unknown = Arc::new(tokio::sync::Semaphore::new(MAX_UNKNOWN_PEERS));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let Ok(permit) = unknown.clone().try_acquire_owned() else {
            tracing::warn!(peer = %incoming.remote_address(), "refused a connection: {MAX_UNKNOWN_PEERS} are being opened already");
            incoming.refuse();
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    let peer = conn.remote_address();
                    if let Err(e) = handle_connection(&ctx, conn, permit).await {
                        tracing::debug!(%peer, "connection ended: {e}");
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

/// Finishes a refused conversation: the reason is written, the stream finished, and
/// the connection left for the peer to close (or closed after a grace period).
async fn refuse_with<T: serde::Serialize>(
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    msg: &T,
) -> Result<(), NetError> {
    net::write_frame(&mut send, msg).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    conn.close(1u32.into(), b"refused");
    Ok(())
}

/// Connections being opened (not past their hello) at once; more are refused.
const MAX_UNKNOWN_PEERS: usize = 128;

async fn handle_connection(
    ctx: &Endpointed,
    conn: quinn::Connection,
    opening: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), NetError> {
    let executor = tls::has_client_certificate(&conn);
    let (send, mut recv) = match net::accept(&conn).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(peer = %conn.remote_address(), "refused a connection: {e}");
            // Our preamble went back: let the peer read it (and close) before the reason
            // closes the connection for it.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(1u32.into(), e.to_string().as_bytes());
            return Err(e);
        }
    };
    let hello = match net::read_hello::<Hello>(&mut recv).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(peer = %conn.remote_address(), executor, "refused a connection before its hello: {e}");
            conn.close(1u32.into(), b"bad hello");
            return Err(e);
        }
    };
    drop(opening);
    match (executor, hello) {
        (true, Hello::Executor(h)) => executor_connection(ctx, conn, send, recv, h).await,
        (false, Hello::Submit(h)) => submission(ctx, conn, send, recv, h).await,
        (false, Hello::Enrol(r)) => enrol(ctx, conn, send, r).await,
        (false, Hello::Executor(_)) => {
            tracing::warn!(peer = %conn.remote_address(), "refused an executor without an executor certificate");
            let reason = "this connection presents no executor certificate: an executor enrols \
                          with the operator's cluster.json first (a tenant's client.json cannot \
                          register one)"
                .to_string();
            refuse_with(&conn, send, &ToExecutor::Refused { reason }).await
        }
        (true, Hello::Submit(_)) => {
            let e = AppError::refused(
                "this connection presents an executor certificate: submit as a tenant, with client.json",
            );
            refuse_with(&conn, send, &SubmitEvent::Finished(Err(e))).await
        }
        (true, Hello::Enrol(_)) => {
            let reply: EnrolReply = Err("this connection is an executor's already".into());
            refuse_with(&conn, send, &reply).await
        }
    }
}

/// Whether `token` is this cluster's enrolment token, compared without an early exit.
fn token_matches(ctx: &Endpointed, token: &str) -> bool {
    let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    flint_protocol::constant_time_eq(&got, &ctx.enrolment_sha256)
}

async fn enrol(
    ctx: &Endpointed,
    conn: quinn::Connection,
    send: quinn::SendStream,
    req: EnrolRequest,
) -> Result<(), NetError> {
    let reply: EnrolReply = if !token_matches(ctx, &req.token) {
        tracing::warn!(peer = %conn.remote_address(), "refused an enrolment: wrong token");
        // Slow down guessing (the token has 256 bits; this keeps logs quiet too).
        tokio::time::sleep(Duration::from_millis(500)).await;
        Err(
            "the enrolment token is not this cluster's: executors join with the cluster.json the \
             operator keeps, not a tenant's client.json"
                .into(),
        )
    } else {
        ctx.authority
            .issue_executor(&req.public_key)
            .map(|cert_pem| EnrolGrant {
                cert_pem,
                executor_ca_pem: ctx.authority.executor_ca_pem().to_string(),
            })
            .map_err(|e| e.to_string())
    };
    refuse_with(&conn, send, &reply).await
}

async fn executor_connection(
    ctx: &Endpointed,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hello: ExecutorHello,
) -> Result<(), NetError> {
    let shared = ctx.shared.clone();
    if hello.cores == 0 || hello.cores > wire::MAX_EXECUTOR_CORES {
        let reason = format!(
            "an executor declares 1 to {} task slots, not {}",
            wire::MAX_EXECUTOR_CORES,
            hello.cores
        );
        return refuse_with(&conn, send, &ToExecutor::Refused { reason }).await;
    }
    let (tx, mut rx) = mpsc::channel::<ToExecutor>(1024);
    let (id_tx, id_rx) = oneshot::channel();
    let _ = shared
        .events
        .send(Event::ExecutorUp {
            cores: hello.cores,
            shuffle_addr: hello.shuffle_addr,
            metrics_addr: hello.metrics_addr,
            conn: conn.clone(),
            tx,
            reply: id_tx,
        })
        .await;
    let Ok(id) = id_rx.await else { return Ok(()) };
    tls::open_up(&conn);
    let heartbeat_interval_ms = shared.settings.executor_heartbeat_interval.as_millis() as u64;
    net::write_frame(
        &mut send,
        &ToExecutor::Welcome {
            executor: id,
            heartbeat_interval_ms,
        },
    )
    .await?;
    let writer = tokio::spawn(async move {
        // Launches that piled up go out in one write.
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            if net::write_frames(&mut send, &batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    });
    let modules = {
        let (conn, shared) = (conn.clone(), shared.clone());
        tokio::spawn(async move {
            while let Ok((mut s, mut r)) = conn.accept_bi().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let Ok(req) = net::expect_frame::<FetchModule>(&mut r, 1024).await else {
                        return;
                    };
                    let reply = match req {
                        FetchModule::Module(module) => shared
                            .module(&module)
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
    loop {
        match net::read_frame::<FromExecutor>(&mut recv, wire::MAX_STATUS).await {
            Ok(Some(msg)) => {
                if shared
                    .events
                    .send(Event::Executor { id, msg })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                if !matches!(e, NetError::Read(_) | NetError::Connection(_)) {
                    tracing::warn!(executor = id.0, "closing the executor's connection: {e}");
                    conn.close(1u32.into(), e.to_string().as_bytes());
                }
                break;
            }
        }
    }
    writer.abort();
    modules.abort();
    let _ = shared.events.send(Event::ExecutorDown { id }).await;
    Ok(())
}

/// The component's bytes as the submitter sends them after `Accepted`, checked against
/// the hash of its hello; a typed refusal when they are late or not that component.
async fn receive_component(
    recv: &mut quinn::RecvStream,
    hello: &SubmitHello,
) -> Result<Result<Vec<u8>, AppError>, NetError> {
    // A generous deadline (a slow link at 1 MiB/s), so a stalled upload does not hold
    // the tenant's place among the running applications.
    let upload = Duration::from_secs(30 + hello.component_bytes / (1 << 20));
    let read = net::read_exact_vec(recv, hello.component_bytes as usize);
    let Ok(component) = tokio::time::timeout(upload, read).await else {
        return Ok(Err(AppError::refused(format!(
            "the component's {} bytes did not arrive within {upload:?}",
            hello.component_bytes
        ))));
    };
    let component = component?;
    if flint_sandbox::hash_bytes(&component) != hello.component {
        return Ok(Err(AppError::new(
            AppErrorKind::BadComponent,
            vec!["the component's bytes do not match the hash its submitter sent".into()],
        )));
    }
    Ok(Ok(component))
}

async fn submission(
    ctx: &Endpointed,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hello: SubmitHello,
) -> Result<(), NetError> {
    let shared = ctx.shared.clone();
    let peer = conn.remote_address();
    // Who is asking, and whether there is room, before anything of theirs is read.
    let admitted = (|| {
        let tenant = shared.authenticate(hello.token.as_deref())?;
        let admission = shared.admit(&tenant)?;
        let max = shared.settings.max_component_size;
        if hello.component_bytes > max {
            return Err(AppError::limit(
                "driver.max_component_size",
                format!(
                    "the component has {} bytes, over driver.max_component_size ({max} bytes)",
                    hello.component_bytes
                ),
            ));
        }
        let conf = application_conf(&shared.conf, &hello.conf, &tenant)?;
        Ok((tenant, admission, conf))
    })();
    let (tenant, admission, conf) = match admitted {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%peer, "refused a submission: {e}");
            return refuse_with(&conn, send, &SubmitEvent::Finished(Err(e))).await;
        }
    };
    let kept = shared.component_sent_before(&tenant.name, &hello.component, hello.component_bytes);
    let accepted = SubmitEvent::Accepted {
        app: admission.app,
        upload: kept.is_none(),
    };
    net::write_frame(&mut send, &accepted).await?;
    tls::open_up(&conn);
    let component = match kept {
        Some(bytes) => {
            tracing::debug!(%peer, module = %hello.component, "the tenant sent this component before: not sent again");
            bytes
        }
        None => match receive_component(&mut recv, &hello).await? {
            Ok(bytes) => Arc::new(bytes),
            Err(e) => return refuse_with(&conn, send, &SubmitEvent::Finished(Err(e))).await,
        },
    };
    let app_id = admission.app;
    let (tx, mut rx) = mpsc::channel::<SubmitEvent>(64);
    let application = Application {
        admission,
        name: hello.name,
        component,
        module: hello.component,
        args: hello.args,
        conf,
        tenant,
    };
    let app = run_application(shared, application, tx);
    tokio::pin!(app);
    let result = loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => net::write_frame(&mut send, &ev).await?,
                None => break (&mut app).await,
            },
            r = &mut app => break r,
            _ = conn.closed() => {
                // Dropping the application stops it: its program and its jobs.
                tracing::info!(app = app_id, %peer, "the submitter left: its application stops");
                return Ok(());
            }
        }
    };
    while let Ok(ev) = rx.try_recv() {
        net::write_frame(&mut send, &ev).await?;
    }
    net::write_frame(&mut send, &SubmitEvent::Finished(result)).await?;
    let _ = send.finish();
    // Keep the connection until the submitter has read everything and closes.
    let _ = conn.closed().await;
    Ok(())
}
