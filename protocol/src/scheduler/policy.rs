//! What the scheduler is told to do on failures and how to share: the cluster's settings,
//! each job's failure policy, and the pools (tenants) whose shares FAIR scheduling keeps.

/// Cluster-wide settings.
#[derive(Clone, Debug)]
pub struct SchedulerConf {
    /// Silence after which an executor is declared lost.
    pub executor_timeout_ms: u64,
    /// FAIR between pools (tenants), FIFO inside each; `false`: FIFO over all jobs.
    pub fair: bool,
}

impl Default for SchedulerConf {
    fn default() -> Self {
        SchedulerConf {
            executor_timeout_ms: 120_000,
            fair: true,
        }
    }
}

/// A tenant's share of the cluster: Spark's scheduler pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    pub weight: u32,
    /// Slots served before any weight counts.
    pub min_share: u32,
    /// Concurrent tasks at most.
    pub max_slots: Option<u32>,
}

impl Pool {
    /// The one pool of FIFO scheduling, and a job's pool when none is named.
    pub const DEFAULT: Pool = Pool {
        name: String::new(),
        weight: 1,
        min_share: 0,
        max_slots: None,
    };
}

impl Default for Pool {
    fn default() -> Self {
        Pool::DEFAULT
    }
}

/// Speculative execution (Spark's `spark.speculation.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Speculation {
    /// A task is slow when it has run longer than this many times the median.
    pub multiplier: f64,
    /// Fraction of a stage's tasks that must have finished before any is speculated.
    pub quantile: f64,
    /// Never speculate a task that has run less than this.
    pub min_runtime_ms: u64,
}

impl Default for Speculation {
    fn default() -> Self {
        Speculation {
            multiplier: 3.0,
            quantile: 0.9,
            min_runtime_ms: 100,
        }
    }
}

/// Exclude-on-failure thresholds (Spark's `spark.excludeOnFailure.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Exclusion {
    /// Different tasks of one stage failed on an executor before it is excluded for that
    /// stage.
    pub max_failed_tasks_per_stage: u32,
    /// Task failures of one job on an executor before it is excluded for the job.
    pub max_failed_tasks_per_job: u32,
}

impl Default for Exclusion {
    fn default() -> Self {
        Exclusion {
            max_failed_tasks_per_stage: 2,
            max_failed_tasks_per_job: 4,
        }
    }
}

/// Per-job failure policy, from the application's settings.
#[derive(Clone, Debug)]
pub struct JobPolicy {
    pub max_task_failures: u32,
    pub max_stage_attempts: u32,
    pub speculation: Option<Speculation>,
    pub exclusion: Option<Exclusion>,
    /// How long a job may wait while no executor can take its tasks.
    pub executor_wait_timeout_ms: u64,
    /// An attempt without a status for this long is given up on the driver's side (the
    /// executor stops it at `task.deadline`; this catches one that never reports).
    pub attempt_timeout_ms: Option<u64>,
    /// The pool (tenant) whose share the job's tasks use.
    pub pool: Pool,
    /// A join side whose map output is at most this many bytes is broadcast (its stage
    /// becomes a broadcast hash join, see `JobDag::broadcast_join`); 0: never.
    pub broadcast_threshold: u64,
    /// What a reduce task reads at most once consecutive small shuffle partitions are
    /// read together (see `JobDag::plan_reads`); 0: never.
    pub coalesce_target: u64,
    /// When a join's partition is split between tasks (see `JobDag::plan_reads`).
    pub skew: Option<crate::dag::Skew>,
}

impl Default for JobPolicy {
    fn default() -> Self {
        JobPolicy {
            max_task_failures: 4,
            max_stage_attempts: 4,
            speculation: None,
            exclusion: None,
            executor_wait_timeout_ms: 60_000,
            attempt_timeout_ms: None,
            pool: Pool::default(),
            broadcast_threshold: 0,
            coalesce_target: 0,
            skew: None,
        }
    }
}

/// Why a job failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    pub message: String,
    /// The error chain of the task failure that ended the job (first and last errors).
    pub causes: Vec<String>,
    /// The limit (its setting) whose hit ended the job, when one did.
    pub limit: Option<String>,
}

/// Why an attempt failed, as the executor reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    /// Outermost message first, root cause last.
    pub chain: Vec<String>,
    /// Whether retrying can help. A deterministic failure (the component does not load,
    /// a size limit) ends the job at once instead of being retried.
    pub retryable: bool,
    /// The limit the attempt hit, if that is why it failed (its setting).
    pub limit: Option<String>,
}
