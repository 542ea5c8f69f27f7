//! Messages on the wire, and their framing: a `u32` little-endian length, then postcard.
//!
//! Every connection opens with a [preamble](preamble) in each direction on its first
//! bidirectional stream, checked before any body is decoded. Then, by the peer's role
//! (its TLS identity, see `flint-transport`):
//! - a **submitter** (a tenant, no client certificate) sends [`Hello::Submit`], small,
//!   and after [`SubmitEvent::Accepted`] the component's bytes (unless the driver holds
//!   them already); it then receives [`SubmitEvent`]s;
//! - a host **enrolling** as an executor (no certificate yet) sends [`Hello::Enrol`] with
//!   the operator's enrolment token and its public key, and gets a certificate back;
//! - an **executor** (a certificate the cluster CA issued for that role) sends
//!   [`Hello::Executor`], then the control conversation ([`ToExecutor`] /
//!   [`FromExecutor`]) follows. Every module, broadcast or result fetch gets a stream of
//!   its own, so bulk data never queues behind control messages.
//!
//! A message is refused before anything is allocated for it when its length passes the
//! limit of where it arrives: [`MAX_HELLO`] before the peer is known, [`MAX_STATUS`] on
//! an executor's control stream.

use crate::ids::{ExecutorId, JobId, ModuleHash, ShuffleId, StageId, TaskAttemptId};
use crate::plan::{Codec, Malformed, Op, ReadFormat, StorageLevel, WriteFormat};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Largest frame a driver sends an executor (task descriptors carry inline rows and
/// captured values; the DAG builder refuses a task that would not fit).
pub const MAX_FRAME: usize = 256 << 20;

/// Largest first message on a connection, before the peer is authenticated.
pub const MAX_HELLO: usize = 64 << 10;

/// Largest message an executor sends on its control stream (a task status with its
/// accumulator updates; results travel on streams of their own).
pub const MAX_STATUS: usize = 16 << 20;

/// Accumulator updates one task may report, in bytes: they ride in its status.
pub const MAX_TASK_ACCUMULATOR_BYTES: usize = 8 << 20;

/// An error chain from a guest keeps at most this many messages, each at most
/// [`MAX_ERROR_MESSAGE`] bytes: it rides in a task's status and a submitter's answer.
pub const MAX_ERROR_MESSAGES: usize = 32;
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// `chain` within [`MAX_ERROR_MESSAGES`] and [`MAX_ERROR_MESSAGE`], saying what was cut.
pub fn bound_chain(chain: Vec<String>) -> Vec<String> {
    let n = chain.len();
    let mut out: Vec<String> = chain
        .into_iter()
        .take(MAX_ERROR_MESSAGES)
        .map(|mut m| {
            if m.len() > MAX_ERROR_MESSAGE {
                let mut end = MAX_ERROR_MESSAGE;
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                m.truncate(end);
                m.push('…');
            }
            m
        })
        .collect();
    if n > MAX_ERROR_MESSAGES {
        out.push(format!("(and {} more causes)", n - MAX_ERROR_MESSAGES));
    }
    out
}

/// Results up to this size ride in the task's status; larger ones stay on the executor
/// until the driver fetches them (Spark's direct and indirect task results).
pub const MAX_DIRECT_RESULT: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Serializes `msg` with its length prefix; a body over `max` bytes is refused before
/// anything is allocated for it.
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let len = body_size(msg)?;
    if len > max || len > u32::MAX as usize {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    postcard::to_io(msg, &mut out)?;
    Ok(out)
}

/// The size of `msg`'s body on the wire, computed without encoding it.
pub fn body_size<T: Serialize>(msg: &T) -> Result<usize, FrameError> {
    Ok(postcard::experimental::serialized_size(msg)?)
}

/// Reads a length prefix, refusing one larger than `max`.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// The fixed opening of every connection: 4 bytes of magic, then the protocol version
/// (`u32` little endian). Checked before any message is decoded, so a peer of another
/// version gets "protocol version 3, this driver speaks 5", not "malformed message".
pub mod preamble {
    use thiserror::Error;

    pub const MAGIC: [u8; 4] = *b"FLNT";
    pub const LEN: usize = 8;

    /// This side's preamble.
    pub fn ours() -> [u8; LEN] {
        let mut p = [0u8; LEN];
        p[..4].copy_from_slice(&MAGIC);
        p[4..].copy_from_slice(&crate::PROTOCOL_VERSION.to_le_bytes());
        p
    }

    #[derive(Debug, Error, PartialEq, Eq)]
    pub enum PreambleError {
        #[error("the peer does not speak Flint's protocol (its first bytes are not `FLNT`)")]
        NotFlint,
        #[error(
            "the peer speaks protocol version {theirs}, this flint speaks {ours}; use matching flint builds"
        )]
        Version { theirs: u32, ours: u32 },
    }

    /// The peer's version, if its preamble is Flint's and its version is ours.
    pub fn check(p: &[u8; LEN]) -> Result<(), PreambleError> {
        if p[..4] != MAGIC {
            return Err(PreambleError::NotFlint);
        }
        let theirs = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        if theirs != crate::PROTOCOL_VERSION {
            return Err(PreambleError::Version {
                theirs,
                ours: crate::PROTOCOL_VERSION,
            });
        }
        Ok(())
    }
}

