//! Scheduler events: what the driver's event log holds (one JSON object per line) and what
//! the web UI is folded from, live or replayed by `flint history`.
//!
//! Times are milliseconds since the Unix epoch. An event carries everything a reader
//! needs, so a log can be replayed alone.

use crate::ids::{ExecutorId, JobId, StageId, TaskAttemptId};
use crate::wire::{GuestOutput, TaskMetrics};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageInfo {
    pub index: u32,
    /// Stages whose shuffle output this one reads.
    pub parents: Vec<u32>,
    pub partitions: u32,
    /// The fused pipeline, e.g. `text_file → flat_map → map → reduce_by_key (write)`.
    pub name: String,
    /// Whether it ends in a shuffle write (a map stage) rather than the action.
    pub shuffle_write: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskOutcome {
    Succeeded,
    Failed {
        /// `Guest`, `Trap`, `Limit`, `BadModule`, `Io`.
        kind: String,
        /// Outermost first, root cause last.
        chain: Vec<String>,
    },
    FetchFailed {
        from: ExecutorId,
        chain: Vec<String>,
    },
    Killed {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    ExecutorAdded {
        at_ms: u64,
        executor: ExecutorId,
        addr: String,
        cores: u32,
        /// Where its Prometheus metrics are served, when it serves them.
        metrics_addr: Option<String>,
    },
    ExecutorRemoved {
        at_ms: u64,
        executor: ExecutorId,
        /// `lost: ...`, `disconnected`, `decommissioned`.
        reason: String,
    },
    ExecutorDecommissioning {
        at_ms: u64,
        executor: ExecutorId,
    },
    ExecutorExcluded {
        at_ms: u64,
        executor: ExecutorId,
        job: JobId,
        stage: Option<u32>,
        reason: String,
    },
    JobStarted {
        at_ms: u64,
        job: JobId,
        app: u64,
        /// The component's name.
        name: String,
        /// `collect`, `count`, `save_as_text`...
        action: String,
        tenant: String,
        stages: Vec<StageInfo>,
    },
    TaskStarted {
        at_ms: u64,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        speculative: bool,
    },
    TaskEnded {
        at_ms: u64,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        outcome: TaskOutcome,
        metrics: TaskMetrics,
        /// The tails of what the guest printed.
        #[serde(default)]
        output: GuestOutput,
    },
    /// A stage's parents are done: its tasks may run. Again after lost input (`attempt`).
    StageStarted {
        at_ms: u64,
        stage: StageId,
        attempt: u32,
    },
    /// A stage finished; for a map stage, the bytes of map output the driver tracks for
    /// it (one registered output per partition).
    StageCompleted {
        at_ms: u64,
        stage: StageId,
        map_output_bytes: Option<u64>,
    },
    JobEnded {
        at_ms: u64,
        job: JobId,
        succeeded: bool,
        error: Vec<String>,
    },
    /// Adaptive execution changed the job's stages at a stage boundary: `stages` is the
    /// whole new list, `changes` says what changed and why.
    StagesReplanned {
        at_ms: u64,
        job: JobId,
        stages: Vec<StageInfo>,
        changes: Vec<String>,
    },
}

impl Event {
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::ExecutorAdded { at_ms, .. }
            | Event::ExecutorRemoved { at_ms, .. }
            | Event::ExecutorDecommissioning { at_ms, .. }
            | Event::ExecutorExcluded { at_ms, .. }
            | Event::JobStarted { at_ms, .. }
            | Event::TaskStarted { at_ms, .. }
            | Event::TaskEnded { at_ms, .. }
            | Event::StageStarted { at_ms, .. }
            | Event::StageCompleted { at_ms, .. }
            | Event::JobEnded { at_ms, .. }
            | Event::StagesReplanned { at_ms, .. } => *at_ms,
        }
    }

    /// The job an event belongs to, if any (executor events belong to none).
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::JobStarted { job, .. }
            | Event::JobEnded { job, .. }
            | Event::ExecutorExcluded { job, .. }
            | Event::StagesReplanned { job, .. } => Some(*job),
            Event::TaskStarted { attempt, .. } | Event::TaskEnded { attempt, .. } => {
                Some(attempt.task.stage.job)
            }
            Event::StageCompleted { stage, .. } | Event::StageStarted { stage, .. } => {
                Some(stage.job)
            }
            _ => None,
        }
    }
}
