//! One task attempt, from descriptor to status: load the component, instantiate it in a
//! fresh store, feed it the partition batch by batch, and put its output where it goes.

use crate::formats::{FormatError, PartWriter, SourceBatch, SourceReader};
use crate::results::{ResultStore, ResultWriter};
use crate::shuffle::{Fetcher, MapOutputWriter, ShuffleStore};
use crate::statuses::{ShuffleStatuses, TaskStatuses};
use flint_protocol::ids::ModuleHash;
use flint_protocol::ids::{JobId, ShuffleId};
use flint_protocol::wire::{
    BuildInput, GuestOutput, Limit, MAX_FETCH_MAPS, MAX_TASK_ACCUMULATOR_BYTES, SegmentSource,
    ShuffleSideInput, TaskDescriptor, TaskError, TaskErrorKind, TaskInput, TaskMetrics, TaskOutput,
    TaskStatus, TaskSuccess, TenantSpill,
};
use flint_sandbox::spill::{MAX_FRAME_BYTES, SpillConfig, TenantDisk};
use flint_sandbox::{
    BroadcastFuture, BroadcastSource, BuildSide, Chunk, OutputSink, Sandbox, StoreLimits,
    TaskInstance, WarmInstance,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

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
    pub results: Arc<ResultStore>,
    pub fetcher: Arc<Fetcher>,
    pub modules: Arc<dyn ModuleSource>,
    pub broadcasts: Arc<BroadcastCache>,
    /// Spill runs live under `work_dir/spill/<job>/`.
    pub work_dir: PathBuf,
    /// Build sides of broadcast hash joins this executor fetched, for all its tasks.
    pub builds: Arc<BuildCache>,
    /// Where the map outputs of the shuffles its tasks read are.
    pub statuses: Arc<crate::statuses::StatusStore>,
    /// Instances kept for the next task of their application.
    pub warm: Arc<WarmPool>,
    /// What each tenant's tasks hold spilled here, against its quota.
    pub tenant_disks: TenantDisks,
}

/// Each tenant's spill use on this executor, shared by its tasks.
#[derive(Default)]
pub struct TenantDisks(Mutex<HashMap<String, Arc<TenantDisk>>>);

impl TenantDisks {
    /// The tenant's account, at its quota as the task's descriptor states it (a changed
    /// quota starts a new account; tasks already running keep theirs).
    pub fn get(&self, q: &TenantSpill) -> Arc<TenantDisk> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Accounts nothing holds any more go.
        m.retain(|_, d| Arc::strong_count(d) > 1 || d.used.load(Ordering::Relaxed) > 0);
        match m.get(&q.tenant) {
            Some(d) if d.max == q.max_bytes => d.clone(),
            _ => {
                let d = Arc::new(TenantDisk {
                    tenant: q.tenant.clone(),
                    max: q.max_bytes,
                    used: AtomicU64::new(0),
                });
                m.insert(q.tenant.clone(), d.clone());
                d
            }
        }
    }
}

/// Bytes of a map task's output the host holds before it appends them to a spill run.
const MAP_OUTPUT_BUFFER: u64 = 32 << 20;

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

/// Instances whose task succeeded, kept for the next task of the same application and
/// component: at most one per slot, the least recently used going first. A warm instance
/// holds at most [`flint_sandbox::MAX_WARM_MEMORY`] of linear memory.
pub struct WarmPool {
    slots: usize,
    /// (metered, instance): an instance belongs to the engine that made it.
    kept: Mutex<std::collections::VecDeque<(bool, WarmInstance)>>,
}

impl WarmPool {
    pub fn new(slots: u32) -> Self {
        WarmPool {
            slots: slots.max(1) as usize,
            kept: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(bool, WarmInstance)>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, module: ModuleHash, app: u64, metered: bool) -> Option<WarmInstance> {
        let mut kept = self.lock();
        let at = kept
            .iter()
            .position(|(m, w)| *m == metered && w.key() == (module, app))?;
        kept.remove(at).map(|(_, w)| w)
    }

    fn put(&self, metered: bool, w: WarmInstance) {
        let evicted: Vec<_> = {
            let mut kept = self.lock();
            kept.push_back((metered, w));
            let extra = kept.len().saturating_sub(self.slots);
            kept.drain(..extra).collect()
        };
        // Outside the lock: giving memory back to the system takes syscalls.
        drop(evicted);
    }

    /// Drops application `app`'s instances (it ended).
    pub fn forget_app(&self, app: u64) {
        let gone: Vec<_> = {
            let mut kept = self.lock();
            let (gone, keep): (Vec<_>, Vec<_>) =
                kept.drain(..).partition(|(_, w)| w.key().1 == app);
            kept.extend(keep);
            gone
        };
        drop(gone);
    }
}

type BuildCell = Arc<tokio::sync::OnceCell<BuildSide>>;

/// The build sides of broadcast hash joins this executor fetched: each once per job,
/// however many of the job's tasks read it.
#[derive(Default)]
pub struct BuildCache {
    sides: Mutex<HashMap<(JobId, ShuffleId), BuildCell>>,
}

impl BuildCache {
    /// Forgets job `job`'s build sides (it ended), or the application's kept ones.
    pub fn forget(&self, job: JobId) {
        self.sides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(j, _), _| *j != job);
    }