/// The first message on a connection to the driver, after the preamble. Which ones a
/// connection may send depends on its TLS identity; anything else closes it.
#[derive(Debug, Serialize, Deserialize)]
pub enum Hello {
    /// A tenant submits an application (connections without a certificate).
    Submit(SubmitHello),
    /// A host with the operator's cluster file asks for an executor certificate
    /// (connections without a certificate).
    Enrol(EnrolRequest),
    /// A registered executor (connections with an executor certificate only).
    Executor(ExecutorHello),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The enrolment token of the operator's `cluster.json`.
    pub token: String,
    /// The executor's own public key (raw ECDSA P-256 point); the certificate the
    /// driver issues binds it to the executor role. The private key never leaves.
    pub public_key: Vec<u8>,
}

/// The driver's answer to an enrolment, or why not.
pub type EnrolReply = Result<EnrolGrant, String>;

#[derive(Debug, Serialize, Deserialize)]
pub struct EnrolGrant {
    /// The executor's certificate (PEM), for its key, issued by the executors' CA.
    pub cert_pem: String,
    /// The executors' CA (PEM): what other executors' certificates are checked against.
    pub executor_ca_pem: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExecutorHello {
    /// Task slots; at most [`MAX_EXECUTOR_CORES`].
    pub cores: u32,
    /// Where this executor serves shuffle segments (its QUIC endpoint).
    pub shuffle_addr: String,
    /// Where it serves Prometheus metrics over HTTP, if it does.
    pub metrics_addr: Option<String>,
}

/// Most task slots an executor may declare.
pub const MAX_EXECUTOR_CORES: u32 = 1024;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToExecutor {
    Welcome {
        executor: ExecutorId,
        heartbeat_interval_ms: u64,
    },
    /// The registration was refused.
    Refused {
        reason: String,
    },
    Launch(Box<TaskDescriptor>),
    /// Part of where a shuffle's map outputs are, sent before the first task that reads
    /// them at this version (see [`MapStatuses`]).
    MapStatuses(Box<MapStatuses>),
    /// The job is over: its shuffle files and stored results may go.
    CleanJob {
        job: JobId,
    },
    /// Stop this attempt (another attempt won, or its job ended); answer with its status.
    Kill {
        attempt: TaskAttemptId,
    },
    /// Drop the partitions of a cached dataset (`unpersist`).
    DropCached {
        job: JobId,
        shuffle: ShuffleId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromExecutor {
    Heartbeat {
        running: u32,
    },
    Status(Box<TaskStatus>),
    /// The executor is shutting down gracefully: it takes no new tasks, and the ones it
    /// cannot finish in time come back as [`TaskErrorKind::Killed`].
    Decommissioning,
    /// Cached partitions evicted from memory without a disk copy: gone.
    CachedDropped {
        job: JobId,
        shuffle: ShuffleId,
        maps: Vec<u32>,
    },
}

/// Driver → executor, on a stream the driver opens on the executor's connection: send
/// me the stored result of this attempt. The answer is a [`FetchReply`] header and the
/// result's bytes: length-prefixed (`u32` LE) Arrow IPC streams, back to back.
#[derive(Debug, Serialize, Deserialize)]
pub struct FetchResult {
    pub attempt: TaskAttemptId,
}

/// Everything an executor needs to run one task attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskDescriptor {
    pub attempt: TaskAttemptId,
    /// The job's shuffle capability: map outputs are filed under it, fetches present it.
    pub shuffle_secret: [u8; 16],
    /// The application's capability for its cached partitions (which outlive jobs) and
    /// its broadcast values.
    pub app_secret: [u8; 16],
    /// The application the task's job belongs to.
    pub app: u64,
    pub module: ModuleHash,
    /// What the task reads, in order: one piece, or several for a union or coalesce.
    pub pieces: Vec<TaskPiece>,
    /// Narrow ops applied after each piece's own, across all pieces.
    pub ops: Vec<Op>,
    pub output: TaskOutput,
    pub limits: TaskLimits,
    /// The build sides of the broadcast hash joins among the ops, in the order their
    /// probe ops name them: every segment of each shuffle, read whole.
    pub builds: Vec<BuildInput>,
}

impl TaskDescriptor {
    /// Every shuffle the task reads (its pieces' sides, then its build sides) with the
    /// version of the map statuses it names: what its executor must hold to run it.
    pub fn shuffle_reads(&self) -> impl Iterator<Item = (ShuffleId, u64)> + '_ {
        self.pieces
            .iter()
            .filter_map(|p| match &p.input {
                TaskInput::Shuffle { sides, .. } => Some(sides),
                _ => None,
            })
            .flatten()
            .map(|side| (side.shuffle, side.statuses))
            .chain(self.builds.iter().map(|b| (b.shuffle, b.statuses)))
    }
}

/// A broadcast hash join's build side: the whole output of a map stage, every non-empty
/// segment of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildInput {
    pub shuffle: ShuffleId,
    /// The version of the shuffle's [`MapStatuses`] that say where its segments are.
    pub statuses: u64,
    /// Where a map output kept for later jobs is filed (see [`CacheTarget`]).
    pub cached: Option<CacheTarget>,
}

