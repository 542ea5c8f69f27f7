//! One task attempt, from descriptor to status: load the component, instantiate it in a
//! fresh store, feed it the partition batch by batch, and put its output where it goes.

use crate::formats::{FileWriter, SourceReader};
use crate::sandbox::{self, FlintJob, GuestState, Sandbox, SandboxError, StoreLimits, wit_task};
use crate::shuffle::{Fetcher, ShuffleStore};
use flint_protocol::ids::ModuleHash;
use flint_protocol::plan::{Op, WriteFormat};
use flint_protocol::wire::{
    GuestOutput, SegmentSource, ShuffleSideInput, TaskDescriptor, TaskError, TaskErrorKind,
    TaskInput, TaskMetrics, TaskOutput, TaskStatus, TaskSuccess,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Semaphore, mpsc};
use wasmtime::Store;

/// Where an executor gets what the driver holds: components it has not compiled yet, and
/// broadcast values.
pub trait ModuleSource: Send + Sync {
    fn fetch(
        &self,
        module: ModuleHash,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;
    fn fetch_broadcast(
        &self,
        app: u64,
        id: u32,
        secret: [u8; 16],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;
}

/// What every task of an executor shares.
pub struct TaskEnv {
    pub sandbox: Arc<Sandbox>,
    pub shuffle: Arc<ShuffleStore>,
    pub fetcher: Arc<Fetcher>,
    pub modules: Arc<dyn ModuleSource>,
    pub broadcasts: Arc<BroadcastCache>,
}

type BroadcastCell = Arc<tokio::sync::OnceCell<Arc<Vec<u8>>>>;

/// Broadcast values this executor fetched: each once per application, for all its tasks.
#[derive(Default)]
pub struct BroadcastCache {
    values: std::sync::Mutex<std::collections::HashMap<(u64, u32), BroadcastCell>>,
}

impl BroadcastCache {
    /// Forgets application `app`'s values (it ended).
    pub fn forget(&self, app: u64) {
        self.values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(a, _), _| *a != app);
    }

    async fn get(
        &self,
        modules: &dyn ModuleSource,
        app: u64,
        id: u32,
        secret: [u8; 16],
    ) -> Result<Arc<Vec<u8>>, String> {
        let cell = self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((app, id))
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            modules.fetch_broadcast(app, id, secret).await.map(Arc::new)
        })
        .await
        .cloned()
    }
}

/// One task's view of the broadcast values: its application's, with its capability.
struct TaskBroadcasts {
    cache: Arc<BroadcastCache>,
    modules: Arc<dyn ModuleSource>,
    app: u64,
    secret: [u8; 16],
}

impl sandbox::BroadcastSource for TaskBroadcasts {
    fn get(&self, id: u32) -> sandbox::BroadcastFuture<'_> {
        Box::pin(self.cache.get(&*self.modules, self.app, id, self.secret))
    }
}

/// Captured guest output per task is capped at this many bytes per stream.
const GUEST_OUTPUT_CAP: usize = 64 << 10;

pub async fn run_task(env: &TaskEnv, desc: TaskDescriptor) -> TaskStatus {
    let started = Instant::now();
    let mut metrics = TaskMetrics::default();
    let mut output = GuestOutput::default();
    let mut accumulators = Vec::new();
    let result = run(env, &desc, &mut metrics, &mut output, &mut accumulators).await;
    metrics.run_ms = started.elapsed().as_millis() as u64;
    let result_ok = result.is_ok();
    TaskStatus {
        attempt: desc.attempt,
        result,
        metrics,
        output,
        accumulators: if result_ok { accumulators } else { Vec::new() },
    }
}

/// Guest output kept in a task's status, per stream: the last this many bytes.
const GUEST_OUTPUT_IN_STATUS: usize = 4096;

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut at = s.len() - max;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    format!("…{}", &s[at..])
}

fn err(kind: TaskErrorKind, chain: Vec<String>) -> TaskError {
    TaskError { kind, chain }
}