    /// Forgets one kept build side (its output was dropped).
    pub fn forget_side(&self, job: JobId, shuffle: ShuffleId) {
        self.sides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(job, shuffle));
    }

    /// Build side `input` of `desc`'s job, fetched now unless another task has it; and
    /// whether this call fetched it.
    async fn get(
        &self,
        env: &TaskEnv,
        desc: &TaskDescriptor,
        input: &BuildInput,
        statuses: &ShuffleStatuses,
    ) -> Result<(BuildSide, bool), TaskError> {
        // A kept output is filed under its application: later jobs share the fetch.
        let key = match input.cached {
            Some(c) => (c.job, c.shuffle),
            None => (desc.attempt.task.stage.job, input.shuffle),
        };
        let cell = self
            .sides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut fetched = false;
        let side = cell
            .get_or_try_init(|| {
                fetched = true;
                fetch_build(env, desc, input, statuses.all_segments())
            })
            .await?
            .clone();
        Ok((side, fetched))
    }
}

/// Every segment of a build side, split into its frames (in the order of `segments`).
/// The first chunks come in batches per holder and reduce partition, as a reduce task's
/// segments do; a segment longer than a chunk is read on a chunk at a time.
async fn fetch_build(
    env: &TaskEnv,
    desc: &TaskDescriptor,
    input: &BuildInput,
    segments: Vec<(u32, SegmentSource)>,
) -> Result<BuildSide, TaskError> {
    let limit = Duration::from_millis(desc.limits.fetch_timeout_ms.max(1));
    let (job, shuffle, secret) = match input.cached {
        Some(c) => (c.job, c.shuffle, desc.app_secret),
        None => (
            desc.attempt.task.stage.job,
            input.shuffle,
            desc.shuffle_secret,
        ),
    };
    let chunk = crate::shuffle::SEGMENT_CHUNK;
    let mut per_segment: Vec<Vec<Vec<u8>>> = (0..segments.len()).map(|_| Vec::new()).collect();
    // Positions of the segments per (holder, reduce partition).
    let groups = grouped(0..segments.len(), |&i| {
        (segments[i].1.executor, segments[i].0)
    });
    for at in groups {
        let reduce = segments[at[0]].0;
        for batch in cut_batches(at, |&i| segments[i].1.size.clamp(1, chunk), chunk) {
            let srcs: Vec<SegmentSource> = batch.iter().map(|&i| segments[i].1.clone()).collect();
            let key = (job, shuffle, secret, reduce, limit);
            for (&i, r) in batch
                .iter()
                .zip(fetch_within(&env.fetcher, key, &srcs, 0).await)
            {
                per_segment[i] = build_frames(env, key, &segments[i].1, r).await?;
            }
        }
    }
    Ok(Arc::new(per_segment.into_iter().flatten().collect()))
}

/// One build-side segment's frames, from its first chunk `first` on.
async fn build_frames(
    env: &TaskEnv,
    (job, shuffle, secret, reduce, limit): FetchKey,
    src: &SegmentSource,
    first: Result<(Vec<u8>, bool), String>,
) -> Result<Vec<Vec<u8>>, TaskError> {
    let failed = |e: String| {
        err(
            TaskErrorKind::FetchFailed {
                executor: src.executor,
                map_partition: src.map_partition,
            },
            vec![format!("fetching a broadcast hash join's build side: {e}")],
        )
    };
    let (mut buf, _) = first.map_err(failed)?;
    // A full chunk may not be the last (the size the task has is a rounded one).
    let mut n = buf.len() as u64;
    let seg = SegmentFetch {
        job,
        shuffle,
        secret,
        reduce,
        src: src.clone(),
        limit,
    };
    while n >= crate::shuffle::SEGMENT_CHUNK {
        let (chunk, _) = seg
            .chunk(&env.fetcher, buf.len() as u64)
            .await
            .map_err(failed)?;
        n = chunk.len() as u64;
        buf.extend_from_slice(&chunk);
    }
    let (whole, end) = crate::shuffle::whole_frames(&buf).map_err(failed)?;
    if end != buf.len() {
        return Err(failed(format!(
            "a segment of {} bytes ends inside a frame",
            buf.len()
        )));
    }
    Ok(whole.into_iter().map(<[u8]>::to_vec).collect())
}