/// Where the map outputs of one shuffle of a job are, as of one version of them
/// (`MapOutputTracker::version`): the executor holding each map task's output and its
/// bytes per reduce partition. A task names the shuffles it reads and their versions
/// only; the driver sends an executor each version it has not had, once, before the
/// first task that needs it, so that a task descriptor's size does not grow with the map
/// tasks before it (Spark's map statuses, cached by its executors).
///
/// Sent in parts (map partitions `first..first + outputs.len()`, in order, from 0), each
/// within a frame; a version replaces the one before it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapStatuses {
    pub job: JobId,
    pub shuffle: ShuffleId,
    pub version: u64,
    /// Map partitions in the shuffle: the statuses are whole once that many arrived.
    pub maps: u32,
    /// Reduce partitions: every output has this many sizes.
    pub partitions: u32,
    /// This part's first map partition.
    pub first: u32,
    /// The executors holding this part's outputs and their shuffle addresses.
    pub holders: Vec<(ExecutorId, String)>,
    pub outputs: Vec<MapOutput>,
}

/// One map task's output: who holds it (an index into [`MapStatuses::holders`]) and its
/// bytes per reduce partition, each in one byte ([`compress_size`]): an executor needs
/// to know which segments are empty and roughly how big the others are, not the byte.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapOutput {
    pub holder: u32,
    pub sizes: Vec<u8>,
}

/// A segment size in one byte, as Spark's map statuses keep it: 0 for empty, else
/// `ceil(log1.1(bytes))` (at least 1), so that [`decompress_size`] is within about 10%
/// of the size up to 35 GB, and 35 GB beyond.
pub fn compress_size(bytes: u64) -> u8 {
    match bytes {
        0 => 0,
        1 => 1,
        b => ((b as f64).ln() / 1.1f64.ln()).ceil().min(255.0) as u8,
    }
}