fn sandbox_err(e: SandboxError) -> TaskError {
    let kind = match &e {
        SandboxError::Limit(_) => TaskErrorKind::Limit,
        SandboxError::Trap { .. } => TaskErrorKind::Trap,
        SandboxError::Guest { .. } => TaskErrorKind::Guest,
        e if e.is_bad_module() => TaskErrorKind::BadModule,
        _ => TaskErrorKind::Io,
    };
    err(kind, e.chain())
}

fn io_err(what: String) -> TaskError {
    err(TaskErrorKind::Io, vec![what])
}

/// A live guest instance for one task.
struct Guest {
    store: Store<GuestState>,
    job: FlintJob,
}

impl Guest {
    async fn push(
        &mut self,
        piece: u32,
        side: u32,
        batch: Vec<u8>,
    ) -> Result<Vec<wit_task::Chunk>, TaskError> {
        let r = self
            .job
            .flint_job_task()
            .call_push(&mut self.store, piece, side, &batch)
            .await;
        self.unwrap(r)
    }

    async fn end_piece(&mut self, piece: u32) -> Result<Vec<wit_task::Chunk>, TaskError> {
        let r = self
            .job
            .flint_job_task()
            .call_end_piece(&mut self.store, piece)
            .await;
        self.unwrap(r)
    }

    async fn finish(&mut self) -> Result<Vec<wit_task::Chunk>, TaskError> {
        let r = self.job.flint_job_task().call_finish(&mut self.store).await;
        self.unwrap(r)
    }

    fn unwrap<T>(
        &self,
        r: wasmtime::Result<Result<T, sandbox::wit::ErrorChain>>,
    ) -> Result<T, TaskError> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(chain)) => Err(sandbox_err(sandbox::guest_error(chain))),
            Err(e) => Err(sandbox_err(sandbox::classify(e, &self.store))),
        }
    }
}

