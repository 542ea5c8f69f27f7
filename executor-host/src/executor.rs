//! The executor process role: enrol with the driver, register, heartbeat, run up to
//! `cores` tasks at once, serve this executor's shuffle outputs to peers and its stored
//! results to the driver.

use crate::metrics::ExecutorMetrics;
use crate::results::ResultStore;
use crate::runner::{ModuleSource, TaskEnv, run_task};
use crate::shuffle::{Fetcher, ShuffleStore, serve_connection};
use flint_protocol::ids::{ModuleHash, TaskAttemptId};
use flint_protocol::wire::{
    self, EnrolReply, EnrolRequest, ExecutorHello, FetchModule, FetchResult, FromExecutor, Hello,
    TaskError, TaskErrorKind, TaskStatus, ToExecutor,
};
use flint_sandbox::{Sandbox, SandboxError, SandboxOptions};
use flint_transport::ClusterFile;
use flint_transport::net::{self, NetError};
use flint_transport::tls::{self, ExecutorIdentity, ExecutorKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct ExecutorConfig {
    /// The driver's QUIC address.
    pub driver_addr: String,
    /// This executor's key and certificate (from [`enrol`]).
    pub identity: ExecutorIdentity,
    /// Task slots.
    pub cores: u32,
    /// Shuffle files live here.
    pub work_dir: PathBuf,
    /// The address peers fetch shuffle data from; default: the endpoint's own address.
    pub advertise_addr: Option<String>,
    /// A sandbox to share (executors of one local cluster share compiled components);
    /// `None`: make one, caching compiled components in `cache_dir`.
    pub sandbox: Option<Arc<Sandbox>>,
    pub cache_dir: Option<PathBuf>,
    /// On shutdown, how long running tasks may go on before they are handed back.
    pub decommission_timeout: Duration,
    /// Memory for cached partitions at least (`executor.cache_memory`).
    pub cache_memory: u64,
    /// Memory its tasks and cache share (`executor.memory`; 0: most of the machine's).
    pub memory: u64,
    /// Counters, served in the Prometheus format on `metrics` when given (and its
    /// address told to the driver).
    pub metrics: Arc<ExecutorMetrics>,
    pub metrics_listener: Option<Arc<std::net::TcpListener>>,
}

/// The attempts this executor is running, each with the token that stops it.
#[derive(Default)]
struct RunningTasks {
    map: Mutex<HashMap<TaskAttemptId, CancellationToken>>,
    /// Signalled whenever an attempt ends.
    idle: Notify,
}

impl RunningTasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskAttemptId, CancellationToken>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn insert(&self, attempt: TaskAttemptId) -> CancellationToken {
        self.lock().entry(attempt).or_default().clone()
    }
    fn remove(&self, attempt: TaskAttemptId) {
        self.lock().remove(&attempt);
        self.idle.notify_one();
    }
    fn cancel(&self, attempt: TaskAttemptId) {
        if let Some(t) = self.lock().get(&attempt) {
            t.cancel();
        }
    }
    fn cancel_all(&self) {
        for t in self.lock().values() {
            t.cancel();
        }
    }
    fn len(&self) -> usize {
        self.lock().len()
    }
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Counts an attempt as running while it holds a slot.
struct Busy<'a>(&'a AtomicU32, &'a AtomicU64);

impl<'a> Busy<'a> {
    fn new(n: &'a AtomicU32, gauge: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        gauge.fetch_add(1, Ordering::Relaxed);
        Busy(n, gauge)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

fn count(m: &ExecutorMetrics, status: &TaskStatus) {
    let add = ExecutorMetrics::add;
    let t = &status.metrics;
    match &status.result {
        Ok(_) => {
            add(&m.tasks_succeeded, 1);
            add(&m.shuffle_write_bytes, t.shuffle_write_bytes);
            add(&m.shuffle_fetch_remote_bytes, t.shuffle_read_remote_bytes);
            add(&m.shuffle_read_local_bytes, t.shuffle_read_local_bytes);
            add(&m.spill_bytes, t.spill_bytes);
        }
        Err(e) => match e.kind {
            TaskErrorKind::Killed => add(&m.tasks_killed, 1),
            TaskErrorKind::FetchFailed { .. } => add(&m.fetch_failures, 1),
            TaskErrorKind::Limit(_) => {
                add(&m.tasks_failed, 1);
                add(&m.sandbox_limit_hits, 1);
            }
            _ => add(&m.tasks_failed, 1),
        },
    }
    if !matches!(&status.result, Err(e) if e.kind == TaskErrorKind::Killed) {
        if t.compiled {
            add(&m.compile_cache_misses, 1);
        } else {
            add(&m.compile_cache_hits, 1);
        }
    }
}

fn killed(attempt: TaskAttemptId, why: &str) -> TaskStatus {
    TaskStatus {
        attempt,
        result: Err(TaskError {
            kind: TaskErrorKind::Killed,
            chain: vec![why.to_string()],
        }),
        metrics: Default::default(),
        output: Default::default(),
        accumulators: Vec::new(),
    }
}

#[derive(Debug, Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the driver refused to enrol this executor: {0}")]
    Enrolment(String),
    #[error("serving metrics: {0}")]
    Metrics(std::io::Error),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("the driver refused this executor: {0}")]
    Refused(String),
    #[error("the driver closed the connection")]
    DriverGone,
    #[error("work dir {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Largest component an executor accepts from the driver.
const MAX_COMPONENT: u64 = 256 << 20;

struct DriverModules {
    conn: quinn::Connection,
}

impl ModuleSource for DriverModules {
    fn fetch(
        &self,
        module: ModuleHash,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send + '_>>
    {
        Box::pin(async move {
            let r = async {
                let (mut send, mut recv) = self.conn.open_bi().await?;
                net::write_frame(&mut send, &FetchModule::Module(module)).await?;
                let _ = send.finish();
                net::recv_blob(&mut recv, MAX_COMPONENT).await
            }
            .await;
            r.map_err(|e: NetError| format!("from the driver: {e}"))
        })
    }

    fn fetch_broadcast(
        &self,
        app: u64,
        id: u32,
        secret: [u8; 16],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, String>> + Send + '_>>
    {
        Box::pin(async move {
            let r = async {
                let (mut send, mut recv) = self.conn.open_bi().await?;
                net::write_frame(&mut send, &FetchModule::Broadcast { app, id, secret }).await?;
                let _ = send.finish();
                net::recv_blob(&mut recv, wire::MAX_FRAME as u64).await
            }
            .await;
            r.map_err(|e: NetError| format!("broadcast {id} from the driver: {e}"))
        })
    }
}

/// Gets this host an executor identity from the driver of `cluster`: a fresh key made
/// here, a certificate for it issued by the cluster's executor CA in exchange for the
/// operator's enrolment token.
pub async fn enrol(cluster: &ClusterFile) -> Result<ExecutorIdentity, ExecutorError> {
    let key = ExecutorKey::generate()?;
    let endpoint = tls::anonymous_endpoint(&cluster.driver_ca_pem)?;
    let conn = net::connect(&endpoint, &cluster.driver, tls::DRIVER_NAME).await?;
    let (mut send, mut recv) = net::open(&conn).await?;
    net::write_frame(
        &mut send,
        &Hello::Enrol(EnrolRequest {
            token: cluster.enrolment_token.clone(),
            public_key: key.public_key(),
        }),
    )
    .await?;
    let _ = send.finish();
    let reply: EnrolReply = net::expect_frame(&mut recv, 1 << 16).await?;
    conn.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    let grant = reply.map_err(ExecutorError::Enrolment)?;
    Ok(key.into_identity(
        grant.cert_pem,
        grant.executor_ca_pem,
        cluster.driver_ca_pem.clone(),
    ))
}

/// Runs an executor until the driver goes away, or `shutdown` fires: then it tells the
/// driver, takes no new tasks, lets running ones finish within `decommission_timeout`,
/// hands back the rest as killed (not failed), and leaves. `endpoint` serves peers: make
/// it with [`ExecutorIdentity::endpoint`].
pub async fn serve(
    config: ExecutorConfig,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
) -> Result<(), ExecutorError> {
    std::fs::create_dir_all(&config.work_dir).map_err(|source| ExecutorError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    // What an earlier run of this executor left (it was killed): no job will read it.
    let results = Arc::new(ResultStore::new(&config.work_dir));
    results.clear();
    let _ = std::fs::remove_dir_all(config.work_dir.join("shuffle"));
    let _ = std::fs::remove_dir_all(config.work_dir.join("spill"));
    let metrics_addr = match &config.metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map_err(ExecutorError::Metrics)?.to_string();
            crate::metrics::serve(l.clone(), config.metrics.clone())
                .map_err(ExecutorError::Metrics)?;
            Some(addr)
        }
        None => None,
    };
    let sandbox = match config.sandbox.clone() {
        Some(s) => s,
        None => Sandbox::new(SandboxOptions {
            fuel: false,
            max_instances: config.cores * 2 + 2,
            max_memory_bytes: 4 << 30,
            cache_dir: config.cache_dir.clone(),
        })?,
    };
    let conn = net::connect_with(
        &endpoint,
        config.identity.driver_client_config()?,
        &config.driver_addr,
        tls::DRIVER_NAME,
    )
    .await?;
    let (mut send, mut recv) = net::open(&conn).await?;
    let shuffle_addr = match &config.advertise_addr {
        Some(a) => a.clone(),
        None => endpoint.local_addr().map_err(NetError::Bind)?.to_string(),
    };
    net::write_frame(
        &mut send,
        &Hello::Executor(ExecutorHello {
            cores: config.cores,
            shuffle_addr: shuffle_addr.clone(),
            metrics_addr,
        }),
    )
    .await?;
    let (me, heartbeat) = match net::expect_frame::<ToExecutor>(&mut recv, wire::MAX_FRAME).await? {
        ToExecutor::Welcome {
            executor,
            heartbeat_interval_ms,
        } => (
            executor,
            Duration::from_millis(heartbeat_interval_ms.max(10)),
        ),
        ToExecutor::Refused { reason } => return Err(ExecutorError::Refused(reason)),
        other => {
            return Err(ExecutorError::Refused(format!(
                "unexpected first message {other:?}"
            )));
        }
    };
    tracing::info!(executor = me.0, %shuffle_addr, cores = config.cores, "registered with the driver");

    let total = match config.memory {
        0 => crate::memory::default_total(),
        m => m,
    };
    let store = Arc::new(ShuffleStore::with_memory(
        &config.work_dir,
        crate::memory::MemoryPool::new(total, config.cache_memory, config.cores),
    ));
    let metrics = config.metrics.clone();
    metrics.slots.store(config.cores as u64, Ordering::Relaxed);
    let served = metrics.shuffle_served_bytes.clone();
    let env = Arc::new(TaskEnv {
        sandbox,
        shuffle: store.clone(),
        results: results.clone(),
        fetcher: Arc::new(Fetcher::new(endpoint.clone(), me, store.clone())),
        modules: Arc::new(DriverModules { conn: conn.clone() }),
        broadcasts: Default::default(),
        work_dir: config.work_dir.clone(),
        tenant_disks: Default::default(),
        builds: Default::default(),
        statuses: Default::default(),
        warm: Arc::new(crate::runner::WarmPool::new(config.cores)),
    });

    // Peers fetching shuffle segments.
    let accept = {
        let (endpoint, store, served) = (endpoint.clone(), store.clone(), served.clone());
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (store, served) = (store.clone(), served.clone());
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(c) => serve_connection(c, store, served).await,
                        Err(e) => tracing::debug!("refused a peer connection: {e}"),
                    }
                });
            }
        })
    };

    // The driver fetching stored results, on streams it opens on our connection.
    let results_server = {
        let (conn, results) = (conn.clone(), results.clone());
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let results = results.clone();
                tokio::spawn(async move {
                    let Ok(req) = net::expect_frame::<FetchResult>(&mut recv, 1024).await else {
                        return;
                    };
                    if let Err(e) = send_result(&results, &mut send, req.attempt).await {
                        tracing::info!(attempt = %req.attempt, "sending a stored result: {e}");
                    }
                });
            }
        })
    };

    // One writer owns the control stream's send side.
    let (tx, mut rx) = mpsc::channel::<FromExecutor>(256);
    let writer = tokio::spawn(async move {
        // Statuses that piled up go out in one write.
        let mut batch = Vec::with_capacity(64);
        while rx.recv_many(&mut batch, 64).await > 0 {
            let msgs: Vec<FromExecutor> = batch.drain(..).map(within_status_limit).collect();
            if net::write_frames(&mut send, &msgs).await.is_err() {
                return;
            }
        }
        // Everything said: end the stream and wait until the driver has read it.
        let _ = send.finish();
        let _ = send.stopped().await;
    });
    let running = Arc::new(AtomicU32::new(0));
    let beat = {
        let (tx, running) = (tx.clone(), running.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            loop {
                tick.tick().await;
                let running = running.load(Ordering::Relaxed);
                if tx.send(FromExecutor::Heartbeat { running }).await.is_err() {
                    break;
                }
            }
        })
    };

    let slots = Arc::new(Semaphore::new(config.cores.max(1) as usize));
    let tasks = Arc::new(RunningTasks::default());
    // Set once shutting down: attempts stopped from then on are handed back.
    let handing_back = Arc::new(AtomicBool::new(false));
    let mut draining: Option<tokio::time::Instant> = None;
    let result = loop {
        if draining.is_some() && tasks.is_empty() {
            break Ok(());
        }
        let deadline = draining.unwrap_or_else(tokio::time::Instant::now);
        let msg = tokio::select! {
            _ = shutdown.cancelled(), if draining.is_none() => {
                let grace = config.decommission_timeout;
                tracing::info!(
                    executor = me.0,
                    running = tasks.len(),
                    "shutting down: no new tasks; running ones get {grace:?} to finish"
                );
                let _ = tx.send(FromExecutor::Decommissioning).await;
                draining = Some(tokio::time::Instant::now() + grace);
                continue;
            }
            _ = tasks.idle.notified(), if draining.is_some() => continue,
            _ = tokio::time::sleep_until(deadline), if draining.is_some() => {
                tracing::info!(executor = me.0, running = tasks.len(), "handing back unfinished tasks");
                handing_back.store(true, Ordering::Relaxed);
                tasks.cancel_all();
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while !tasks.is_empty() {
                        tasks.idle.notified().await;
                    }
                })
                .await;
                break Ok(());
            }
            m = net::read_frame::<ToExecutor>(&mut recv, wire::MAX_FRAME) => m,
        };
        match msg {
            Ok(Some(ToExecutor::Launch(desc))) => {
                let attempt = desc.attempt;
                if draining.is_some() {
                    let status = killed(attempt, "handed back: the executor is shutting down");
                    let _ = tx.send(FromExecutor::Status(Box::new(status))).await;
                    continue;
                }
                // Resolved now, in the order the driver sent them: a later version of a
                // shuffle's statuses is for later tasks.
                let statuses = match env.statuses.for_task(&desc) {
                    Ok(s) => s,
                    Err(e) => {
                        let status = TaskStatus {
                            attempt,
                            result: Err(TaskError {
                                kind: TaskErrorKind::Io,
                                chain: vec![e],
                            }),
                            metrics: Default::default(),
                            output: Default::default(),
                            accumulators: Vec::new(),
                        };
                        let _ = tx.send(FromExecutor::Status(Box::new(status))).await;
                        continue;
                    }
                };
                let cancel = tasks.insert(attempt);
                let (env, tx, slots, running, tasks, handing_back, metrics) = (
                    env.clone(),
                    tx.clone(),
                    slots.clone(),
                    running.clone(),
                    tasks.clone(),
                    handing_back.clone(),
                    metrics.clone(),
                );
                tokio::spawn(async move {
                    let run = async {
                        let _slot = slots.acquire_owned().await;
                        let _busy = Busy::new(&running, &metrics.slots_busy);
                        run_task(&env, *desc, statuses).await
                    };
                    // Dropping the run future stops the guest where it is: wasmtime
                    // unwinds the fiber, and the store goes with it.
                    let status = tokio::select! {
                        s = run => s,
                        _ = cancel.cancelled() => killed(attempt, if handing_back.load(Ordering::Relaxed) {
                            "handed back: the executor is shutting down"
                        } else {
                            "killed at the driver's request (another attempt finished first, or the job ended)"
                        }),
                    };
                    match &status.result {
                        Ok(_) => {
                            tracing::debug!(%attempt, ms = status.metrics.run_ms, "task finished")
                        }
                        Err(e) => {
                            tracing::info!(%attempt, error = %e.chain.join(": "), "task did not succeed")
                        }
                    }
                    count(&metrics, &status);
                    // Cached partitions evicted for room are no longer cached: say so.
                    let mut dropped: std::collections::BTreeMap<_, Vec<u32>> = Default::default();
                    for (job, shuffle, map) in env.shuffle.take_dropped() {
                        dropped.entry((job, shuffle)).or_default().push(map);
                    }
                    for ((job, shuffle), maps) in dropped {
                        let _ = tx
                            .send(FromExecutor::CachedDropped { job, shuffle, maps })
                            .await;
                    }
                    let _ = tx.send(FromExecutor::Status(Box::new(status))).await;
                    tasks.remove(attempt);
                });
            }
            Ok(Some(ToExecutor::MapStatuses(part))) => {
                let (job, shuffle) = (part.job, part.shuffle);
                if let Err(e) = env.statuses.receive(*part) {
                    tracing::warn!(
                        job = job.0,
                        shuffle = shuffle.0,
                        "refusing map statuses: {e}"
                    );
                }
            }
            Ok(Some(ToExecutor::Kill { attempt })) => tasks.cancel(attempt),
            Ok(Some(ToExecutor::CleanJob { job })) => {
                if let Some(app) = job.cached_app() {
                    // The application ended: its broadcast values and its warm instances
                    // go too.
                    env.broadcasts.forget(app);
                    env.warm.forget_app(app);
                }
                env.builds.forget(job);
                env.statuses.forget_job(job);
                let (store, results) = (store.clone(), results.clone());
                tokio::task::spawn_blocking(move || {
                    store.remove_job(job);
                    results.remove_job(job);
                });
            }
            Ok(Some(ToExecutor::DropCached { job, shuffle })) => {
                env.builds.forget_side(job, shuffle);
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.drop_cached(job, shuffle));
            }
            Ok(Some(other)) => tracing::warn!("ignoring unexpected message {other:?}"),
            Ok(None) => break Err(ExecutorError::DriverGone),
            Err(NetError::Read(_)) | Err(NetError::Connection(_)) => {
                break Err(ExecutorError::DriverGone);
            }
            Err(e) => break Err(e.into()),
        }
    };
    if result.is_ok() {
        // Let the statuses already queued reach the driver before the connection closes.
        beat.abort();
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    } else {
        writer.abort();
    }
    beat.abort();
    accept.abort();
    results_server.abort();
    conn.close(0u32.into(), b"executor stopping");
    result
}