/// `items` grouped by `key`: the groups in the order of their first items, each in the
/// order given (never empty).
fn grouped<T, K: std::hash::Hash + Eq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<Vec<T>> {
    let mut index: HashMap<K, usize> = HashMap::new();
    let mut groups: Vec<Vec<T>> = Vec::new();
    for item in items {
        let g = *index.entry(key(&item)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(item);
    }
    groups
}

/// `items`, in order, cut into batches of at most [`MAX_FETCH_MAPS`] whose `want`s (the
/// bytes of their first chunks) add up to at most `max_bytes` (or one item alone).
fn cut_batches<T>(items: Vec<T>, want: impl Fn(&T) -> u64, max_bytes: u64) -> Vec<Vec<T>> {
    let mut batches: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0u64;
    for item in items {
        let w = want(&item);
        match batches.last_mut() {
            Some(b) if b.len() < MAX_FETCH_MAPS && bytes.saturating_add(w) <= max_bytes => {
                bytes = bytes.saturating_add(w);
                b.push(item);
            }
            _ => {
                bytes = w;
                batches.push(vec![item]);
            }
        }
    }
    batches
}

/// One task's view of the broadcast values: its application's, with its capability.
struct TaskBroadcasts {
    cache: Arc<BroadcastCache>,
    modules: Arc<dyn ModuleSource>,
    app: u64,
    secret: [u8; 16],
}

impl BroadcastSource for TaskBroadcasts {
    fn get(&self, id: u32) -> BroadcastFuture<'_> {
        Box::pin(self.cache.get(&*self.modules, self.app, id, self.secret))
    }
}

/// Captured guest output per task is capped at this many bytes per stream.
const GUEST_OUTPUT_CAP: usize = 64 << 10;