async fn run(
    env: &TaskEnv,
    desc: &TaskDescriptor,
    m: &mut TaskMetrics,
    output: &mut GuestOutput,
    accumulators: &mut Vec<(u32, Vec<u8>)>,
) -> Result<TaskSuccess, TaskError> {
    let modules = env.modules.clone();
    let hash = desc.module;
    let sandbox = if desc.limits.meter_fuel {
        env.sandbox.metered().map_err(sandbox_err)?
    } else {
        env.sandbox.clone()
    };
    let (loaded, info) = sandbox
        .load(hash, || async move { modules.fetch(hash).await })
        .await
        .map_err(sandbox_err)?;
    m.load_ms = info.ms;
    m.compiled = info.compiled;
    let limits = StoreLimits {
        memory_bytes: desc.limits.memory_bytes,
        deadline: Some(std::time::Duration::from_millis(desc.limits.deadline_ms)),
        deadline_setting: "task.deadline",
        output_bytes: GUEST_OUTPUT_CAP,
    };
    let mut store = sandbox.store(&limits, None);
    store.data_mut().set_broadcasts(Arc::new(TaskBroadcasts {
        cache: env.broadcasts.clone(),
        modules: env.modules.clone(),
        app: desc.app,
        secret: desc.app_secret,
    }));
    let t = Instant::now();
    let job = loaded.instantiate(&mut store).await.map_err(sandbox_err)?;
    m.instantiate_us = t.elapsed().as_micros() as u64;
    let mut guest = Guest { store, job };
    let result: Result<TaskSuccess, TaskError> = async {
        let spec = task_spec(desc, env.fetcher.me().0);
        let r = guest
            .job
            .flint_job_task()
            .call_start(&mut guest.store, &spec)
            .await;
        guest.unwrap(r)?;

        let mut sink = Sink::new(desc);
        let max_output = desc.limits.max_output_bytes;
        for (i, piece) in desc.pieces.iter().enumerate() {
            let i = i as u32;
            match &piece.input {
                TaskInput::Split {
                    path,
                    format,
                    malformed,
                    start,
                    end,
                    ..
                } => {
                    let (tx, mut rx) = mpsc::channel(2);
                    let (path, format, malformed, start, end) = (
                        PathBuf::from(path),
                        format.clone(),
                        *malformed,
                        *start,
                        *end,
                    );
                    // Reading and encoding run on a blocking thread, one batch ahead of
                    // the guest.
                    let reader = tokio::task::spawn_blocking(move || {
                        let mut r = match SourceReader::open(&path, &format, malformed, start, end)
                        {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = tx.blocking_send(Err(e));
                                return;
                            }
                        };
                        loop {
                            let next = r.next_batch().transpose();
                            let Some(item) = next else { return };
                            let failed = item.is_err();
                            if tx.blocking_send(item).is_err() || failed {
                                return;
                            }
                        }
                    });
                    while let Some(item) = rx.recv().await {
                        let batch = item.map_err(|e| io_err(e.to_string()))?;
                        m.input_records += batch.rows;
                        m.input_bytes += batch.bytes;
                        m.dropped_records += batch.dropped;
                        if batch.rows == 0 {
                            continue;
                        }
                        let chunks = guest.push(i, 0, batch.ipc).await?;
                        sink.accept(chunks, m, max_output)?;
                    }
                    let _ = reader.await;
                }
                TaskInput::Inline { ipc, .. } => {
                    m.input_bytes += ipc.len() as u64;
                    let chunks = guest.push(i, 0, ipc.clone()).await?;
                    sink.accept(chunks, m, max_output)?;
                }
                TaskInput::Shuffle {
                    reduce_partition,
                    sides,
                    ..
                } => {
                    let mut rx = fetch_segments(env, desc, *reduce_partition, sides);
                    while let Some((side, r, permit, src)) = rx.recv().await {
                        let (data, remote) = r.map_err(|e| {
                            err(
                                TaskErrorKind::FetchFailed {
                                    executor: src.executor,
                                    map_partition: src.map_partition,
                                },
                                vec![e],
                            )
                        })?;
                        if remote {
                            m.shuffle_read_remote_bytes += data.len() as u64;
                        } else {
                            m.shuffle_read_local_bytes += data.len() as u64;
                        }
                        m.input_bytes += data.len() as u64;
                        let chunks = guest.push(i, side, data).await?;
                        drop(permit);
                        sink.accept(chunks, m, max_output)?;
                    }
                }
            }
            let chunks = guest.end_piece(i).await?;
            sink.accept(chunks, m, max_output)?;
        }
        let chunks = guest.finish().await?;
        sink.accept(chunks, m, max_output)?;
        let r = guest
            .job
            .flint_job_task()
            .call_take_accumulators(&mut guest.store)
            .await;
        *accumulators = guest
            .unwrap(r.map(Ok))?
            .into_iter()
            .map(|u| (u.id, u.value))
            .collect();
        m.peak_memory_bytes = guest.store.data().peak_memory();
        m.fuel = sandbox.fuel_consumed(&guest.store);
        sink.complete(env, desc, m).await
    }
    .await;
    // What the guest printed, capped, for the task's record.
    let data = guest.store.data();
    *output = GuestOutput {
        stdout: tail(&data.stdout(), GUEST_OUTPUT_IN_STATUS),
        stderr: tail(&data.stderr(), GUEST_OUTPUT_IN_STATUS),
    };
    result
}

fn wit_op(o: &Op) -> sandbox::wit::Op {
    sandbox::wit::Op {
        function: o.func.0,
        arg: o.arg.clone(),
    }
}

/// The guest's view of the task.
fn task_spec(desc: &TaskDescriptor, executor: u32) -> wit_task::TaskSpec {
    wit_task::TaskSpec {
        pieces: desc
            .pieces
            .iter()
            .map(|p| wit_task::Piece {
                input: match &p.input {
                    TaskInput::Split { decode, .. } | TaskInput::Inline { decode, .. } => {
                        wit_task::PieceInput::Batches(wit_op(decode))
                    }
                    TaskInput::Shuffle { read, .. } => wit_task::PieceInput::Shuffle(wit_op(read)),
                },
                ops: p.ops.iter().map(wit_op).collect(),
            })
            .collect(),
        ops: desc.ops.iter().map(wit_op).collect(),
        output: match &desc.output {
            TaskOutput::ShuffleWrite {
                write, partitions, ..
            } => wit_task::TaskOutput::Shuffle(wit_task::ShuffleWrite {
                write: wit_op(write),
                partitions: *partitions,
            }),
            TaskOutput::File { render, .. } => wit_task::TaskOutput::Render(wit_op(render)),
            TaskOutput::Rows { encode } => wit_task::TaskOutput::Rows(wit_op(encode)),
            TaskOutput::Count => wit_task::TaskOutput::Count,
        },
        partition: desc.attempt.task.partition,
        attempt: desc.attempt.attempt,
        executor,
    }
}