/// The size [`compress_size`] stands for: never 0 for a non-empty segment.
pub fn decompress_size(c: u8) -> u64 {
    match c {
        0 => 0,
        c => 1.1f64.powi(i32::from(c)) as u64,
    }
}

/// One input of a task and the narrow ops that apply to it alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskPiece {
    pub input: TaskInput,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskInput {
    /// A split of a file: for line-based formats the lines whose first byte lies in
    /// `[start, end)` (Hadoop-style); for Parquet the row groups, for Arrow IPC the
    /// record batches `[start, end)`.
    Split {
        path: String,
        /// Shared by every split of the source (it can carry a schema).
        format: std::sync::Arc<ReadFormat>,
        malformed: Malformed,
        start: u64,
        end: u64,
        /// The Hive-style `column=value` directories the file is under: columns every
        /// row of the file gets.
        partition: Vec<PartitionValue>,
        /// The source's filter, shared by its splits: rows pass when every predicate holds.
        filter: std::sync::Arc<[crate::plan::ColumnPredicate]>,
        decode: Op,
    },
    /// Rows the driver program gave (`parallelize`): one Arrow IPC stream.
    Inline { ipc: Vec<u8>, decode: Op },
    /// Segments of one reduce partition of a shuffle, per side.
    Shuffle {
        reduce_partition: u32,
        read: Op,
        sides: Vec<ShuffleSideInput>,
    },
}

/// One partition column of a file under `column=value/`: every row of the file gets
/// `value` (`None`: Hive's `__HIVE_DEFAULT_PARTITION__`, a null), as a 64-bit integer
/// when every value the source's directories give the column is one, else as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionValue {
    pub column: String,
    pub value: Option<String>,
    pub integer: bool,
}

/// One side of a shuffle a reduce task fetches: the non-empty segments of its reduce
/// partition, of every map output or of the map partitions `maps` (a share of a skewed
/// partition).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShuffleSideInput {
    pub shuffle: ShuffleId,
    /// The version of the shuffle's [`MapStatuses`] that say where its segments are.
    pub statuses: u64,
    pub maps: Option<std::ops::Range<u32>>,
    /// For a cached dataset: where its partitions are filed (see [`CacheTarget`]).
    pub cached: Option<CacheTarget>,
}