/// A status too large for the driver to take ([`wire::MAX_STATUS`]) becomes a failure
/// saying so: the driver would close the connection on it, and the attempt would be left
/// running.
fn within_status_limit(msg: FromExecutor) -> FromExecutor {
    let FromExecutor::Status(status) = &msg else {
        return msg;
    };
    match wire::body_size(&msg) {
        Ok(n) if n <= wire::MAX_STATUS => msg,
        size => {
            let size = size.map_or("too many".to_string(), |n| n.to_string());
            FromExecutor::Status(Box::new(TaskStatus {
                attempt: status.attempt,
                result: Err(TaskError {
                    kind: TaskErrorKind::Io,
                    chain: vec![format!(
                        "the task's status has {size} bytes, over the {} a status may have",
                        wire::MAX_STATUS
                    )],
                }),
                metrics: status.metrics.clone(),
                output: Default::default(),
                accumulators: Vec::new(),
            }))
        }
    }
}

/// Sends `attempt`'s stored result: a header with its size, then the file as it is on
/// disk, read in pieces. The file goes once sent.
async fn send_result(
    results: &ResultStore,
    send: &mut quinn::SendStream,
    attempt: TaskAttemptId,
) -> Result<(), NetError> {
    use tokio::io::AsyncReadExt;
    let Some((path, bytes)) = results.take(attempt) else {
        return net::send_blob(send, Err(format!("no stored result of {attempt}"))).await;
    };
    let sent = async {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| NetError::Refused(format!("{}: {e}", path.display())))?;
        net::write_frame(send, &Ok::<u64, String>(bytes)).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            let n = f
                .read(&mut buf[..want])
                .await
                .map_err(|e| NetError::Refused(format!("{}: {e}", path.display())))?;
            if n == 0 {
                return Err(NetError::Truncated);
            }
            send.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        let _ = send.finish();
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    sent
}