type Fetched = (
    u32,
    Result<(Vec<u8>, bool), String>,
    tokio::sync::OwnedSemaphorePermit,
    SegmentSource,
);

/// Fetches every segment of one reduce partition (of all sides) with bounded bytes in
/// flight: a segment's permits are held until the guest has consumed it.
fn fetch_segments(
    env: &TaskEnv,
    desc: &TaskDescriptor,
    reduce: u32,
    sides: &[ShuffleSideInput],
) -> mpsc::Receiver<Fetched> {
    let job = desc.attempt.task.stage.job;
    let budget = desc
        .limits
        .max_bytes_in_flight
        .clamp(1 << 20, u32::MAX as u64);
    let permits = Arc::new(Semaphore::new(budget as usize));
    let limit = std::time::Duration::from_millis(desc.limits.fetch_timeout_ms.max(1));
    let total: usize = sides.iter().map(|s| s.segments.len()).sum();
    let (tx, rx) = mpsc::channel(total.max(1));
    for (side, input) in sides.iter().enumerate() {
        // A cached dataset's partitions are filed under the application, not the job.
        let (job, shuffle, secret) = match input.cached {
            Some(c) => (c.job, c.shuffle, desc.app_secret),
            None => (job, input.shuffle, desc.shuffle_secret),
        };
        for src in input.segments.clone() {
            let (fetcher, permits, tx) = (env.fetcher.clone(), permits.clone(), tx.clone());
            tokio::spawn(async move {
                let want = src.size.clamp(1, budget) as u32;
                let Ok(permit) = permits.acquire_many_owned(want).await else {
                    return;
                };
                let r = match tokio::time::timeout(
                    limit,
                    fetcher.fetch(job, shuffle, reduce, &src, secret),
                )
                .await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => {
                        fetcher.forget(&src.addr);
                        Err(format!(
                            "fetching map output {} from executor {} at {}: no answer within \
                             shuffle.fetch_timeout ({})",
                            src.map_partition,
                            src.executor.0,
                            src.addr,
                            flint_protocol::scheduler::fmt_ms(limit.as_millis() as u64)
                        ))
                    }
                };
                let _ = tx.send((side as u32, r, permit, src)).await;
            });
        }
    }
    rx
}

/// Where a task's output chunks go.
enum Sink {
    Shuffle {
        segments: Vec<Vec<u8>>,
    },
    /// A part file, created with the first batch (text files even when empty).
    File {
        file: String,
        format: WriteFormat,
        out: Option<Box<FileWriter>>,
        rows: u64,
    },
    Rows {
        batches: Vec<Vec<u8>>,
        rows: u64,
        bytes: u64,
        max: u64,
    },
    Count(u64),
}

impl Sink {
    fn new(desc: &TaskDescriptor) -> Sink {
        match &desc.output {
            TaskOutput::ShuffleWrite { partitions, .. } => Sink::Shuffle {
                segments: vec![Vec::new(); *partitions as usize],
            },
            TaskOutput::File { file, format, .. } => Sink::File {
                file: file.clone(),
                format: *format,
                out: None,
                rows: 0,
            },
            TaskOutput::Rows { .. } => Sink::Rows {
                batches: Vec::new(),
                rows: 0,
                bytes: 0,
                max: desc.limits.max_result_bytes,
            },
            TaskOutput::Count => Sink::Count(0),
        }
    }