/// Runs `desc`, whose shuffles' map outputs are where `statuses` say.
pub async fn run_task(env: &TaskEnv, desc: TaskDescriptor, statuses: TaskStatuses) -> TaskStatus {
    let started = Instant::now();
    let mut metrics = TaskMetrics::default();
    let mut output = GuestOutput::default();
    let mut accumulators = Vec::new();
    let result = run(
        env,
        &desc,
        &statuses,
        &mut metrics,
        &mut output,
        &mut accumulators,
    )
    .await;
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

fn io_err(what: String) -> TaskError {
    err(TaskErrorKind::Io, vec![what])
}

fn limit(limit: Limit, what: String) -> TaskError {
    err(TaskErrorKind::Limit(limit), vec![what])
}

async fn run(
    env: &TaskEnv,
    desc: &TaskDescriptor,
    statuses: &TaskStatuses,
    m: &mut TaskMetrics,
    output: &mut GuestOutput,
    accumulators: &mut Vec<(u32, Vec<u8>)>,
) -> Result<TaskSuccess, TaskError> {
    let modules = env.modules.clone();
    let hash = desc.module;
    let sandbox = if desc.limits.meter_fuel {
        env.sandbox.metered()?
    } else {
        env.sandbox.clone()
    };
    let (loaded, info) = sandbox
        .load(hash, || async move { modules.fetch(hash).await })
        .await?;
    m.load_ms = info.ms;
    m.compiled = info.compiled;
    // The task's memory comes from the executor's pool: what it asks, or less on a busy
    // executor (then its operators spill sooner).
    // Evicting writes cached partitions to disk: off the async workers, when needed.
    let (store, want) = (env.shuffle.clone(), desc.limits.memory_bytes);
    let grant = match store.grant_task_now(want) {
        Some(g) => g,
        None => tokio::task::spawn_blocking(move || store.grant_task(want))
            .await
            .map_err(|e| err(TaskErrorKind::Io, vec![format!("granting memory: {e}")]))?
            .map_err(|e| {
                err(
                    TaskErrorKind::Io,
                    vec![format!("evicting cached partitions: {e}")],
                )
            })?,
    };
    let limits = StoreLimits {
        memory_bytes: grant.bytes(),
        memory_setting: if grant.bytes() < desc.limits.memory_bytes {
            "task.memory, as granted by the executor's executor.memory"
        } else {
            "task.memory"
        },
        deadline: Some(std::time::Duration::from_millis(desc.limits.deadline_ms)),
        deadline_setting: "task.deadline",
        output_bytes: GUEST_OUTPUT_CAP,
    };
    let broadcasts = Arc::new(TaskBroadcasts {
        cache: env.broadcasts.clone(),
        modules: env.modules.clone(),
        app: desc.app,
        secret: desc.app_secret,
    });
    let attempt = desc.attempt;
    let dir = env
        .work_dir
        .join("spill")
        .join(attempt.task.stage.job.0.to_string());
    let name = format!(
        "{}-{}-{}",
        attempt.task.stage.index, attempt.task.partition, attempt.attempt
    );
    let sink = Arc::new(Mutex::new(SinkState {
        sink: Some(Sink::new(env, desc, dir.join(format!("map-{name}.run")))),
        records: 0,
        bytes: 0,
        max_output: desc.limits.max_output_bytes,
    }));
    let spill = SpillConfig {
        dir: dir.join(format!("task-{name}")),
        max_bytes: desc.limits.max_spill_bytes,
        tenant: desc
            .limits
            .tenant_spill
            .as_ref()
            .map(|q| env.tenant_disks.get(q)),
    };
    // The guest's operators spill at a quarter of its memory cap: the rest is for what a
    // spill or a merge needs beside the state (encoding, a hash table's growth) and for
    // the allocator's fragmentation (linear memory never shrinks).
    let budget = grant.bytes() / 4;
    let mut builds = Vec::with_capacity(desc.builds.len());
    for input in &desc.builds {
        // Counted once per executor: the task that fetched it.
        let statuses = segments_of(statuses, input.shuffle)?;
        let (side, fetched) = env.builds.get(env, desc, input, statuses).await?;
        if fetched {
            m.shuffle_read_remote_bytes += side.iter().map(|f| f.len() as u64).sum::<u64>();
        }
        builds.push(side);
    }
    let metered = desc.limits.meter_fuel;
    let warm = env.warm.take(hash, desc.app, metered);
    let mut guest = sandbox
        .start_task(
            &loaded,
            &limits,
            broadcasts,
            desc,
            env.fetcher.me().0,
            budget,
            Box::new(SharedSink(sink.clone())),
            spill,
            builds,
            warm,
        )
        .await?;
    m.instantiate_us = guest.instantiate_us;
    m.warm = guest.warm;
    let fed = feed(env, desc, statuses, &mut guest, m, accumulators).await;
    let (spilled, runs) = guest.spilled();
    m.spill_bytes += spilled;
    m.spill_count += runs;
    let sink = {
        let mut st = sink.lock().unwrap_or_else(|p| p.into_inner());
        m.output_records += st.records;
        m.output_bytes += st.bytes;
        st.sink.take().expect("the sink is taken once")
    };
    let result = match fed {
        Ok(()) => sink.complete(env, desc, m).await,
        Err(e) => {
            sink.discard();
            Err(e)
        }
    };
    // What the guest printed, capped, for the task's record.
    *output = GuestOutput {
        stdout: tail(&guest.stdout(), GUEST_OUTPUT_IN_STATUS),
        stderr: tail(&guest.stderr(), GUEST_OUTPUT_IN_STATUS),
    };
    if result.is_ok()
        && let Some(w) = guest.recycle()
    {
        env.warm.put(metered, w);
    }
    result
}

/// Every piece's input through the guest, its output into `sink`.
async fn feed(
    env: &TaskEnv,
    desc: &TaskDescriptor,
    statuses: &TaskStatuses,
    guest: &mut TaskInstance,
    m: &mut TaskMetrics,
    accumulators: &mut Vec<(u32, Vec<u8>)>,
) -> Result<(), TaskError> {
    for (i, piece) in desc.pieces.iter().enumerate() {
        let i = i as u32;
        match &piece.input {
            TaskInput::Split {
                path,
                format,
                malformed,
                start,
                end,
                partition,
                filter,
                ..
            } => {
                let (path, format, malformed, start, end, partition, filter) = (
                    PathBuf::from(path),
                    std::sync::Arc::clone(format),
                    *malformed,
                    *start,
                    *end,
                    partition.clone(),
                    filter.clone(),
                );
                let mut batches = if reads_in_place(&path) {
                    Batches::InPlace(Some(
                        SourceReader::open(
                            &path, &format, malformed, start, end, &partition, filter,
                        )
                        .map(Box::new),
                    ))
                } else {
                    // Reading and encoding run on a blocking thread, one batch ahead of
                    // the guest.
                    let (tx, rx) = mpsc::channel(2);
                    let reader = tokio::task::spawn_blocking(move || {
                        let opened = SourceReader::open(
                            &path, &format, malformed, start, end, &partition, filter,
                        );
                        let mut r = match opened {
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
                    Batches::Thread(rx, reader)
                };
                while let Some(item) = batches.next().await {
                    let batch = item.map_err(|e| {
                        let kind = if e.is_bad_input() {
                            TaskErrorKind::BadInput
                        } else {
                            TaskErrorKind::Io
                        };
                        err(kind, vec![e.to_string()])
                    })?;
                    m.input_records += batch.rows;
                    m.input_bytes += batch.bytes;
                    m.dropped_records += batch.dropped;
                    if batch.rows == 0 {
                        continue;
                    }
                    guest.push(i, 0, &batch.ipc).await?;
                }
                batches.finish().await;
            }
            TaskInput::Inline { ipc, .. } => {
                m.input_bytes += ipc.len() as u64;
                for batch in split_stream(ipc).map_err(|e| io_err(format!("inline rows: {e}")))? {
                    guest.push(i, 0, &batch).await?;
                }
            }
            TaskInput::Shuffle {
                reduce_partition,
                sides,
                ..
            } => {
                let mut rx = fetch_segments(env, desc, statuses, *reduce_partition, sides)?;
                while let Some((side, r, permit, seg)) = rx.recv().await {
                    let src = &seg.src;
                    let fetch_failed = |e: String| {
                        err(
                            TaskErrorKind::FetchFailed {
                                executor: src.executor,
                                map_partition: src.map_partition,
                            },
                            vec![e],
                        )
                    };
                    // The segment a chunk at a time: the first came with `r`, the rest
                    // are fetched as the guest takes them; a frame may span chunks.
                    let (mut chunk, mut remote) = r.map_err(fetch_failed)?;
                    let (mut offset, mut carry) = (0u64, Vec::new());
                    loop {
                        let n = chunk.len() as u64;
                        if remote {
                            m.shuffle_read_remote_bytes += n;
                        } else {
                            m.shuffle_read_local_bytes += n;
                        }
                        m.input_bytes += n;
                        offset += n;
                        let buf = if carry.is_empty() {
                            chunk
                        } else {
                            carry.extend_from_slice(&chunk);
                            drop(chunk);
                            std::mem::take(&mut carry)
                        };
                        let (frames, rest) =
                            crate::shuffle::whole_frames(&buf).map_err(fetch_failed)?;
                        for frame in frames {
                            guest.push(i, side, frame).await?;
                        }
                        carry = buf[rest..].to_vec();
                        if n < crate::shuffle::SEGMENT_CHUNK {
                            break;
                        }
                        (chunk, remote) = seg
                            .chunk(&env.fetcher, offset)
                            .await
                            .map_err(fetch_failed)?;
                    }
                    if !carry.is_empty() {
                        return Err(fetch_failed(format!(
                            "a shuffle segment of {offset} bytes ends inside a frame"
                        )));
                    }
                    drop(permit);
                }
            }
        }
        guest.end_piece(i).await?;
    }
    guest.finish().await?;
    *accumulators = guest.take_accumulators().await?;
    let bytes: usize = accumulators.iter().map(|(_, v)| v.len()).sum();
    if bytes > MAX_TASK_ACCUMULATOR_BYTES {
        return Err(limit(
            Limit::Accumulators,
            format!(
                "the task's accumulator updates are {bytes} bytes, over the {MAX_TASK_ACCUMULATOR_BYTES} one task may report"
            ),
        ));
    }
    m.peak_memory_bytes = guest.peak_memory();
    m.fuel = guest.fuel_consumed();
    Ok(())
}

/// Whether a split is read where its task runs (a local file) rather than on a thread of
/// its own, one batch ahead (an object: the thread overlaps the store's round trips with
/// the guest's work). A task holds one core, its slot: a reading thread beside it used a
/// second one that other tasks, maybe other tenants', were counted on, and each batch
/// handed between the threads cost a wake-up of each (about 30 µs on a 2-core VM). Read
/// in place, the peers' aggregation by category went from 80 to 69 ms with 2 executors
/// of 1 core, and from 86 to 72 ms (by key: 259 to 203) with 1 executor of 2. What is
/// given up: a last task that runs while a core is idle no longer decodes on that core
/// (the sales suite's Parquet job, whose fourth file is a seventh of the others: 435 to
/// 472 ms); more, evener splits are the way to keep cores busy there.
fn reads_in_place(path: &std::path::Path) -> bool {
    !flint_storage::object::is_url(&path.to_string_lossy())
}

/// A split's batches, read in place or on a blocking thread.
enum Batches {
    InPlace(Option<Result<Box<SourceReader>, FormatError>>),
    Thread(
        mpsc::Receiver<Result<SourceBatch, FormatError>>,
        tokio::task::JoinHandle<()>,
    ),
}

impl Batches {
    async fn next(&mut self) -> Option<Result<SourceBatch, FormatError>> {
        match self {
            Batches::InPlace(reader) => match reader.take()? {
                Ok(mut r) => {
                    let next = r.next_batch().transpose();
                    if next.as_ref().is_some_and(Result::is_ok) {
                        *reader = Some(Ok(r));
                    }
                    next
                }
                Err(e) => Some(Err(e)),
            },
            Batches::Thread(rx, _) => rx.recv().await,
        }
    }

    /// Waits for the reading thread, if there is one.
    async fn finish(self) {
        if let Batches::Thread(_, reader) = self {
            let _ = reader.await;
        }
    }
}

type Fetched = (
    u32,
    Result<(Vec<u8>, bool), String>,
    tokio::sync::OwnedSemaphorePermit,
    Arc<SegmentFetch>,
);

/// One segment a reduce task reads, fetched a chunk at a time.
struct SegmentFetch {
    job: flint_protocol::ids::JobId,
    shuffle: flint_protocol::ids::ShuffleId,
    secret: [u8; 16],
    reduce: u32,
    src: SegmentSource,
    limit: Duration,
}

impl SegmentFetch {
    /// The chunk at `offset`, within `shuffle.fetch_timeout`.
    async fn chunk(&self, fetcher: &Fetcher, offset: u64) -> Result<(Vec<u8>, bool), String> {
        let srcs = std::slice::from_ref(&self.src);
        let key = (self.job, self.shuffle, self.secret, self.reduce, self.limit);
        fetch_within(fetcher, key, srcs, offset)
            .await
            .pop()
            .unwrap_or_else(|| Err("no answer for a segment".into()))
    }
}

/// What a batch of segment fetches shares: job, shuffle, secret, reduce partition and
/// `shuffle.fetch_timeout`.
type FetchKey = (JobId, ShuffleId, [u8; 16], u32, Duration);

/// The chunk at `offset` of each segment of `srcs` (held by one executor), all within
/// `shuffle.fetch_timeout`: one result per source, in order.
async fn fetch_within(
    fetcher: &Fetcher,
    (job, shuffle, secret, reduce, limit): FetchKey,
    srcs: &[SegmentSource],
    offset: u64,
) -> Vec<Result<(Vec<u8>, bool), String>> {
    match tokio::time::timeout(
        limit,
        fetcher.fetch(job, shuffle, reduce, srcs, secret, offset),
    )
    .await
    {
        Ok(results) => results
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect(),
        Err(_) => {
            if let Some(src) = srcs.first() {
                fetcher.forget(&src.addr);
            }
            srcs.iter()
                .map(|src| {
                    Err(format!(
                        "fetching map output {} from executor {} at {}: no answer within \
                         shuffle.fetch_timeout ({})",
                        src.map_partition,
                        src.executor.0,
                        src.addr,
                        flint_protocol::scheduler::fmt_ms(limit.as_millis() as u64)
                    ))
                })
                .collect()
        }
    }
}

/// Fetches the first chunk of every segment of one reduce partition (of all sides) with
/// bounded bytes in flight: a segment's permits (for its first chunk) are held until the
/// guest has consumed it. The segments one executor holds are asked for together, up to
/// [`MAX_FETCH_MAPS`] and [`SEGMENT_CHUNK`](crate::shuffle::SEGMENT_CHUNK) bytes at a
/// time: one request (or, for this executor's own, one blocking read) per batch.
fn fetch_segments(
    env: &TaskEnv,
    desc: &TaskDescriptor,
    statuses: &TaskStatuses,
    reduce: u32,
    sides: &[ShuffleSideInput],
) -> Result<mpsc::Receiver<Fetched>, TaskError> {
    let job = desc.attempt.task.stage.job;
    let budget = desc
        .limits
        .max_bytes_in_flight
        .clamp(1 << 20, u32::MAX as u64);
    let permits = Arc::new(Semaphore::new(budget as usize));
    let limit = std::time::Duration::from_millis(desc.limits.fetch_timeout_ms.max(1));
    let segments = sides
        .iter()
        .map(|s| Ok(segments_of(statuses, s.shuffle)?.segments(reduce, s.maps.clone())))
        .collect::<Result<Vec<_>, TaskError>>()?;
    let total: usize = segments.iter().map(Vec::len).sum();
    let (tx, rx) = mpsc::channel(total.max(1));
    // A batch's first chunks together take at most this many permits.
    let batch_bytes = budget.min(crate::shuffle::SEGMENT_CHUNK);
    let want = move |src: &SegmentSource| src.size.clamp(1, batch_bytes) as u32;
    for ((side, input), segments) in sides.iter().enumerate().zip(segments) {
        // A cached dataset's partitions are filed under the application, not the job.
        let (job, shuffle, secret) = match input.cached {
            Some(c) => (c.job, c.shuffle, desc.app_secret),
            None => (job, input.shuffle, desc.shuffle_secret),
        };
        let key: FetchKey = (job, shuffle, secret, reduce, limit);
        // Each executor's segments, in the order given, cut into batches.
        for srcs in grouped(segments, |s| s.executor) {
            for batch in cut_batches(srcs, |s| want(s) as u64, batch_bytes) {
                let (fetcher, permits, tx) = (env.fetcher.clone(), permits.clone(), tx.clone());
                tokio::spawn(async move {
                    let wants: Vec<u32> = batch.iter().map(want).collect();
                    let Ok(mut permit) =
                        permits.acquire_many_owned(wants.iter().sum::<u32>()).await
                    else {
                        return;
                    };
                    let results = fetch_within(&fetcher, key, &batch, 0).await;
                    for ((src, r), w) in batch.into_iter().zip(results).zip(wants) {
                        // Each segment's share of the permits goes with it to the guest.
                        let Some(share) = permit.split(w as usize) else {
                            return;
                        };
                        let (job, shuffle, secret, reduce, limit) = key;
                        let seg = Arc::new(SegmentFetch {
                            job,
                            shuffle,
                            secret,
                            reduce,
                            src,
                            limit,
                        });
                        if tx.send((side as u32, r, share, seg)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }
    Ok(rx)
}

/// The statuses of `shuffle` among a task's: every shuffle its descriptor names has them.
fn segments_of(statuses: &TaskStatuses, shuffle: ShuffleId) -> Result<&ShuffleStatuses, TaskError> {
    statuses.get(shuffle).ok_or_else(|| {
        io_err(format!(
            "the task reads shuffle {} but was given no map statuses for it",
            shuffle.0
        ))
    })
}

/// One Arrow IPC stream of inline rows as streams of one batch each, so that no push
/// carries more than a batch.
fn split_stream(ipc: &[u8]) -> Result<Vec<Vec<u8>>, arrow_schema::ArrowError> {
    if ipc.len() <= MAX_FRAME_BYTES {
        return Ok(vec![ipc.to_vec()]);
    }
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
    let mut out = Vec::new();
    for b in reader {
        let b = b?;
        let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &b.schema())?;
        w.write(&b)?;
        w.finish()?;
        out.push(w.into_inner()?);
    }
    Ok(out)
}

/// The sink as the guest's `emit` reaches it, with the output counted and capped.
struct SinkState {
    /// Taken back by the runner when the guest is done.
    sink: Option<Sink>,
    records: u64,
    bytes: u64,
    max_output: u64,
}

struct SharedSink(Arc<Mutex<SinkState>>);

impl OutputSink for SharedSink {
    fn accept(&mut self, chunk: Chunk) -> Result<(), TaskError> {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        st.records += chunk.rows;
        st.bytes += chunk.ipc.len() as u64;
        if st.bytes > st.max_output {
            let max = st.max_output;
            return Err(limit(
                Limit::Output,
                format!("the task's output exceeds task.max_output_bytes ({max} bytes)"),
            ));
        }
        match st.sink.as_mut() {
            Some(sink) => sink.accept(chunk),
            None => Err(err(
                TaskErrorKind::Guest,
                vec!["the guest emitted after its task ended".into()],
            )),
        }
    }
}

/// Where a task's output chunks go.
enum Sink {
    Shuffle(MapOutputWriter),
    /// A part file (or directory of them), created with the first batch.
    File {
        file: String,
        out: Box<PartWriter>,
    },
    Rows {
        result: ResultWriter,
        rows: u64,
        max: u64,
    },
    Count(u64),
}

impl Sink {
    fn new(env: &TaskEnv, desc: &TaskDescriptor, run: PathBuf) -> Sink {
        match &desc.output {
            TaskOutput::ShuffleWrite { partitions, .. } => {
                Sink::Shuffle(MapOutputWriter::new(*partitions, MAP_OUTPUT_BUFFER, run))
            }
            TaskOutput::File {
                file,
                format,
                compression,
                partition_by,
                ..
            } => Sink::File {
                file: file.clone(),
                out: Box::new(PartWriter::new(
                    PathBuf::from(file),
                    *format,
                    *compression,
                    partition_by.clone(),
                    run.with_extension("upload"),
                )),
            },
            TaskOutput::Rows { .. } => Sink::Rows {
                result: env.results.writer(desc.attempt),
                rows: 0,
                max: desc.limits.max_result_bytes,
            },
            TaskOutput::Count => Sink::Count(0),
        }
    }

    fn accept(&mut self, c: Chunk) -> Result<(), TaskError> {
        match self {
            Sink::Shuffle(out) => {
                let n = out.partitions();
                if c.partition as usize >= n {
                    return Err(err(
                        TaskErrorKind::Guest,
                        vec![format!(
                            "guest wrote shuffle partition {} of {n}",
                            c.partition
                        )],
                    ));
                }
                out.append(c.partition as usize, &c.ipc)
                    .map_err(|e| io_err(format!("spilling the task's shuffle output: {e}")))?;
            }
            Sink::File { file, out } => {
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
                    out.write(&batch)
                        .map_err(|e| io_err(format!("writing {file}: {e}")))?;
                }
            }
            Sink::Rows { result, rows, max } => {
                result
                    .push(c.ipc)
                    .map_err(|e| io_err(format!("storing the task's result: {e}")))?;
                if result.bytes() > *max {
                    return Err(limit(
                        Limit::Result,
                        format!(
                            "the result of this task exceeds driver.max_result_size ({max} bytes); write large results with a save_* action instead of collect"
                        ),
                    ));
                }
                *rows += c.rows;
            }
            Sink::Count(n) => *n += c.rows,
        }
        Ok(())
    }

    /// A failed task's partial result goes.
    fn discard(self) {
        if let Sink::Rows { result, .. } = self {
            result.discard();
        }
    }

    async fn complete(
        self,
        env: &TaskEnv,
        desc: &TaskDescriptor,
        m: &mut TaskMetrics,
    ) -> Result<TaskSuccess, TaskError> {
        Ok(match self {
            Sink::Shuffle(out) => {
                m.spill_bytes += out.spill_bytes;
                m.spill_count += out.spill_count;
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
                        match out.into_segments() {
                            Ok(segments) => {
                                store.put_cached((c.job, c.shuffle, map), segments, c.level)
                            }
                            // Too large to have been held: it stays on disk.
                            Err(out) => out.commit(&store, c.job, c.shuffle, map),
                        }
                    }
                    None => {
                        store.grant(job, secret)?;
                        out.commit(&store, job, shuffle, map)
                    }
                })
                .await
                .map_err(|e| io_err(e.to_string()))?
                .map_err(|e| io_err(e.to_string()))?;
                m.shuffle_write_bytes = sizes.iter().sum();
                TaskSuccess::MapOutput { sizes }
            }
            Sink::File { file, out } => {
                let rows = out.rows;
                out.close()
                    .map_err(|e| io_err(format!("writing {file}: {e}")))?;
                TaskSuccess::File { file, rows }
            }
            Sink::Rows { result, rows, .. } => {
                let (result, kept) = result
                    .finish()
                    .map_err(|e| io_err(format!("storing the task's result: {e}")))?;
                if let Some((path, bytes)) = kept {
                    env.results.keep(desc.attempt, path, bytes);
                }
                TaskSuccess::Rows { rows, result }
            }
            Sink::Count(n) => TaskSuccess::Count(n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_first_seen_order_and_the_order_within() {
        let g = grouped(
            vec![(1, 'a'), (2, 'b'), (1, 'c'), (3, 'd'), (2, 'e')],
            |p| p.0,
        );
        let letters: Vec<String> = g.iter().map(|v| v.iter().map(|p| p.1).collect()).collect();
        assert_eq!(letters, ["ac", "be", "d"]);
        assert!(grouped(Vec::<u8>::new(), |x| *x).is_empty());
    }

    #[test]
    fn batches_are_cut_by_count_and_by_bytes_keeping_order() {
        // Bytes: each item's want is itself.
        let cut = |items: Vec<u64>, max| cut_batches(items, |&w| w, max);
        assert_eq!(cut(vec![3, 3, 3, 3], 7), vec![vec![3, 3], vec![3, 3]]);
        // An item over the limit goes alone; the next starts a new batch.
        assert_eq!(cut(vec![1, 9, 1, 1], 7), vec![vec![1], vec![9], vec![1, 1]]);
        assert!(cut(Vec::new(), 7).is_empty());
        // Count: at most MAX_FETCH_MAPS per batch, however small.
        let many = cut(vec![1; 2 * MAX_FETCH_MAPS + 1], u64::MAX);
        let lens: Vec<usize> = many.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![MAX_FETCH_MAPS, MAX_FETCH_MAPS, 1]);
        // Huge wants neither wrap the running sum nor share a bounded batch.
        assert_eq!(
            cut(vec![1, u64::MAX, 1], u64::MAX),
            vec![vec![1, u64::MAX, 1]]
        );
        assert_eq!(
            cut(vec![u64::MAX, u64::MAX], 10),
            vec![vec![u64::MAX], vec![u64::MAX]]
        );
    }
}
