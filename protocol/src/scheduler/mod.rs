//! The driver's scheduling brain as a pure state machine. Its concerns, one module each:
//! - [`stages`]: the DAG scheduler: stage barriers, stage attempts after fetch failures,
//!   lost map outputs recomputed, jobs ending;
//! - [`tasks`]: the task scheduler: filling executor slots from FAIR pools, task
//!   failures and retries, speculation, exclusion;
//! - [`map_outputs`]: the map-output tracker, and where cached partitions are kept;
//! - [`executors`]: the executor registry: slots, liveness, decommissioning, and the one
//!   path by which an executor is removed;
//! - [`policy`]: settings and per-job policies.
//!
//! The driver feeds it events (`submit_job`, `executor_added`, `task_succeeded`, ...) and
//! drains [`Command`]s (`Launch`, `KillTask`, `CommitTask`, `RemoveExecutor`, ...) with
//! [`Scheduler::poll_command`]. Time only enters through [`Scheduler::set_time`] and
//! [`Scheduler::tick`], so every transition is unit-testable without sockets or clocks.
//! It is the only place that knows which executors are alive and where data lives; the
//! driver's IO shell carries its decisions out and keeps no copies.
//!
//! The failure semantics follow Spark's, stricter where Spark is vague:
//! - a task failure (the guest's error, a trap, a limit) is retried on another executor
//!   when one exists, up to [`JobPolicy::max_task_failures`] attempts; a deterministic
//!   one ([`TaskFailure::retryable`] false) ends the job at once;
//! - a fetch failure is not a task failure: the map outputs of the executor that could not
//!   serve are unregistered, only the lost map tasks run again, and the reading stage
//!   resumes; a stage that keeps losing its input fails after
//!   [`JobPolicy::max_stage_attempts`] consecutive attempts;
//! - a lost or decommissioned executor's running attempts run again elsewhere and are not
//!   counted as failures;
//! - a successful task is committed once, whatever the number of attempts that finished;
//! - a status counts only from the executor its attempt was launched on, while that
//!   attempt runs there ([`Scheduler::accepts_status`]).

pub mod executors;
pub mod map_outputs;
pub mod policy;
pub mod stages;
pub mod tasks;
#[cfg(test)]
mod tests;

pub use executors::{ExecutorLoad, ExecutorRemoval};
pub use map_outputs::{
    CachedPartitions, MapLocation, MapOutputStatus, MapOutputTracker, MapStatus,
};
pub use policy::{Exclusion, JobFailure, JobPolicy, Pool, SchedulerConf, Speculation, TaskFailure};

use crate::ids::{ExecutorId, JobId, StageId, TaskAttemptId, TaskId};
use executors::Executor;
use stages::Job;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Run `attempt` on `executor`. A shuffle-reading task's map outputs are all known
    /// when it is launched; the driver names the shuffles and their
    /// [`MapOutputTracker::version`], not the segments (see [`Scheduler::task_inputs`]).
    /// `speculative`: a copy of a task that is still running elsewhere.
    Launch {
        attempt: TaskAttemptId,
        executor: ExecutorId,
        speculative: bool,
    },
    /// Stop `attempt`: another attempt of its task won, or its job ended. The executor
    /// answers with a status (killed, or whatever the attempt got to first).
    KillTask {
        attempt: TaskAttemptId,
        executor: ExecutorId,
    },
    /// `attempt` is the one successful attempt of its task whose output counts: commit it.
    CommitTask {
        attempt: TaskAttemptId,
    },
    JobSucceeded {
        job: JobId,
    },
    JobFailed {
        job: JobId,
        error: JobFailure,
    },
    /// Executors may delete the job's shuffle files.
    CleanJob {
        job: JobId,
    },
    /// `stage` can run now (its parents are done); `attempt` counts its restarts after
    /// lost input.
    StageStarted {
        stage: StageId,
        attempt: u32,
    },
    /// Every task of `stage` has succeeded. For a map stage, `map_output_bytes` is the
    /// total size of the map outputs now registered for it.
    StageCompleted {
        stage: StageId,
        map_output_bytes: Option<u64>,
    },
    /// Adaptive execution changed the job's stages at a stage boundary (`changes` says
    /// how); `dag` is the DAG from now on.
    Replanned {
        job: JobId,
        dag: Box<crate::dag::JobDag>,
        changes: Vec<String>,
    },
    /// `executor` gets no more tasks of `job` (of its stage `stage`, or of the whole job).
    ExecutorExcluded {
        executor: ExecutorId,
        job: JobId,
        stage: Option<u32>,
        reason: String,
    },
    /// The executor is no longer part of the cluster: close its connection. Its work has
    /// been rescheduled already.
    RemoveExecutor {
        executor: ExecutorId,
        reason: ExecutorRemoval,
    },
}

#[derive(Debug, Default)]
pub struct Scheduler {
    conf: SchedulerConf,
    now_ms: u64,
    executors: BTreeMap<ExecutorId, Executor>,
    /// The executors with a free slot, least loaded first: `(load, id)` (see
    /// [`Scheduler::with_executor`], the one place that changes it).
    free: BTreeSet<(usize, ExecutorId)>,
    /// Attempts running per job, over every executor (for the pools' shares).
    running_per_job: BTreeMap<JobId, u32>,
    jobs: BTreeMap<JobId, Job>,
    /// Tasks ready to launch, in (job, stage, partition) order: FIFO between jobs.
    pending: BTreeSet<TaskId>,
    /// Slow tasks that deserve a copy when a slot is free (after every pending task).
    speculatable: BTreeSet<TaskId>,
    map_outputs: MapOutputTracker,
    cached: CachedPartitions,
    commands: VecDeque<Command>,
}

impl Scheduler {
    pub fn new(conf: SchedulerConf) -> Self {
        Scheduler {
            conf,
            ..Default::default()
        }
    }

    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    pub fn map_outputs(&self) -> &MapOutputTracker {
        &self.map_outputs
    }

    pub fn cached_partitions(&self) -> &CachedPartitions {
        &self.cached
    }

    /// The driver's clock, in ms since it started; events that follow happen at `now_ms`.
    pub fn set_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Time passes: removes silent executors, gives up on attempts that never report,
    /// fails jobs that waited too long for any executor, and finds tasks worth
    /// speculating.
    pub fn tick(&mut self, now_ms: u64) {
        self.set_time(now_ms);
        self.remove_silent_executors();
        self.give_up_on_silent_attempts();
        self.check_starved_jobs();
        self.find_speculatable();
        self.schedule();
    }

    pub fn stage_def(&self, stage: StageId) -> Option<&crate::dag::StageDef> {
        self.jobs
            .get(&stage.job)
            .and_then(|j| j.dag.stages.get(stage.index as usize))
    }

    /// Whether a status about `attempt` from `executor` counts: the attempt was launched
    /// there and has not ended. Anything else (another executor's attempt, one that never
    /// existed, one already ended) must be ignored by the caller, before it acts on it.
    pub fn accepts_status(&self, attempt: TaskAttemptId, executor: ExecutorId) -> bool {
        self.executors
            .get(&executor)
            .is_some_and(|e| e.running.contains(&attempt))
    }
}

/// `1500` → `1.5s`, `200` → `200ms`.
pub fn fmt_ms(ms: u64) -> String {
    if ms >= 1000 && ms.is_multiple_of(100) {
        let s = ms as f64 / 1000.0;
        format!("{s}s")
    } else {
        format!("{ms}ms")
    }
}