    fn accept(
        &mut self,
        chunks: Vec<wit_task::Chunk>,
        m: &mut TaskMetrics,
        max_output: u64,
    ) -> Result<(), TaskError> {
        for c in chunks {
            m.output_records += c.rows;
            m.output_bytes += c.ipc.len() as u64;
            if m.output_bytes > max_output {
                return Err(err(
                    TaskErrorKind::Limit,
                    vec![format!(
                        "the task's output exceeds task.max_output_bytes ({max_output} bytes)"
                    )],
                ));
            }
            match self {
                Sink::Shuffle { segments } => {
                    let n = segments.len();
                    let seg = segments.get_mut(c.partition as usize).ok_or_else(|| {
                        err(
                            TaskErrorKind::Guest,
                            vec![format!(
                                "guest wrote shuffle partition {} of {n}",
                                c.partition
                            )],
                        )
                    })?;
                    if !seg.is_empty() {
                        return Err(err(
                            TaskErrorKind::Guest,
                            vec![format!(
                                "guest wrote shuffle partition {} twice",
                                c.partition
                            )],
                        ));
                    }
                    *seg = c.ipc;
                }
                Sink::File {
                    file,
                    format,
                    out,
                    rows,
                } => {
                    let reader =
                        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(c.ipc), None)
                            .map_err(|e| {
                                err(
                                    TaskErrorKind::Guest,
                                    vec![format!("guest output is not Arrow IPC: {e}")],
                                )
                            })?;
                    for batch in reader {
                        let batch = batch.map_err(|e| {
                            err(TaskErrorKind::Guest, vec![format!("guest output: {e}")])
                        })?;
                        if out.is_none() {
                            *out = Some(Box::new(
                                FileWriter::create(Path::new(file), *format, &batch.schema())
                                    .map_err(io_err)?,
                            ));
                        }
                        if let Some(w) = out.as_mut() {
                            w.write(&batch)
                                .map_err(|e| io_err(format!("writing {file}: {e}")))?;
                        }
                        *rows += batch.num_rows() as u64;
                    }
                }
                Sink::Rows {
                    batches,
                    rows,
                    bytes,
                    max,
                } => {
                    *bytes += c.ipc.len() as u64;
                    if *bytes > *max {
                        return Err(err(
                            TaskErrorKind::Limit,
                            vec![format!(
                                "result of this task exceeds driver.max_result_size ({max} bytes); write large results with save_as_text instead of collect"
                            )],
                        ));
                    }
                    *rows += c.rows;
                    batches.push(c.ipc);
                }
                Sink::Count(n) => *n += c.rows,
            }
        }
        Ok(())
    }

    async fn complete(
        self,
        env: &TaskEnv,
        desc: &TaskDescriptor,
        m: &mut TaskMetrics,
    ) -> Result<TaskSuccess, TaskError> {
        Ok(match self {
            Sink::Shuffle { segments } => {
                let TaskOutput::ShuffleWrite {
                    shuffle, cached, ..
                } = desc.output
                else {
                    unreachable!("shuffle sink comes from a shuffle output")
                };
                let store = env.shuffle.clone();
                let (job, map) = (desc.attempt.task.stage.job, desc.attempt.task.partition);
                let (secret, app_secret) = (desc.shuffle_secret, desc.app_secret);
                let sizes = tokio::task::spawn_blocking(move || match cached {
                    Some(c) => {
                        store.grant(c.job, app_secret)?;
                        store.put_cached((c.job, c.shuffle, map), segments, c.level)
                    }
                    None => {
                        store.grant(job, secret)?;
                        store.write(job, shuffle, map, &segments)
                    }
                })
                .await
                .map_err(|e| io_err(e.to_string()))?
                .map_err(|e| io_err(e.to_string()))?;
                m.shuffle_write_bytes = sizes.iter().sum();
                TaskSuccess::MapOutput { sizes }
            }
            Sink::File {
                file,
                format,
                out,
                rows,
            } => {
                let out = match (out, format) {
                    (Some(w), _) => Some(w),
                    // An empty partition of text is an empty file, as in Hadoop; the
                    // columnar formats write no file for it (they have no schema yet).
                    (None, WriteFormat::Text) => Some(Box::new(
                        FileWriter::create(
                            Path::new(&file),
                            WriteFormat::Text,
                            &arrow_schema::Schema::empty(),
                        )
                        .map_err(io_err)?,
                    )),
                    (None, _) => None,
                };
                if let Some(w) = out {
                    w.close()
                        .map_err(|e| io_err(format!("writing {file}: {e}")))?;
                }
                TaskSuccess::File { file, rows }
            }
            Sink::Rows { batches, rows, .. } => TaskSuccess::Rows { batches, rows },
            Sink::Count(n) => TaskSuccess::Count(n),
        })
    }
}
