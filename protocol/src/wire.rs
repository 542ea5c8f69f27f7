//! Messages on the wire, and their framing: a `u32` little-endian length, then postcard.
//!
//! Streams: an executor's first bidirectional stream to the driver carries
//! [`Hello::Executor`] and then the control conversation ([`ToExecutor`] /
//! [`FromExecutor`]); every module fetch and every shuffle fetch gets a stream of its own,
//! so bulk data never queues behind control messages. A submitter's first stream carries
//! [`Hello::Submit`] and receives [`SubmitEvent`]s.

use crate::ids::{ExecutorId, JobId, ModuleHash, ShuffleId, StageId, TaskAttemptId};
use crate::plan::{Malformed, Op, ReadFormat, StorageLevel, WriteFormat};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest control frame accepted (task descriptors, statuses, submit requests with their
/// component). A length field above this is refused before anything is allocated.
pub const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Serializes `msg` with its length prefix.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // postcard into a Vec cannot fail for our plain-data types.
    let body = postcard::to_stdvec(msg).expect("wire types always serialize");
    out[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
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

/// The first message on a connection to the driver.
#[derive(Debug, Serialize, Deserialize)]
pub enum Hello {
    Executor(ExecutorHello),
    Submit(SubmitRequest),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExecutorHello {
    pub protocol_version: u32,
    pub cores: u32,
    /// Where this executor serves shuffle segments (its QUIC endpoint).
    pub shuffle_addr: String,
    /// Where it serves Prometheus metrics over HTTP, if it does.
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToExecutor {
    Welcome {
        executor: ExecutorId,
        heartbeat_interval_ms: u64,
    },
    /// The handshake was refused (protocol version...).
    Refused {
        reason: String,
    },
    Launch(Box<TaskDescriptor>),
    /// The job is over: its shuffle files may go.
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
        format: ReadFormat,
        malformed: Malformed,
        start: u64,
        end: u64,
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

/// The segments of one side of a shuffle a reduce task fetches.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShuffleSideInput {
    pub shuffle: ShuffleId,
    pub segments: Vec<SegmentSource>,
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
    /// Write the rendered rows to `file` (an attempt-private staging path) in `format`.
    File {
        file: String,
        format: WriteFormat,
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
    /// Arrow IPC streams of encoded rows, `rows` in all.
    Rows {
        batches: Vec<Vec<u8>>,
        rows: u64,
    },
    Count(u64),
    File {
        file: String,
        rows: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskErrorKind {
    /// The guest returned an error of its own.
    Guest,
    /// The guest trapped (a panic, `unreachable`, out-of-bounds...).
    Trap,
    /// A sandbox limit was hit (memory, deadline, output size).
    Limit,
    /// The component could not be loaded; retrying cannot help.
    BadModule,
    /// Input or output could not be read or written.
    Io,
    /// A shuffle segment could not be fetched from `executor`.
    FetchFailed {
        executor: ExecutorId,
        map_partition: u32,
    },
    /// The attempt was stopped on request, or handed back by an executor shutting down:
    /// not a failure of the task.
    Killed,
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

/// Executor → executor, on its own stream: send me this shuffle segment.
#[derive(Debug, Serialize, Deserialize)]
pub struct FetchSegment {
    pub job: JobId,
    /// The job's shuffle capability; the serving executor refuses a request without it.
    pub secret: [u8; 16],
    pub shuffle: ShuffleId,
    pub map_partition: u32,
    pub reduce_partition: u32,
}

/// Answer header to a fetch; on `Ok(len)`, `len` raw bytes follow.
pub type FetchReply = Result<u64, String>;

#[derive(Debug, Serialize, Deserialize)]
pub struct SubmitRequest {
    pub protocol_version: u32,
    /// Shown in logs and summaries (the component's file or crate name).
    pub name: String,
    pub component: Vec<u8>,
    pub args: Vec<String>,
    /// `--conf` settings for this application, already validated by the submitter.
    pub conf: Vec<(String, String)>,
    /// The tenant's API token, where the cluster has tenants.
    pub token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum SubmitEvent {
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
    /// `done` of `total` partitions of `stage` have succeeded.
    StageProgress {
        stage: StageId,
        done: u32,
        total: u32,
    },
    Finished(Result<AppSummary, Vec<String>>),
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
    use super::*;

    #[test]
    fn frame_roundtrip() {
        let msg = FromExecutor::Heartbeat { running: 3 };
        let frame = encode_frame(&msg);
        let len = frame_len(frame[..4].try_into().unwrap(), MAX_FRAME).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: FromExecutor = decode_body(&frame[4..]).unwrap();
        assert!(matches!(back, FromExecutor::Heartbeat { running: 3 }));
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
}