/// Where a cached dataset's partitions are filed on executors: under the application's
/// cache pseudo-job ([`JobId::cache_of_app`]) and the dataset's id, not under the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheTarget {
    pub job: JobId,
    pub shuffle: ShuffleId,
    pub level: StorageLevel,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SegmentSource {
    pub executor: ExecutorId,
    /// The serving executor's shuffle address.
    pub addr: String,
    pub map_partition: u32,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TaskOutput {
    ShuffleWrite {
        shuffle: ShuffleId,
        partitions: u32,
        write: Op,
        /// Keep the output as a cached dataset's partition instead.
        cached: Option<CacheTarget>,
    },
    /// Write the rendered rows to `file` (an attempt-private staging path) in `format`;
    /// with `partition_by`, `file` is a directory of `column=value/…/part` files.
    File {
        file: String,
        format: WriteFormat,
        compression: Codec,
        partition_by: Vec<String>,
        render: Op,
    },
    Rows {
        encode: Op,
    },
    Count,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Cap on the guest's linear memory.
    pub memory_bytes: u64,
    /// Wall-clock budget of the attempt, enforced by epoch interruption.
    pub deadline_ms: u64,
    /// Shuffle bytes a reduce task may have in flight.
    pub max_bytes_in_flight: u64,
    /// Cap on the rows a task may send back to the driver (collect).
    pub max_result_bytes: u64,
    /// Time to fetch one shuffle segment before it counts as a fetch failure.
    pub fetch_timeout_ms: u64,
    /// Bytes the task may output in all (shuffle segments, text, rows).
    pub max_output_bytes: u64,
    /// Count the guest's fuel (Wasm instructions) for accounting.
    pub meter_fuel: bool,
    /// Disk the task may spill to (`task.max_spill_bytes`).
    pub max_spill_bytes: u64,
    /// Its tenant's quota on what its tasks hold spilled on one executor at once.
    pub tenant_spill: Option<TenantSpill>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSpill {
    pub tenant: String,
    /// `max_executor_spill_bytes` in the tenants file.
    pub max_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TaskStatus {
    pub attempt: TaskAttemptId,
    pub result: Result<TaskSuccess, TaskError>,
    pub metrics: TaskMetrics,
    /// What the guest printed (capped tails).
    pub output: GuestOutput,
    /// The task's accumulator updates: (accumulator id, merged partial value).
    pub accumulators: Vec<(u32, Vec<u8>)>,
}

/// The tails of a task's captured stdout and stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestOutput {
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum TaskSuccess {
    /// Bytes per reduce partition.
    MapOutput {
        sizes: Vec<u64>,
    },
    /// Encoded rows for the driver, `rows` in all.
    Rows {
        rows: u64,
        result: TaskResult,
    },
    Count(u64),
    File {
        file: String,
        rows: u64,
    },
}

/// A task's result rows: in its status when small, else kept by the executor until the
/// driver fetches them ([`FetchResult`]), after checking they fit what the action may
/// bring back.
#[derive(Debug, Serialize, Deserialize)]
pub enum TaskResult {
    /// Arrow IPC streams.
    Direct(Vec<Vec<u8>>),
    /// This many bytes (IPC streams with their length prefixes) wait on the executor.
    Stored { bytes: u64 },
}

/// Which limit ended a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    /// Guest memory (`task.memory`).
    Memory,
    /// Wall time (`task.deadline`).
    Deadline,
    /// Bytes the task output (`task.max_output_bytes`).
    Output,
    /// Result bytes for the driver (`driver.max_result_size`).
    Result,
    /// Accumulator updates of one task ([`MAX_TASK_ACCUMULATOR_BYTES`]).
    Accumulators,
    /// Disk a task spilled to (`task.max_spill_bytes`, or its tenant's quota).
    Spill,
}

impl Limit {
    /// The setting (or protocol limit) that sets it, as errors name it.
    pub fn setting(self) -> &'static str {
        match self {
            Limit::Memory => "task.memory",
            Limit::Deadline => "task.deadline",
            Limit::Output => "task.max_output_bytes",
            Limit::Result => "driver.max_result_size",
            Limit::Accumulators => "the protocol's 8 MiB of accumulator updates per task",
            Limit::Spill => "task.max_spill_bytes",
        }
    }

    /// Whether another attempt would hit it again: the same code over the same
    /// partition allocates, outputs and returns the same. Only time depends on the
    /// machine.
    pub fn is_deterministic(self) -> bool {
        !matches!(self, Limit::Deadline)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskErrorKind {
    /// The guest returned an error of its own.
    Guest,
    /// The guest trapped (a panic, `unreachable`, out-of-bounds...).
    Trap,
    /// A sandbox limit was hit.
    Limit(Limit),
    /// The component could not be loaded; retrying cannot help.
    BadModule,
    /// Input or output could not be read or written.
    Io,
    /// The input is not what its format says (a malformed record, a column the row type
    /// names that the file lacks, an unreadable Parquet file): another attempt would read
    /// the same bytes.
    BadInput,
    /// A shuffle segment could not be fetched from `executor`.
    FetchFailed {
        executor: ExecutorId,
        map_partition: u32,
    },
    /// The attempt was stopped on request, or handed back by an executor shutting down:
    /// not a failure of the task.
    Killed,
}

impl TaskErrorKind {
    /// Whether retrying the task cannot help: the component does not load, or a
    /// deterministic limit was hit. Such a failure ends the job at once, naming it,
    /// instead of being retried `task.max_failures` times.
    pub fn is_deterministic(&self) -> bool {
        match self {
            TaskErrorKind::BadModule | TaskErrorKind::BadInput => true,
            TaskErrorKind::Limit(l) => l.is_deterministic(),
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: TaskErrorKind,
    /// Outermost first, root cause last.
    pub chain: Vec<String>,
}

/// What an attempt measured; executors sum these into their own totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMetrics {
    pub run_ms: u64,
    /// Time to get a compiled component (compile or cache load); 0 when already in memory.
    pub load_ms: u64,
    pub compiled: bool,
    pub instantiate_us: u64,
    pub input_records: u64,
    pub input_bytes: u64,
    pub output_records: u64,
    /// Bytes the guest handed to the host as output (Arrow IPC).
    pub output_bytes: u64,
    pub shuffle_write_bytes: u64,
    pub shuffle_read_local_bytes: u64,
    /// Bytes fetched from other executors over QUIC.
    pub shuffle_read_remote_bytes: u64,
    pub peak_memory_bytes: u64,
    /// Fuel the guest burnt, when its tenant's tasks are metered.
    pub fuel: Option<u64>,
    /// Malformed input records dropped (with `Malformed::Drop`).
    pub dropped_records: u64,
    /// Bytes the task spilled to disk: its guest's spill runs and the map output the host
    /// could not hold.
    pub spill_bytes: u64,
    /// Spill runs the guest made, plus times the host's map output buffer went to disk.
    pub spill_count: u64,
    /// The task ran in an instance an earlier task of its application left (no
    /// instantiation).
    #[serde(default)]
    pub warm: bool,
}

impl TaskMetrics {
    pub fn add(&mut self, o: &TaskMetrics) {
        self.run_ms += o.run_ms;
        self.load_ms += o.load_ms;
        self.instantiate_us += o.instantiate_us;
        self.input_records += o.input_records;
        self.input_bytes += o.input_bytes;
        self.output_records += o.output_records;
        self.output_bytes += o.output_bytes;
        self.shuffle_write_bytes += o.shuffle_write_bytes;
        self.shuffle_read_local_bytes += o.shuffle_read_local_bytes;
        self.shuffle_read_remote_bytes += o.shuffle_read_remote_bytes;
        self.peak_memory_bytes = self.peak_memory_bytes.max(o.peak_memory_bytes);
        self.dropped_records += o.dropped_records;
        self.spill_bytes += o.spill_bytes;
        self.spill_count += o.spill_count;
        self.fuel = match (self.fuel, o.fuel) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
    }
}

/// Executor → driver, on its own stream: send me these bytes.
#[derive(Debug, Serialize, Deserialize)]
pub enum FetchModule {
    /// A component.
    Module(ModuleHash),
    /// A broadcast value of application `app`; `secret` is the application's capability.
    Broadcast { app: u64, id: u32, secret: [u8; 16] },
}

/// Executor → executor, on its own stream: send me these shuffle segments, the segment
/// of `reduce_partition` in each of the map outputs `maps` (all held by the serving
/// executor), in that order: one [`FetchReply`] and its bytes per map output. As Spark
/// batches the blocks a reducer fetches from one executor, a reduce task asks each
/// executor for many small segments at once (at most [`MAX_FETCH_MAPS`]) rather than one
/// request and one disk read on a thread of its own per segment.
#[derive(Debug, Serialize, Deserialize)]
pub struct FetchSegments {
    pub job: JobId,
    /// The job's shuffle capability; the serving executor refuses a request without it.
    pub secret: [u8; 16],
    pub shuffle: ShuffleId,
    pub maps: Vec<u32>,
    pub reduce_partition: u32,
    /// The bytes of each segment wanted: from `offset`, at most `len` (a reader takes a
    /// large segment a chunk at a time, one map output per request after the first
    /// chunk; a shorter answer is the segment's end).
    pub offset: u64,
    pub len: u64,
}

/// The most map outputs one [`FetchSegments`] names.
pub const MAX_FETCH_MAPS: usize = 64;

/// Answer header to a fetch; on `Ok(len)`, `len` raw bytes follow.
pub type FetchReply = Result<u64, String>;

/// What a tenant submits, before it is authenticated: small (at most [`MAX_HELLO`]).
/// The component follows as raw bytes once the driver answers
/// [`SubmitEvent::Accepted`], unless the driver already holds it from this tenant.
#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitHello {
    /// Shown in logs and summaries (the component's file or crate name).
    pub name: String,
    pub args: Vec<String>,
    /// `--conf` settings for this application, already validated by the submitter.
    pub conf: Vec<(String, String)>,
    /// The tenant's API token, where the cluster has tenants.
    pub token: Option<String>,
    /// Size and SHA-256 of the component that follows.
    pub component_bytes: u64,
    pub component: ModuleHash,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum SubmitEvent {
    /// The submission passed authentication and the tenant's quotas: send the component
    /// if `upload` (the driver does not hold this tenant's component of that hash).
    Accepted {
        app: u64,
        upload: bool,
    },
    JobStarted {
        job: JobId,
        action: String,
        stages: Vec<String>,
        /// Tasks per stage.
        stage_tasks: Vec<u32>,
    },
    JobEnded {
        job: JobId,
        ok: bool,
        ms: u64,
    },
    /// Adaptive execution changed the job's stages (`changes` says how): their names and
    /// task counts from now on.
    Replanned {
        job: JobId,
        stages: Vec<String>,
        stage_tasks: Vec<u32>,
        changes: Vec<String>,
    },
    /// `done` of `total` partitions of `stage` have succeeded.
    StageProgress {
        stage: StageId,
        done: u32,
        total: u32,
    },
    Finished(Result<AppSummary, AppError>),
}

/// Why an application failed, typed, so a submitter can tell a refusal from an invalid
/// plan from a failed task without reading the messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppErrorKind {
    /// Refused before anything of it ran: authentication, a quota, a setting.
    Refused,
    /// The component could not be loaded.
    BadComponent,
    /// The driver program failed on its own: its error, a panic or trap, its deadline.
    Program,
    /// The plan the driver program sent is malformed.
    InvalidPlan,
    /// A limit was hit; `limit` names the setting or quota.
    Limit { limit: String },
    /// A path outside what the tenant may read or write.
    Denied,
    /// An input could not be listed or read, or an output committed.
    Io,
    /// A job failed because one of its tasks failed.
    TaskFailed,
    /// The driver could not go on (it is shutting down).
    Driver,
    /// A record of an input is not what the row type reads (a guest's decoding failed):
    /// another attempt would read the same bytes.
    BadInput,
}

impl fmt::Display for AppErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppErrorKind::Refused => f.write_str("refused"),
            AppErrorKind::BadComponent => f.write_str("bad component"),
            AppErrorKind::Program => f.write_str("driver program failed"),
            AppErrorKind::InvalidPlan => f.write_str("invalid plan"),
            AppErrorKind::Limit { limit } => write!(f, "limit {limit}"),
            AppErrorKind::Denied => f.write_str("denied"),
            AppErrorKind::Io => f.write_str("input/output"),
            AppErrorKind::TaskFailed => f.write_str("task failed"),
            AppErrorKind::Driver => f.write_str("driver"),
            AppErrorKind::BadInput => f.write_str("bad input"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{}", .chain.join(": "))]
pub struct AppError {
    pub kind: AppErrorKind,
    /// Outermost first, root cause last.
    pub chain: Vec<String>,
}

impl AppError {
    pub fn new(kind: AppErrorKind, chain: Vec<String>) -> AppError {
        AppError { kind, chain }
    }

    pub fn refused(message: impl Into<String>) -> AppError {
        AppError::new(AppErrorKind::Refused, vec![message.into()])
    }

    /// A limit hit, naming it.
    pub fn limit(limit: impl Into<String>, message: impl Into<String>) -> AppError {
        AppError::new(
            AppErrorKind::Limit {
                limit: limit.into(),
            },
            vec![message.into()],
        )
    }

    /// This error under an outer message.
    pub fn context(mut self, message: impl Into<String>) -> AppError {
        self.chain.insert(0, message.into());
        self
    }
}

/// What a finished application reports back to its submitter.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AppSummary {
    pub elapsed_ms: u64,
    pub jobs: u32,
    pub tasks: u64,
    pub failed_tasks: u64,
    /// Attempts stopped because another attempt of their task won.
    pub killed_tasks: u64,
    pub speculative_tasks: u64,
    /// Reduce attempts that could not fetch their input; their map tasks ran again.
    pub fetch_failures: u64,
    /// Where `save_*` actions wrote.
    pub outputs: Vec<String>,
    /// The schemas the driver inferred for CSV sources (`source: column: type, …`), for
    /// the user to pin.
    pub inferred_schemas: Vec<String>,
    /// Broadcast values sent to executors (each executor fetches a value once).
    pub broadcast_fetches: u64,
    /// What the driver program printed (capped).
    pub stdout: String,
    pub executors: Vec<ExecutorSummary>,
}

/// Per executor, the sums of the task metrics it reported for this application.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExecutorSummary {
    pub executor: ExecutorId,
    pub addr: String,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    /// Attempts stopped because another attempt won, or handed back at shutdown.
    pub tasks_killed: u64,
    /// Speculative copies this executor was given.
    pub tasks_speculated: u64,
    /// Attempts that could not fetch their shuffle input (not task failures).
    pub fetch_failures: u64,
    /// Why it was excluded, per stage or job (exclude-on-failure).
    pub exclusions: Vec<String>,
    pub compiles: u64,
    pub metrics: TaskMetrics,
}

#[cfg(test)]
mod tests {

    #[test]
    fn compressed_sizes_stay_within_a_tenth_above() {
        assert_eq!(decompress_size(compress_size(0)), 0);
        assert_eq!(decompress_size(compress_size(1)), 1);
        for b in [2u64, 3, 10, 999, 4096, 1 << 20, 123_456_789, 30 << 30] {
            let d = decompress_size(compress_size(b));
            assert!(d >= b * 9 / 10 && d <= b + b / 10 + 1, "{b} -> {d}");
        }
        assert_eq!(compress_size(u64::MAX), 255);
    }
    use super::*;

    #[test]
    fn frame_roundtrip() {
        let msg = FromExecutor::Heartbeat { running: 3 };
        let frame = encode_frame(&msg, MAX_FRAME).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap(), MAX_FRAME).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: FromExecutor = decode_body(&frame[4..]).unwrap();
        assert!(matches!(back, FromExecutor::Heartbeat { running: 3 }));
    }

    #[test]
    fn a_guest_s_error_chain_is_bounded() {
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let chain = bound_chain(vec![long; 100]);
        assert_eq!(chain.len(), MAX_ERROR_MESSAGES + 1);
        assert!(chain[0].len() <= MAX_ERROR_MESSAGE + 3);
        assert_eq!(chain.last().unwrap(), "(and 68 more causes)");
        assert_eq!(bound_chain(vec!["short".into()]), vec!["short"]);
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_it_is_encoded() {
        let msg = FromExecutor::CachedDropped {
            job: JobId(1),
            shuffle: ShuffleId(0),
            maps: vec![u32::MAX; 1000],
        };
        let size = body_size(&msg).unwrap();
        assert!(matches!(
            encode_frame(&msg, size - 1),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(encode_frame(&msg, size).unwrap().len(), size + 4);
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let err = frame_len(u32::MAX.to_le_bytes(), 1024).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn garbage_bodies_are_errors_not_panics() {
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 64))
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 97) >> 3) as u8)
                .collect();
            let _ = decode_body::<Hello>(&bytes);
            let _ = decode_body::<ToExecutor>(&bytes);
            let _ = decode_body::<FromExecutor>(&bytes);
        }
    }

    #[test]
    fn preambles_tell_a_version_mismatch_from_a_stranger() {
        assert_eq!(preamble::check(&preamble::ours()), Ok(()));
        let mut old = preamble::ours();
        old[4..].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            preamble::check(&old),
            Err(preamble::PreambleError::Version {
                theirs: 3,
                ours: crate::PROTOCOL_VERSION
            })
        );
        assert!(
            preamble::check(&old)
                .unwrap_err()
                .to_string()
                .contains("protocol version 3")
        );
        assert_eq!(
            preamble::check(b"GET / HT"),
            Err(preamble::PreambleError::NotFlint)
        );
    }
}
