//! The driver's scheduling brain as a pure state machine: DAG scheduler (stage barriers,
//! stage attempts after fetch failures), task scheduler (filling executor slots,
//! speculation, exclusion) and map-output tracker in one place.
//!
//! The driver feeds it events (`submit_job`, `executor_added`, `task_succeeded`, ...) and
//! drains [`Command`]s (`Launch`, `KillTask`, `CommitTask`, `JobSucceeded`, ...) with
//! [`Scheduler::poll_command`]. Time only enters through [`Scheduler::set_time`] and
//! [`Scheduler::tick`], so every transition is unit-testable without sockets or clocks.
//!
//! The failure semantics follow Spark's, stricter where Spark is vague:
//! - a task failure (the guest's error, a trap, a limit) is retried on another executor
//!   when one exists, up to [`JobPolicy::max_task_failures`] attempts;
//! - a fetch failure is not a task failure: the map outputs of the executor that could not
//!   serve are unregistered, only the lost map tasks run again, and the reading stage
//!   resumes; a stage that keeps losing its input fails after
//!   [`JobPolicy::max_stage_attempts`] consecutive attempts;
//! - a lost or decommissioned executor's running attempts run again elsewhere and are not
//!   counted as failures;
//! - a successful task is committed once, whatever the number of attempts that finished.

use crate::dag::{JobDag, StageInput, StageOutput};
use crate::ids::{ExecutorId, JobId, ShuffleId, StageId, TaskAttemptId, TaskId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where one map task's output lives and how big each reduce partition's segment is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapStatus {
    pub executor: ExecutorId,
    /// Bytes per reduce partition.
    pub sizes: Vec<u64>,
}

/// One segment a reduce task must fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLocation {
    pub shuffle: ShuffleId,
    /// The reduce partition whose segment this is.
    pub reduce: u32,
    pub map_partition: u32,
    pub executor: ExecutorId,
    pub size: u64,
}

/// Map outputs per (job, shuffle): the `MapOutputTracker` of Spark.
#[derive(Debug, Default)]
pub struct MapOutputTracker {
    outputs: BTreeMap<(JobId, ShuffleId), Vec<Option<MapStatus>>>,
}

impl MapOutputTracker {
    fn register_shuffle(&mut self, job: JobId, shuffle: ShuffleId, map_partitions: u32) {
        self.outputs
            .insert((job, shuffle), vec![None; map_partitions as usize]);
    }

    fn register(&mut self, job: JobId, shuffle: ShuffleId, map: u32, status: MapStatus) {
        if let Some(slot) = self
            .outputs
            .get_mut(&(job, shuffle))
            .and_then(|v| v.get_mut(map as usize))
        {
            *slot = Some(status);
        }
    }

    /// Forgets every output held by `executor`; returns the (job, shuffle, map) triples lost.
    fn remove_executor(&mut self, executor: ExecutorId) -> Vec<(JobId, ShuffleId, u32)> {
        let mut lost = Vec::new();
        for ((job, shuffle), maps) in &mut self.outputs {
            for (i, slot) in maps.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|s| s.executor == executor) {
                    *slot = None;
                    lost.push((*job, *shuffle, i as u32));
                }
            }
        }
        lost
    }

    /// The segments of `reduce` partition, or `None` while any map output is missing.
    pub fn locations(
        &self,
        job: JobId,
        shuffle: ShuffleId,
        reduce: u32,
    ) -> Option<Vec<MapLocation>> {
        let maps = self.outputs.get(&(job, shuffle))?;
        let mut out = Vec::new();
        for (i, slot) in maps.iter().enumerate() {
            let status = slot.as_ref()?;
            let size = status.sizes.get(reduce as usize).copied().unwrap_or(0);
            if size > 0 {
                out.push(MapLocation {
                    shuffle,
                    reduce,
                    map_partition: i as u32,
                    executor: status.executor,
                    size,
                });
            }
        }
        Some(out)
    }

    /// Per map partition, where its output lives (for reporting).
    pub fn statuses(&self, job: JobId, shuffle: ShuffleId) -> Option<&[Option<MapStatus>]> {
        self.outputs.get(&(job, shuffle)).map(|v| v.as_slice())
    }

    fn remove_job(&mut self, job: JobId) {
        self.outputs.retain(|(j, _), _| *j != job);
    }
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run `attempt` on `executor`; for a shuffle-reading stage, `inputs` lists the
    /// segments to fetch. `speculative`: a copy of a task that is still running elsewhere.
    Launch {
        attempt: TaskAttemptId,
        executor: ExecutorId,
        inputs: Vec<MapLocation>,
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
    /// `executor` gets no more tasks of `job` (of its stage `stage`, or of the whole job).
    ExecutorExcluded {
        executor: ExecutorId,
        job: JobId,
        stage: Option<u32>,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    pub message: String,
    /// The error chain of the task failure that ended the job (first and last errors).
    pub causes: Vec<String>,
}

/// Why an attempt failed, as the executor reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    /// Outermost message first, root cause last.
    pub chain: Vec<String>,
    /// Whether retrying can help; a guest's deterministic error would fail again, but
    /// Spark retries them anyway, so this only shortens the wait for the error.
    pub retryable: bool,
}

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

impl Default for Pool {
    fn default() -> Self {
        Pool {
            name: String::new(),
            weight: 1,
            min_share: 0,
            max_slots: None,
        }
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
    /// The pool (tenant) whose share the job's tasks use.
    pub pool: Pool,
}

impl Default for JobPolicy {
    fn default() -> Self {
        JobPolicy {
            max_task_failures: 4,
            max_stage_attempts: 4,
            speculation: None,
            exclusion: None,
            executor_wait_timeout_ms: 60_000,
            pool: Pool::default(),
        }
    }
}

#[derive(Debug)]
struct Executor {
    cores: u32,
    running: BTreeSet<TaskAttemptId>,
    last_heartbeat_ms: u64,
    tasks_succeeded: u64,
    tasks_failed: u64,
    /// Shutting down gracefully: no new tasks.
    decommissioning: bool,
}

impl Executor {
    fn has_free_slot(&self) -> bool {
        !self.decommissioning && (self.running.len() as u32) < self.cores
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageStatus {
    /// Parents not done yet.
    Waiting,
    Running,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct RunningAttempt {
    executor: ExecutorId,
    started_ms: u64,
    /// The stage attempt it was launched in (fetch failures of older ones count once).
    stage_attempt: u32,
}

#[derive(Debug, Default)]
struct TaskState {
    next_attempt: u32,
    running: BTreeMap<u32, RunningAttempt>,
    done: bool,
    failures: Vec<Vec<String>>,
    /// Executors to avoid for this task when another one exists.
    failed_on: BTreeSet<ExecutorId>,
}

#[derive(Debug)]
struct Stage {
    status: StageStatus,
    tasks: Vec<TaskState>,
    /// Current attempt of the stage; bumped by each fetch failure that restarts it.
    attempt: u32,
    /// Attempts since the stage last completed that ended in a fetch failure.
    failed_attempts: u32,
    /// Run times of successful attempts, for speculation.
    durations: Vec<u64>,
    /// Per executor, the partitions that failed on it.
    failed_tasks_on: BTreeMap<ExecutorId, BTreeSet<u32>>,
    excluded: BTreeMap<ExecutorId, String>,
}

impl Stage {
    fn all_done(&self) -> bool {
        self.tasks.iter().all(|t| t.done)
    }
}

#[derive(Debug)]
struct Job {
    dag: JobDag,
    stages: Vec<Stage>,
    policy: JobPolicy,
    failures_on: BTreeMap<ExecutorId, u32>,
    excluded: BTreeMap<ExecutorId, String>,
    /// Since when no executor could take any of its ready tasks.
    starved_since: Option<u64>,
}

impl Job {
    /// Whether some stage reading `stage`'s output, directly or not, has yet to finish.
    fn downstream_unfinished(&self, stage: usize) -> bool {
        self.dag.stages.iter().enumerate().any(|(i, s)| {
            s.parents.contains(&(stage as u32))
                && (self.stages[i].status != StageStatus::Done || self.downstream_unfinished(i))
        })
    }

    fn eligible(&self, stage: usize, executor: ExecutorId) -> bool {
        !self.excluded.contains_key(&executor)
            && !self.stages[stage].excluded.contains_key(&executor)
    }
}

/// Read-only view of an executor's load, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorLoad {
    pub id: ExecutorId,
    pub cores: u32,
    pub running: usize,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub decommissioning: bool,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    conf: SchedulerConf,
    now_ms: u64,
    executors: BTreeMap<ExecutorId, Executor>,
    jobs: BTreeMap<JobId, Job>,
    /// Tasks ready to launch, in (job, stage, partition) order: FIFO between jobs.
    pending: BTreeSet<TaskId>,
    /// Slow tasks that deserve a copy when a slot is free (after every pending task).
    speculatable: BTreeSet<TaskId>,
    map_outputs: MapOutputTracker,
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

    /// The driver's clock, in ms since it started; events that follow happen at `now_ms`.
    pub fn set_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    pub fn executors(&self) -> Vec<ExecutorLoad> {
        self.executors
            .iter()
            .map(|(id, e)| ExecutorLoad {
                id: *id,
                cores: e.cores,
                running: e.running.len(),
                tasks_succeeded: e.tasks_succeeded,
                tasks_failed: e.tasks_failed,
                decommissioning: e.decommissioning,
            })
            .collect()
    }

    /// Slots of executors that take tasks.
    pub fn total_cores(&self) -> u32 {
        self.executors
            .values()
            .filter(|e| !e.decommissioning)
            .map(|e| e.cores)
            .sum()
    }

    pub fn stage_def(&self, stage: StageId) -> Option<&crate::dag::StageDef> {
        self.jobs
            .get(&stage.job)
            .and_then(|j| j.dag.stages.get(stage.index as usize))
    }

    /// Executors excluded for `job` or one of its stages, with the reason.
    pub fn exclusions(&self, job: JobId) -> Vec<(ExecutorId, Option<u32>, String)> {
        let Some(j) = self.jobs.get(&job) else {
            return Vec::new();
        };
        let mut v: Vec<_> = j
            .excluded
            .iter()
            .map(|(e, r)| (*e, None, r.clone()))
            .collect();
        for (i, s) in j.stages.iter().enumerate() {
            v.extend(
                s.excluded
                    .iter()
                    .map(|(e, r)| (*e, Some(i as u32), r.clone())),
            );
        }
        v
    }

    pub fn executor_added(&mut self, id: ExecutorId, cores: u32, now_ms: u64) {
        self.set_time(now_ms);
        self.executors.insert(
            id,
            Executor {
                cores: cores.max(1),
                running: BTreeSet::new(),
                last_heartbeat_ms: now_ms,
                tasks_succeeded: 0,
                tasks_failed: 0,
                decommissioning: false,
            },
        );
        self.schedule();
    }

    pub fn heartbeat(&mut self, id: ExecutorId, now_ms: u64) {
        self.set_time(now_ms);
        if let Some(e) = self.executors.get_mut(&id) {
            e.last_heartbeat_ms = now_ms;
        }
    }

    pub fn is_registered(&self, id: ExecutorId) -> bool {
        self.executors.contains_key(&id)
    }

    /// Time passes: declares silent executors lost (returned), fails jobs that waited too
    /// long for any executor, and finds tasks worth speculating.
    pub fn tick(&mut self, now_ms: u64) -> Vec<ExecutorId> {
        self.set_time(now_ms);
        let timeout = self.conf.executor_timeout_ms;
        let silent: Vec<ExecutorId> = self
            .executors
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.last_heartbeat_ms) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &silent {
            self.executor_lost(*id);
        }
        self.check_starved_jobs();
        self.find_speculatable();
        self.schedule();
        silent
    }

    /// The executor is shutting down gracefully: it gets no new tasks; what it still runs
    /// either finishes or comes back killed, and neither counts as a failure.
    pub fn executor_decommissioning(&mut self, id: ExecutorId) {
        if let Some(e) = self.executors.get_mut(&id) {
            e.decommissioning = true;
        }
        self.schedule();
    }

    /// The executor is gone: its running attempts go back to pending (not counted as
    /// failures), its map outputs are forgotten and the stages that made them run again.
    pub fn executor_lost(&mut self, id: ExecutorId) {
        let Some(exec) = self.executors.remove(&id) else {
            return;
        };
        for attempt in exec.running {
            self.forget_attempt(attempt);
        }
        self.unregister_outputs(id);
        self.schedule();
    }

    /// Drops a running attempt that will never report; its task runs again if no other
    /// attempt is running.
    fn forget_attempt(&mut self, attempt: TaskAttemptId) {
        let Some(job) = self.jobs.get_mut(&attempt.task.stage.job) else {
            return;
        };
        let Some(stage) = job.stages.get_mut(attempt.task.stage.index as usize) else {
            return;
        };
        let running_stage = stage.status == StageStatus::Running;
        let Some(task) = stage.tasks.get_mut(attempt.task.partition as usize) else {
            return;
        };
        task.running.remove(&attempt.attempt);
        if !task.done && task.running.is_empty() && running_stage {
            self.pending.insert(attempt.task);
        }
    }

    /// Forgets `executor`'s map outputs. Map tasks whose output a stage still to finish
    /// needs (directly or through another stage) run again, elsewhere if possible, and
    /// every stage downstream of them waits.
    fn unregister_outputs(&mut self, executor: ExecutorId) {
        let mut touched = BTreeSet::new();
        for (job_id, shuffle, map) in self.map_outputs.remove_executor(executor) {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(writer) = job.dag.stages.iter().position(|s| {
                matches!(s.output, StageOutput::ShuffleWrite { shuffle: sh, .. } if sh == shuffle)
            }) else {
                continue;
            };
            if !job.downstream_unfinished(writer) {
                continue;
            }
            let task = &mut job.stages[writer].tasks[map as usize];
            task.done = false;
            task.failed_on.insert(executor);
            touched.insert(job_id);
        }
        for job in touched {
            self.advance_stages(job);
        }
    }

    pub fn submit_job(&mut self, job: JobId, dag: JobDag, policy: JobPolicy) {
        self.submit_job_with(job, dag, policy, Vec::new());
    }

    /// [`submit_job`](Self::submit_job), with map outputs that already exist: the
    /// partitions of cached datasets kept by earlier jobs, as `(shuffle, map, status)`.
    /// Their tasks count as done; a stage none of whose output is missing does not run,
    /// nor do the stages that would only feed it.
    pub fn submit_job_with(
        &mut self,
        job: JobId,
        dag: JobDag,
        policy: JobPolicy,
        known: Vec<(ShuffleId, u32, MapStatus)>,
    ) {
        let mut stages: Vec<Stage> = dag
            .stages
            .iter()
            .map(|s| Stage {
                status: StageStatus::Waiting,
                tasks: (0..s.partitions).map(|_| TaskState::default()).collect(),
                attempt: 0,
                failed_attempts: 0,
                durations: Vec::new(),
                failed_tasks_on: BTreeMap::new(),
                excluded: BTreeMap::new(),
            })
            .collect();
        for s in &dag.stages {
            if let StageOutput::ShuffleWrite { shuffle, .. } = s.output {
                self.map_outputs
                    .register_shuffle(job, shuffle, s.partitions);
            }
        }
        for (shuffle, map, status) in known {
            let Some(writer) = dag.stages.iter().position(|s| {
                matches!(s.output, StageOutput::ShuffleWrite { shuffle: sh, .. } if sh == shuffle)
            }) else {
                continue;
            };
            if !self.executors.contains_key(&status.executor) {
                continue;
            }
            if let Some(task) = stages[writer].tasks.get_mut(map as usize) {
                task.done = true;
                self.map_outputs.register(job, shuffle, map, status);
            }
        }
        self.jobs.insert(
            job,
            Job {
                dag,
                stages,
                policy,
                failures_on: BTreeMap::new(),
                excluded: BTreeMap::new(),
                starved_since: None,
            },
        );
        self.advance_stages(job);
        self.schedule();
    }

    /// Stops a job: pending tasks are dropped and running attempts are killed.
    pub fn cancel_job(&mut self, job: JobId) {
        let Some(j) = self.jobs.remove(&job) else {
            return;
        };
        self.pending.retain(|t| t.stage.job != job);
        self.speculatable.retain(|t| t.stage.job != job);
        self.map_outputs.remove_job(job);
        drop(j);
        for (id, e) in &self.executors {
            for attempt in e.running.iter().filter(|a| a.task.stage.job == job) {
                self.commands.push_back(Command::KillTask {
                    attempt: *attempt,
                    executor: *id,
                });
            }
        }
        self.commands.push_back(Command::CleanJob { job });
    }

    pub fn task_succeeded(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        map_sizes: Option<Vec<u64>>,
    ) {
        let now = self.now_ms;
        if let Some(e) = self.executors.get_mut(&executor) {
            e.running.remove(&attempt);
            e.tasks_succeeded += 1;
        }
        let job_id = attempt.task.stage.job;
        let registered = self.executors.contains_key(&executor);
        let Some(job) = self.jobs.get_mut(&job_id) else {
            self.schedule();
            return;
        };
        let stage_index = attempt.task.stage.index as usize;
        let Some(stage) = job.stages.get_mut(stage_index) else {
            return;
        };
        let Some(task) = stage.tasks.get_mut(attempt.task.partition as usize) else {
            return;
        };
        let Some(run) = task.running.remove(&attempt.attempt) else {
            // Not an attempt we wait for (its executor was declared lost meanwhile).
            self.schedule();
            return;
        };
        let output = &job.dag.stages[stage_index].output;
        if task.done || (!registered && matches!(output, StageOutput::ShuffleWrite { .. })) {
            // A duplicate (an older attempt that finished late), or map output on an
            // executor that is gone: it never counts.
            self.schedule();
            return;
        }
        task.done = true;
        stage.durations.push(now.saturating_sub(run.started_ms));
        // The race is won: the other attempts of this task are cancelled.
        for (n, other) in &task.running {
            self.commands.push_back(Command::KillTask {
                attempt: TaskAttemptId {
                    task: attempt.task,
                    attempt: *n,
                },
                executor: other.executor,
            });
        }
        self.speculatable.remove(&attempt.task);
        self.commands.push_back(Command::CommitTask { attempt });
        if let StageOutput::ShuffleWrite {
            shuffle,
            partitions,
            ..
        } = *output
        {
            let mut sizes = map_sizes.unwrap_or_default();
            sizes.resize(partitions as usize, 0);
            self.map_outputs.register(
                job_id,
                shuffle,
                attempt.task.partition,
                MapStatus { executor, sizes },
            );
        }
        self.advance_stages(job_id);
        self.schedule();
    }

    /// The executor stopped `attempt` as asked (or handed it back while shutting down):
    /// not a failure; the task runs again if nothing else runs it.
    pub fn task_killed(&mut self, attempt: TaskAttemptId, executor: ExecutorId) {
        if let Some(e) = self.executors.get_mut(&executor) {
            e.running.remove(&attempt);
        }
        self.forget_attempt(attempt);
        self.schedule();
    }

    pub fn task_failed(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        failure: TaskFailure,
    ) {
        if let Some(e) = self.executors.get_mut(&executor) {
            e.running.remove(&attempt);
            e.tasks_failed += 1;
        }
        let job_id = attempt.task.stage.job;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            self.schedule();
            return;
        };
        let max = job.policy.max_task_failures;
        let stage_index = attempt.task.stage.index as usize;
        let Some(stage) = job.stages.get_mut(stage_index) else {
            return;
        };
        let running_stage = stage.status == StageStatus::Running;
        let Some(task) = stage.tasks.get_mut(attempt.task.partition as usize) else {
            return;
        };
        if task.running.remove(&attempt.attempt).is_none() || task.done {
            self.schedule();
            return;
        }
        task.failures.push(failure.chain);
        task.failed_on.insert(executor);
        let failures = task.failures.len() as u32;
        let retry = task.running.is_empty() && running_stage;
        if failures >= max || !failure.retryable {
            let first = task.failures.first().cloned().unwrap_or_default();
            let last = task.failures.last().cloned().unwrap_or_default();
            let mut causes = Vec::new();
            if failures > 1 {
                causes.push(format!("first failure: {}", first.join(": ")));
                causes.push(format!("last failure: {}", last.join(": ")));
            } else {
                causes = last;
            }
            let message = if failure.retryable {
                format!(
                    "{} failed {failures} times (task.max_failures = {max})",
                    attempt.task
                )
            } else {
                format!("{} failed", attempt.task)
            };
            self.fail_job(job_id, JobFailure { message, causes });
            self.schedule();
            return;
        }
        if retry {
            self.pending.insert(attempt.task);
        }
        self.count_failure_for_exclusion(attempt, executor);
        self.schedule();
    }

    /// Exclude-on-failure bookkeeping for one failed attempt.
    fn count_failure_for_exclusion(&mut self, attempt: TaskAttemptId, executor: ExecutorId) {
        let job_id = attempt.task.stage.job;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(rules) = job.policy.exclusion.clone() else {
            return;
        };
        let si = attempt.task.stage.index as usize;
        let stage = &mut job.stages[si];
        let failed = stage.failed_tasks_on.entry(executor).or_default();
        failed.insert(attempt.task.partition);
        let distinct = failed.len() as u32;
        if distinct >= rules.max_failed_tasks_per_stage && !stage.excluded.contains_key(&executor) {
            let reason = format!(
                "{distinct} different tasks of {} failed on it \
                 (exclude_on_failure.stage.max_failed_tasks = {})",
                attempt.task.stage, rules.max_failed_tasks_per_stage
            );
            stage.excluded.insert(executor, reason.clone());
            self.commands.push_back(Command::ExecutorExcluded {
                executor,
                job: job_id,
                stage: Some(si as u32),
                reason,
            });
        }
        let n = job.failures_on.entry(executor).or_default();
        *n += 1;
        let n = *n;
        if n >= rules.max_failed_tasks_per_job && !job.excluded.contains_key(&executor) {
            let reason = format!(
                "{n} tasks of job {} failed on it (exclude_on_failure.job.max_failed_tasks = {})",
                job_id.0, rules.max_failed_tasks_per_job
            );
            job.excluded.insert(executor, reason.clone());
            self.commands.push_back(Command::ExecutorExcluded {
                executor,
                job: job_id,
                stage: None,
                reason,
            });
        }
    }

    /// A reduce attempt could not fetch `map_partition`'s segment from `from`. Not a task
    /// failure: `from`'s map outputs are unregistered (its files are presumed gone), the
    /// lost map tasks run again, and this task waits for them. Each stage attempt that
    /// ends this way counts once towards `max_stage_attempts`.
    pub fn task_fetch_failed(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        from: ExecutorId,
        map_partition: u32,
        chain: Vec<String>,
    ) {
        if let Some(e) = self.executors.get_mut(&executor) {
            e.running.remove(&attempt);
        }
        let job_id = attempt.task.stage.job;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            self.schedule();
            return;
        };
        let max = job.policy.max_stage_attempts;
        let Some(stage) = job.stages.get_mut(attempt.task.stage.index as usize) else {
            return;
        };
        let Some(task) = stage.tasks.get_mut(attempt.task.partition as usize) else {
            return;
        };
        let Some(run) = task.running.remove(&attempt.attempt) else {
            self.schedule();
            return;
        };
        if task.done {
            self.schedule();
            return;
        }
        if run.stage_attempt == stage.attempt {
            stage.attempt += 1;
            stage.failed_attempts += 1;
            if stage.failed_attempts >= max {
                let message = format!(
                    "{} failed {} consecutive attempts (stage.max_consecutive_attempts = {max}): \
                     shuffle output of map partition {map_partition} on executor {} could not be fetched",
                    attempt.task.stage, stage.failed_attempts, from.0
                );
                self.fail_job(
                    job_id,
                    JobFailure {
                        message,
                        causes: chain,
                    },
                );
                self.schedule();
                return;
            }
        }
        self.unregister_outputs(from);
        // The outputs may already have been unregistered and recomputed elsewhere: then
        // the stage is running and this task simply goes again.
        self.forget_attempt(attempt);
        self.schedule();
    }

    fn fail_job(&mut self, job: JobId, error: JobFailure) {
        self.cancel_job(job);
        self.commands.push_back(Command::JobFailed { job, error });
    }

    /// Brings every stage's status in line with its tasks and parents, in dependency
    /// order: all tasks done → done; parents all done → running, its idle unfinished tasks
    /// pending; otherwise waiting, with nothing pending. Ends the job when its result stage
    /// is done.
    fn advance_stages(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        // First the stages whose every output exists, whatever their parents: a stage
        // fed only by cached partitions must not make its parents run.
        for i in 0..job.stages.len() {
            let stage = &mut job.stages[i];
            if !stage.all_done() {
                continue;
            }
            if stage.status != StageStatus::Done {
                stage.failed_attempts = 0;
                let map_output_bytes = match job.dag.stages[i].output {
                    StageOutput::ShuffleWrite { shuffle, .. } => {
                        self.map_outputs.statuses(job_id, shuffle).map(|maps| {
                            maps.iter()
                                .flatten()
                                .map(|m| m.sizes.iter().sum::<u64>())
                                .sum()
                        })
                    }
                    StageOutput::Result(_) => None,
                };
                self.commands.push_back(Command::StageCompleted {
                    stage: StageId {
                        job: job_id,
                        index: i as u32,
                    },
                    map_output_bytes,
                });
            }
            stage.status = StageStatus::Done;
        }
        let last = job.stages.len().saturating_sub(1);
        for i in 0..job.stages.len() {
            if job.stages[i].all_done() {
                continue;
            }
            let parents_done = job.dag.stages[i]
                .parents
                .iter()
                .all(|p| job.stages[*p as usize].status == StageStatus::Done);
            // Needed now: the result, or the input of a stage still to finish.
            let needed = i == last
                || job
                    .dag
                    .stages
                    .iter()
                    .enumerate()
                    .any(|(c, s)| s.parents.contains(&(i as u32)) && !job.stages[c].all_done());
            let id = StageId {
                job: job_id,
                index: i as u32,
            };
            let stage = &mut job.stages[i];
            if parents_done && needed {
                if stage.status != StageStatus::Running {
                    self.commands.push_back(Command::StageStarted {
                        stage: id,
                        attempt: stage.attempt,
                    });
                }
                stage.status = StageStatus::Running;
                for (p, t) in stage.tasks.iter().enumerate() {
                    if !t.done && t.running.is_empty() {
                        self.pending.insert(TaskId {
                            stage: id,
                            partition: p as u32,
                        });
                    }
                }
            } else {
                stage.status = StageStatus::Waiting;
                self.pending.retain(|t| t.stage != id);
                self.speculatable.retain(|t| t.stage != id);
            }
        }
        if job
            .stages
            .last()
            .is_some_and(|s| s.status == StageStatus::Done)
        {
            self.jobs.remove(&job_id);
            self.pending.retain(|t| t.stage.job != job_id);
            self.speculatable.retain(|t| t.stage.job != job_id);
            self.map_outputs.remove_job(job_id);
            self.commands
                .push_back(Command::JobSucceeded { job: job_id });
            self.commands.push_back(Command::CleanJob { job: job_id });
        }
    }

    /// A job whose ready tasks no executor can take (none registered, or all shutting
    /// down) fails once it has waited `executor_wait_timeout_ms`.
    fn check_starved_jobs(&mut self) {
        let now = self.now_ms;
        let any_usable = self.executors.values().any(|e| !e.decommissioning);
        let waiting: BTreeSet<JobId> = self.pending.iter().map(|t| t.stage.job).collect();
        let mut expired = Vec::new();
        for (id, job) in &mut self.jobs {
            if any_usable || !waiting.contains(id) {
                job.starved_since = None;
                continue;
            }
            let since = *job.starved_since.get_or_insert(now);
            let limit = job.policy.executor_wait_timeout_ms;
            if now.saturating_sub(since) >= limit {
                expired.push((*id, limit));
            }
        }
        for (job, limit) in expired {
            let message = format!(
                "job {} waited {} for an executor and none could take its tasks \
                 (scheduler.executor_wait_timeout = {})",
                job.0,
                fmt_ms(limit),
                fmt_ms(limit)
            );
            let causes = vec![if self.executors.is_empty() {
                "no executor is registered with the driver".to_string()
            } else {
                "every executor is shutting down".to_string()
            }];
            self.fail_job(job, JobFailure { message, causes });
        }
    }

    /// Spark's `checkSpeculatableTasks`: once `quantile` of a running stage's tasks have
    /// succeeded, a task with one attempt running longer than `multiplier` × the median
    /// (and `min_runtime_ms`) gets a copy.
    fn find_speculatable(&mut self) {
        let now = self.now_ms;
        for (job_id, job) in &self.jobs {
            let Some(spec) = &job.policy.speculation else {
                continue;
            };
            for (si, stage) in job.stages.iter().enumerate() {
                if stage.status != StageStatus::Running {
                    continue;
                }
                let n = stage.tasks.len();
                let finished = stage.tasks.iter().filter(|t| t.done).count();
                let needed = ((spec.quantile * n as f64).floor() as usize).max(1);
                if finished < needed || finished == n || stage.durations.is_empty() {
                    continue;
                }
                let mut d = stage.durations.clone();
                d.sort_unstable();
                let median = d[d.len() / 2];
                let threshold = ((median as f64 * spec.multiplier) as u64).max(spec.min_runtime_ms);
                for (p, task) in stage.tasks.iter().enumerate() {
                    if task.done || task.running.len() != 1 {
                        continue;
                    }
                    let run = task.running.values().next().expect("one attempt");
                    if now.saturating_sub(run.started_ms) > threshold {
                        self.speculatable.insert(TaskId {
                            stage: StageId {
                                job: *job_id,
                                index: si as u32,
                            },
                            partition: p as u32,
                        });
                    }
                }
            }
        }
    }

    /// The segments a task of `task_id`'s stage reads (of every shuffle piece and side),
    /// or `None` while some are missing.
    fn inputs_of(&self, job: &Job, task_id: TaskId) -> Option<Vec<MapLocation>> {
        let stage = &job.dag.stages[task_id.stage.index as usize];
        let mut out = Vec::new();
        for piece in stage.pieces.get(task_id.partition as usize)? {
            let branch = stage.branches.get(piece.branch as usize)?;
            if let StageInput::Shuffle { shuffles, .. } = &branch.input {
                for shuffle in shuffles {
                    out.extend(self.map_outputs.locations(
                        task_id.stage.job,
                        *shuffle,
                        piece.partition,
                    )?);
                }
            }
        }
        Some(out)
    }

    /// Fills free executor slots: pending tasks in order, then speculative copies. A task
    /// that failed on an executor goes elsewhere when another executor can take it; an
    /// excluded executor never gets the stage's tasks, and a stage that every live
    /// executor is excluded from fails its job (Spark's behaviour without dynamic
    /// allocation: nothing will change by waiting).
    fn schedule(&mut self) {
        self.fail_unschedulable_stages();
        if !self.executors.values().any(Executor::has_free_slot) {
            return;
        }
        // Pending tasks per pool, each queue in (job, stage, partition) order: FIFO inside a
        // pool. In FIFO mode there is one pool. `pending` is in job order, so the pool is
        // looked up once per job, not per task.
        let mut queues: BTreeMap<String, VecDeque<TaskId>> = BTreeMap::new();
        let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
        let mut current: Option<(JobId, String)> = None;
        for task_id in self.pending.iter().copied() {
            let job_id = task_id.stage.job;
            if current.as_ref().is_none_or(|(j, _)| *j != job_id) {
                let Some(job) = self.jobs.get(&job_id) else {
                    continue;
                };
                let pool = if self.conf.fair {
                    job.policy.pool.clone()
                } else {
                    Pool::default()
                };
                let name = pool.name.clone();
                pools.entry(name.clone()).or_insert(pool);
                current = Some((job_id, name));
            }
            let (_, name) = current.as_ref().expect("set above");
            match queues.get_mut(name) {
                Some(q) => q.push_back(task_id),
                None => {
                    queues.insert(name.clone(), VecDeque::from([task_id]));
                }
            }
        }
        let mut running = self.running_per_pool();
        loop {
            if !self.executors.values().any(Executor::has_free_slot) {
                break;
            }
            // Spark's FairSchedulingAlgorithm: pools below their min share first (least
            // served first), then the lowest running-to-weight ratio.
            let next = queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(name, _)| name)
                .min_by(|a, b| {
                    let rank = |name: &String| {
                        let p = &pools[name];
                        let r = *running.get(name.as_str()).unwrap_or(&0) as f64;
                        let needy = r < p.min_share as f64;
                        let ratio = if needy {
                            r / p.min_share.max(1) as f64
                        } else {
                            r / p.weight.max(1) as f64
                        };
                        (!needy, ratio)
                    };
                    let (ra, rb) = (rank(a), rank(b));
                    ra.0.cmp(&rb.0).then(ra.1.total_cmp(&rb.1)).then(a.cmp(b))
                })
                .cloned();
            let Some(name) = next else { break };
            let queue = queues.get_mut(&name).expect("chosen from the map");
            let Some(task_id) = queue.pop_front() else {
                continue;
            };
            let at_cap = pools[&name]
                .max_slots
                .is_some_and(|m| *running.get(name.as_str()).unwrap_or(&0) >= m);
            if at_cap {
                // The pool has all the slots it may have; its tasks wait.
                queue.clear();
                continue;
            }
            if self.try_launch(task_id) {
                *running.entry(name).or_default() += 1;
            }
        }
        let wanted: Vec<TaskId> = self.speculatable.iter().copied().collect();
        for task_id in wanted {
            if !self.executors.values().any(Executor::has_free_slot) {
                break;
            }
            let Some(job) = self.jobs.get(&task_id.stage.job) else {
                self.speculatable.remove(&task_id);
                continue;
            };
            let si = task_id.stage.index as usize;
            let task = &job.stages[si].tasks[task_id.partition as usize];
            if task.done || task.running.len() != 1 {
                self.speculatable.remove(&task_id);
                continue;
            }
            let Some(inputs) = self.inputs_of(job, task_id) else {
                continue;
            };
            let Some(executor) = self.pick_executor(job, si, task) else {
                continue;
            };
            self.speculatable.remove(&task_id);
            self.launch(task_id, executor, inputs, true);
        }
    }

    /// A stage that every live executor is excluded from fails its job (Spark's behaviour
    /// without dynamic allocation: nothing will change by waiting). Judged once per stage
    /// with pending tasks, not per task.
    fn fail_unschedulable_stages(&mut self) {
        let live: Vec<ExecutorId> = self
            .executors
            .iter()
            .filter(|(_, e)| !e.decommissioning)
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            return;
        }
        let mut unschedulable: Vec<(StageId, TaskId)> = Vec::new();
        for (job_id, job) in &self.jobs {
            for si in 0..job.stages.len() {
                if job.stages[si].status != StageStatus::Running
                    || live.iter().any(|id| job.eligible(si, *id))
                {
                    continue;
                }
                let stage = StageId {
                    job: *job_id,
                    index: si as u32,
                };
                let first = TaskId {
                    stage,
                    partition: 0,
                };
                if let Some(task_id) = self.pending.range(first..).next()
                    && task_id.stage == stage
                {
                    unschedulable.push((stage, *task_id));
                }
            }
        }
        for (stage, task_id) in unschedulable {
            let Some(job) = self.jobs.get(&stage.job) else {
                continue;
            };
            let si = stage.index as usize;
            let mut causes: Vec<String> = self
                .executors
                .keys()
                .filter_map(|id| {
                    let r = job
                        .excluded
                        .get(id)
                        .or_else(|| job.stages[si].excluded.get(id))?;
                    Some(format!("executor {} is excluded: {r}", id.0))
                })
                .collect();
            if let Some(last) = job.stages[si]
                .tasks
                .iter()
                .filter_map(|t| t.failures.last())
                .next_back()
            {
                causes.push(format!("last failure: {}", last.join(": ")));
            }
            let message =
                format!("{task_id} cannot run: every live executor is excluded for {stage}");
            self.fail_job(stage.job, JobFailure { message, causes });
        }
    }

    /// Launches pending `task_id` if an executor can take it now.
    fn try_launch(&mut self, task_id: TaskId) -> bool {
        let Some(job) = self.jobs.get(&task_id.stage.job) else {
            self.pending.remove(&task_id);
            return false;
        };
        let si = task_id.stage.index as usize;
        let Some(inputs) = self.inputs_of(job, task_id) else {
            return false;
        };
        let task = &job.stages[si].tasks[task_id.partition as usize];
        // Process-local: a task reading cached partitions goes where they are if it can.
        // (Judged per stage first: most stages read no cached dataset.)
        let cached: Vec<ShuffleId> = job.dag.stages[si]
            .reads()
            .filter(|sh| job.dag.cache_of(*sh).is_some())
            .collect();
        let local = inputs
            .iter()
            .filter(|l| cached.contains(&l.shuffle))
            .max_by_key(|l| l.size)
            .map(|l| l.executor);
        let Some(executor) = local
            .filter(|e| {
                self.executors.get(e).is_some_and(Executor::has_free_slot)
                    && job.eligible(si, *e)
                    && !task.failed_on.contains(e)
            })
            .or_else(|| self.pick_executor(job, si, task))
        else {
            return false;
        };
        self.pending.remove(&task_id);
        self.launch(task_id, executor, inputs, false);
        true
    }

    /// Running attempts per pool, over every executor.
    fn running_per_pool(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for e in self.executors.values() {
            for a in &e.running {
                let name = match self.jobs.get(&a.task.stage.job) {
                    Some(j) if self.conf.fair => j.policy.pool.name.clone(),
                    _ => String::new(),
                };
                *out.entry(name).or_insert(0) += 1;
            }
        }
        out
    }

    /// Least-loaded executor with a free slot that may run this task: never an excluded
    /// one, never one already running it, and not one it failed on while another exists.
    fn pick_executor(&self, job: &Job, stage: usize, task: &TaskState) -> Option<ExecutorId> {
        let busy_with_it: BTreeSet<ExecutorId> =
            task.running.values().map(|r| r.executor).collect();
        let allowed = |id: &ExecutorId| job.eligible(stage, *id) && !busy_with_it.contains(id);
        let elsewhere_exists = self
            .executors
            .iter()
            .any(|(id, e)| !e.decommissioning && allowed(id) && !task.failed_on.contains(id));
        self.executors
            .iter()
            .filter(|(id, e)| e.has_free_slot() && allowed(id))
            .filter(|(id, _)| !elsewhere_exists || !task.failed_on.contains(id))
            .min_by_key(|(id, e)| (e.running.len() * 1000 / e.cores as usize, **id))
            .map(|(id, _)| *id)
    }

    fn launch(
        &mut self,
        task_id: TaskId,
        executor: ExecutorId,
        inputs: Vec<MapLocation>,
        speculative: bool,
    ) {
        let now = self.now_ms;
        let Some(job) = self.jobs.get_mut(&task_id.stage.job) else {
            return;
        };
        let stage = &mut job.stages[task_id.stage.index as usize];
        let stage_attempt = stage.attempt;
        let task = &mut stage.tasks[task_id.partition as usize];
        let attempt = TaskAttemptId {
            task: task_id,
            attempt: task.next_attempt,
        };
        task.next_attempt += 1;
        task.running.insert(
            attempt.attempt,
            RunningAttempt {
                executor,
                started_ms: now,
                stage_attempt,
            },
        );
        if let Some(e) = self.executors.get_mut(&executor) {
            e.running.insert(attempt);
        }
        self.commands.push_back(Command::Launch {
            attempt,
            executor,
            inputs,
            speculative,
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::build_dag;
    use crate::plan::{Action, LogicalPlan, Malformed, Node, Op, ReadFormat, ShuffleSide};

    fn text_node() -> Node {
        Node::Files {
            paths: vec!["in".into()],
            format: ReadFormat::Text,
            min_partitions: 1,
            malformed: Malformed::Fail,
            decode: Op::bare(1),
        }
    }

    fn shuffle_node(parent: usize, partitions: u32, name: &str) -> Node {
        Node::Shuffle {
            sides: vec![ShuffleSide {
                parent,
                write: Op::bare(2),
            }],
            partitions: Some(partitions),
            read: Op::bare(3),
            name: name.into(),
        }
    }

    const J: JobId = JobId(1);
    const E1: ExecutorId = ExecutorId(1);
    const E2: ExecutorId = ExecutorId(2);

    fn two_stage_dag(maps: u32, reduces: u32) -> JobDag {
        let plan = LogicalPlan {
            nodes: vec![text_node(), shuffle_node(0, reduces, "reduce_by_key")],
            action: Action::Count,
        };
        build_dag(&plan, &|_| maps, None).unwrap()
    }

    trait SubmitDefault {
        fn submit_job_default(&mut self, job: JobId, dag: JobDag);
    }

    impl SubmitDefault for Scheduler {
        fn submit_job_default(&mut self, job: JobId, dag: JobDag) {
            self.submit_job(job, dag, JobPolicy::default());
        }
    }

    fn drain(s: &mut Scheduler) -> Vec<Command> {
        std::iter::from_fn(|| s.poll_command()).collect()
    }

    fn launches(cmds: &[Command]) -> Vec<(TaskAttemptId, ExecutorId, Vec<MapLocation>)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Launch {
                    attempt,
                    executor,
                    inputs,
                    ..
                } => Some((*attempt, *executor, inputs.clone())),
                _ => None,
            })
            .collect()
    }

    fn ok() -> TaskFailure {
        TaskFailure {
            chain: vec!["boom".into()],
            retryable: true,
        }
    }

    #[test]
    fn tasks_fill_slots_and_wait_for_free_ones() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 2, 0);
        s.submit_job_default(J, two_stage_dag(3, 2));
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 2, "two slots, three map tasks");
        assert!(l.iter().all(|(_, e, inputs)| *e == E1 && inputs.is_empty()));
        s.executor_added(E2, 1, 0);
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].1, E2);
        assert_eq!(l[0].0.task.partition, 2);
    }

    #[test]
    fn reduce_stage_waits_for_every_map_task_then_gets_locations() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 4, 0);
        s.executor_added(E2, 4, 0);
        s.submit_job_default(J, two_stage_dag(2, 2));
        let maps = launches(&drain(&mut s));
        assert_eq!(maps.len(), 2);
        let (a0, e0, _) = maps[0].clone();
        s.task_succeeded(a0, e0, Some(vec![10, 0]));
        let cmds = drain(&mut s);
        assert_eq!(
            cmds,
            vec![Command::CommitTask { attempt: a0 }],
            "barrier holds"
        );
        let (a1, e1, _) = maps[1].clone();
        s.task_succeeded(a1, e1, Some(vec![5, 7]));
        let cmds = drain(&mut s);
        let reduces = launches(&cmds);
        assert_eq!(reduces.len(), 2);
        let r0 = reduces.iter().find(|r| r.0.task.partition == 0).unwrap();
        assert_eq!(
            r0.2,
            vec![
                MapLocation {
                    shuffle: ShuffleId(0),
                    reduce: 0,
                    map_partition: 0,
                    executor: e0,
                    size: 10
                },
                MapLocation {
                    shuffle: ShuffleId(0),
                    reduce: 0,
                    map_partition: 1,
                    executor: e1,
                    size: 5
                }
            ]
        );
        let r1 = reduces.iter().find(|r| r.0.task.partition == 1).unwrap();
        assert_eq!(
            r1.2,
            vec![MapLocation {
                shuffle: ShuffleId(0),
                reduce: 1,
                map_partition: 1,
                executor: e1,
                size: 7
            }],
            "empty segments are skipped"
        );
        for (a, e, _) in reduces {
            s.task_succeeded(a, e, None);
        }
        let cmds = drain(&mut s);
        assert!(cmds.contains(&Command::JobSucceeded { job: J }));
        assert!(cmds.contains(&Command::CleanJob { job: J }));
    }

    #[test]
    fn failed_task_is_retried_on_another_executor() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.submit_job_default(J, two_stage_dag(1, 1));
        let l = launches(&drain(&mut s));
        let (a, e, _) = l[0].clone();
        s.task_failed(a, e, ok());
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1);
        assert_ne!(l[0].1, e, "retried elsewhere");
        assert_eq!(l[0].0.attempt, 1);
    }

    #[test]
    fn job_fails_after_max_failures_with_first_and_last_errors() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.submit_job(
            J,
            two_stage_dag(1, 1),
            JobPolicy {
                max_task_failures: 3,
                ..Default::default()
            },
        );
        for i in 0..3 {
            let l = launches(&drain(&mut s));
            assert_eq!(l.len(), 1, "attempt {i} launched");
            let (a, e, _) = l[0].clone();
            s.task_failed(
                a,
                e,
                TaskFailure {
                    chain: vec![format!("error {i}")],
                    retryable: true,
                },
            );
        }
        let cmds = drain(&mut s);
        let failure = cmds
            .iter()
            .find_map(|c| match c {
                Command::JobFailed { error, .. } => Some(error.clone()),
                _ => None,
            })
            .expect("job failed");
        assert!(failure.message.contains("failed 3 times"), "{failure:?}");
        assert_eq!(
            failure.causes,
            vec!["first failure: error 0", "last failure: error 2"]
        );
        assert!(launches(&cmds).is_empty());
    }

    #[test]
    fn non_retryable_failure_ends_the_job_at_once() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.submit_job_default(J, two_stage_dag(1, 1));
        let (a, e, _) = launches(&drain(&mut s))[0].clone();
        s.task_failed(
            a,
            e,
            TaskFailure {
                chain: vec!["bad module".into()],
                retryable: false,
            },
        );
        let cmds = drain(&mut s);
        assert!(cmds.iter().any(|c| matches!(c, Command::JobFailed { .. })));
    }

    #[test]
    fn late_duplicate_success_is_not_committed_twice() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.submit_job_default(J, two_stage_dag(1, 1));
        let (a, e, _) = launches(&drain(&mut s))[0].clone();
        s.task_succeeded(a, e, Some(vec![1]));
        s.task_succeeded(a, e, Some(vec![1]));
        let commits = drain(&mut s)
            .into_iter()
            .filter(|c| matches!(c, Command::CommitTask { .. }))
            .count();
        assert_eq!(commits, 1);
    }

    #[test]
    fn lost_executor_reruns_its_running_tasks_and_lost_map_outputs() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.submit_job_default(J, two_stage_dag(2, 1));
        let maps = launches(&drain(&mut s));
        let on_e1 = maps.iter().find(|m| m.1 == E1).unwrap().clone();
        let on_e2 = maps.iter().find(|m| m.1 == E2).unwrap().clone();
        // E1 finishes its map task; E2 is still running when E1 dies.
        s.task_succeeded(on_e1.0, E1, Some(vec![3]));
        drain(&mut s);
        s.executor_lost(E1);
        assert!(launches(&drain(&mut s)).is_empty(), "E2 is still busy");
        s.task_succeeded(on_e2.0, E2, Some(vec![4]));
        let l = launches(&drain(&mut s));
        assert_eq!(
            l.len(),
            1,
            "lost map output is recomputed before the reduce"
        );
        assert_eq!(l[0].0.task, on_e1.0.task);
        assert_eq!(l[0].0.attempt, 1);
        s.task_succeeded(l[0].0, E2, Some(vec![3]));
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0.task.stage.index, 1, "reduce runs now");
        assert!(l[0].2.iter().all(|loc| loc.executor == E2));
    }

    #[test]
    fn running_task_on_lost_executor_is_not_a_failure() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.submit_job(
            J,
            two_stage_dag(1, 1),
            JobPolicy {
                max_task_failures: 1,
                ..Default::default()
            },
        );
        drain(&mut s);
        s.executor_lost(E1);
        s.executor_added(E2, 1, 10);
        let cmds = drain(&mut s);
        assert!(!cmds.iter().any(|c| matches!(c, Command::JobFailed { .. })));
        assert_eq!(launches(&cmds)[0].1, E2);
    }

    #[test]
    fn silent_executor_is_declared_lost_after_the_timeout() {
        let mut s = Scheduler::new(SchedulerConf {
            executor_timeout_ms: 1000,
            fair: true,
        });
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.heartbeat(E2, 900);
        assert!(s.tick(1000).is_empty());
        assert_eq!(s.tick(1001), vec![E1]);
        assert_eq!(s.executors().len(), 1);
    }

    #[test]
    fn jobs_are_served_first_in_first_out() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.submit_job_default(JobId(1), two_stage_dag(2, 1));
        s.submit_job_default(JobId(2), two_stage_dag(2, 1));
        s.executor_added(E1, 3, 0);
        let l = launches(&drain(&mut s));
        let jobs: Vec<u64> = l.iter().map(|x| x.0.task.stage.job.0).collect();
        assert_eq!(jobs, vec![1, 1, 2]);
    }

    const E3: ExecutorId = ExecutorId(3);

    fn failed_job(cmds: &[Command]) -> Option<JobFailure> {
        cmds.iter().find_map(|c| match c {
            Command::JobFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
    }

    /// Runs the map stage of a 2-map, 1-reduce job on E1 and E2 and returns the reduce
    /// launch.
    fn through_map_stage(
        s: &mut Scheduler,
        policy: JobPolicy,
    ) -> (TaskAttemptId, ExecutorId, Vec<MapLocation>) {
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.submit_job(J, two_stage_dag(2, 1), policy);
        for (a, e, _) in launches(&drain(s)) {
            s.task_succeeded(a, e, Some(vec![8]));
        }
        let l = launches(&drain(s));
        assert_eq!(l.len(), 1);
        l[0].clone()
    }

    #[test]
    fn fetch_failure_reruns_only_the_lost_map_output_and_is_not_a_task_failure() {
        let mut s = Scheduler::new(SchedulerConf::default());
        let policy = JobPolicy {
            max_task_failures: 1,
            ..Default::default()
        };
        let (r, re, inputs) = through_map_stage(&mut s, policy);
        let lost_from = inputs.iter().find(|l| l.executor != re).unwrap().clone();
        s.task_fetch_failed(
            r,
            re,
            lost_from.executor,
            lost_from.map_partition,
            vec!["connection timed out".into()],
        );
        let cmds = drain(&mut s);
        assert!(failed_job(&cmds).is_none(), "{cmds:?}");
        let l = launches(&cmds);
        assert_eq!(l.len(), 1, "only the lost map task runs again: {cmds:?}");
        assert_eq!(l[0].0.task.stage.index, 0);
        assert_eq!(l[0].0.task.partition, lost_from.map_partition);
        assert_ne!(
            l[0].1, lost_from.executor,
            "rerun away from the executor that failed to serve"
        );
        s.task_succeeded(l[0].0, l[0].1, Some(vec![8]));
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1, "the reduce resumes");
        assert_eq!(l[0].0.task, r.task);
        assert!(l[0].2.iter().all(|loc| loc.executor != lost_from.executor));
        s.task_succeeded(l[0].0, l[0].1, None);
        assert!(drain(&mut s).contains(&Command::JobSucceeded { job: J }));
    }

    #[test]
    fn stage_fails_after_max_consecutive_fetch_failed_attempts() {
        let mut s = Scheduler::new(SchedulerConf::default());
        let policy = JobPolicy {
            max_stage_attempts: 2,
            ..Default::default()
        };
        let (r, re, inputs) = through_map_stage(&mut s, policy);
        let from = inputs.iter().find(|l| l.executor != re).unwrap().clone();
        s.task_fetch_failed(
            r,
            re,
            from.executor,
            from.map_partition,
            vec!["gone".into()],
        );
        let l = launches(&drain(&mut s));
        s.task_succeeded(l[0].0, l[0].1, Some(vec![8]));
        let (r2, re2, inputs2) = launches(&drain(&mut s))[0].clone();
        let from2 = inputs2[0].clone();
        s.task_fetch_failed(
            r2,
            re2,
            from2.executor,
            from2.map_partition,
            vec!["gone again".into()],
        );
        let failure = failed_job(&drain(&mut s)).expect("second stage attempt fails the job");
        assert!(
            failure.message.contains("failed 2 consecutive attempts")
                && failure
                    .message
                    .contains("stage.max_consecutive_attempts = 2"),
            "{failure:?}"
        );
        assert_eq!(failure.causes, vec!["gone again"]);
    }

    #[test]
    fn fetch_failures_of_one_stage_attempt_count_once() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 2, 0);
        s.executor_added(E2, 2, 0);
        s.submit_job(
            J,
            two_stage_dag(2, 2),
            JobPolicy {
                max_stage_attempts: 2,
                ..Default::default()
            },
        );
        for (a, e, _) in launches(&drain(&mut s)) {
            s.task_succeeded(a, e, Some(vec![4, 4]));
        }
        let reduces = launches(&drain(&mut s));
        assert_eq!(reduces.len(), 2);
        // Both reduce tasks of the same stage attempt lose E2's output.
        for (a, e, _) in &reduces {
            s.task_fetch_failed(*a, *e, E2, 1, vec!["lost".into()]);
        }
        let cmds = drain(&mut s);
        assert!(
            failed_job(&cmds).is_none(),
            "one stage attempt failed, not two: {cmds:?}"
        );
    }

    #[test]
    fn slow_task_gets_a_speculative_copy_and_the_first_to_finish_wins() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.executor_added(E3, 1, 0);
        let policy = JobPolicy {
            speculation: Some(Speculation::default()),
            ..Default::default()
        };
        s.submit_job(J, two_stage_dag(3, 1), policy);
        let maps = launches(&drain(&mut s));
        assert_eq!(maps.len(), 3);
        s.set_time(100);
        s.task_succeeded(maps[1].0, maps[1].1, Some(vec![1]));
        s.task_succeeded(maps[2].0, maps[2].1, Some(vec![1]));
        drain(&mut s);
        // 2 of 3 done: below the 0.9 quantile (floor(2.7) = 2 is reached) -> median 100ms,
        // threshold max(300ms, 100ms). At 350ms the first task is slow.
        s.tick(300);
        assert!(launches(&drain(&mut s)).is_empty(), "not slow yet");
        s.tick(350);
        let cmds = drain(&mut s);
        let copies: Vec<_> = cmds
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::Launch {
                        speculative: true,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(copies.len(), 1, "{cmds:?}");
        let (copy, on) = match copies[0] {
            Command::Launch {
                attempt, executor, ..
            } => (*attempt, *executor),
            _ => unreachable!(),
        };
        assert_eq!(copy.task, maps[0].0.task);
        assert_ne!(on, maps[0].1, "the copy runs on another executor");
        s.tick(400);
        assert!(launches(&drain(&mut s)).is_empty(), "one copy only");
        // The copy wins; the original is killed; one commit.
        s.task_succeeded(copy, on, Some(vec![1]));
        let cmds = drain(&mut s);
        assert!(cmds.contains(&Command::KillTask {
            attempt: maps[0].0,
            executor: maps[0].1
        }));
        assert!(cmds.contains(&Command::CommitTask { attempt: copy }));
        s.task_killed(maps[0].0, maps[0].1);
        s.task_succeeded(maps[0].0, maps[0].1, Some(vec![1]));
        let cmds = drain(&mut s);
        assert!(
            !cmds
                .iter()
                .any(|c| matches!(c, Command::CommitTask { attempt } if attempt.task == copy.task))
        );
        assert_eq!(
            s.map_outputs().statuses(J, ShuffleId(0)).unwrap()[0]
                .as_ref()
                .unwrap()
                .executor,
            on
        );
    }

    #[test]
    fn without_speculation_slow_tasks_get_no_copy() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.submit_job_default(J, two_stage_dag(2, 1));
        let maps = launches(&drain(&mut s));
        s.set_time(10);
        s.task_succeeded(maps[1].0, maps[1].1, Some(vec![1]));
        drain(&mut s);
        s.tick(100_000);
        assert!(launches(&drain(&mut s)).is_empty());
    }

    #[test]
    fn an_executor_failing_tasks_is_excluded_for_the_stage_then_the_job() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 4, 0);
        let policy = JobPolicy {
            exclusion: Some(Exclusion {
                max_failed_tasks_per_stage: 2,
                max_failed_tasks_per_job: 3,
            }),
            max_task_failures: 10,
            ..Default::default()
        };
        s.submit_job(J, two_stage_dag(6, 1), policy);
        let first = launches(&drain(&mut s));
        let on_e1: Vec<_> = first.iter().filter(|l| l.1 == E1).cloned().collect();
        assert_eq!(on_e1.len(), 1);
        s.task_failed(on_e1[0].0, E1, ok());
        let next = launches(&drain(&mut s));
        let again_e1: Vec<_> = next.iter().filter(|l| l.1 == E1).cloned().collect();
        assert_eq!(
            again_e1.len(),
            1,
            "E1 is not excluded after one failure: {next:?}"
        );
        assert_ne!(
            again_e1[0].0.task, on_e1[0].0.task,
            "the failed task avoids E1"
        );
        s.task_failed(again_e1[0].0, E1, ok());
        let cmds = drain(&mut s);
        let excluded = cmds.iter().find_map(|c| match c {
            Command::ExecutorExcluded {
                executor,
                stage,
                reason,
                ..
            } => Some((*executor, *stage, reason.clone())),
            _ => None,
        });
        let (ex, stage, reason) = excluded.expect("E1 is excluded for the stage");
        assert_eq!((ex, stage), (E1, Some(0)));
        assert!(reason.contains("2 different tasks"), "{reason}");
        assert!(launches(&cmds).iter().all(|l| l.1 != E1), "{cmds:?}");
        assert_eq!(s.exclusions(J), vec![(E1, Some(0), reason)]);
    }

    #[test]
    fn a_stage_every_executor_is_excluded_from_fails_its_job_with_the_reasons() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 2, 0);
        let policy = JobPolicy {
            exclusion: Some(Exclusion::default()),
            max_task_failures: 10,
            ..Default::default()
        };
        s.submit_job(J, two_stage_dag(2, 1), policy);
        for (a, e, _) in launches(&drain(&mut s)) {
            s.task_failed(
                a,
                e,
                TaskFailure {
                    chain: vec![format!("bad disk in {}", a.task.partition)],
                    retryable: true,
                },
            );
        }
        let failure = failed_job(&drain(&mut s)).expect("nothing can run the stage");
        assert!(
            failure.message.contains("every live executor is excluded"),
            "{failure:?}"
        );
        assert!(
            failure.causes[0].starts_with("executor 1 is excluded: 2 different tasks"),
            "{failure:?}"
        );
        assert!(
            failure.causes[1].starts_with("last failure: bad disk"),
            "{failure:?}"
        );
    }

    #[test]
    fn a_job_on_an_empty_cluster_fails_after_the_wait_timeout() {
        let mut s = Scheduler::new(SchedulerConf::default());
        let policy = JobPolicy {
            executor_wait_timeout_ms: 1000,
            ..Default::default()
        };
        s.submit_job(J, two_stage_dag(1, 1), policy);
        assert_eq!(
            drain(&mut s),
            vec![Command::StageStarted {
                stage: StageId { job: J, index: 0 },
                attempt: 0
            }]
        );
        s.tick(10);
        s.tick(900);
        assert!(drain(&mut s).is_empty(), "still waiting");
        s.tick(1010);
        let failure = failed_job(&drain(&mut s)).expect("timed out");
        assert!(
            failure
                .message
                .contains("scheduler.executor_wait_timeout = 1s"),
            "{failure:?}"
        );
        assert_eq!(
            failure.causes,
            vec!["no executor is registered with the driver"]
        );
    }

    #[test]
    fn an_executor_that_joins_a_waiting_job_is_used_at_once() {
        let mut s = Scheduler::new(SchedulerConf::default());
        let policy = JobPolicy {
            executor_wait_timeout_ms: 1000,
            ..Default::default()
        };
        s.submit_job(J, two_stage_dag(1, 1), policy);
        s.tick(900);
        s.executor_added(E1, 1, 950);
        assert_eq!(launches(&drain(&mut s)).len(), 1);
        s.heartbeat(E1, 5000);
        s.tick(5000);
        assert!(failed_job(&drain(&mut s)).is_none());
    }

    #[test]
    fn a_decommissioned_executor_gets_no_tasks_and_handed_back_ones_are_not_failures() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.submit_job(
            J,
            two_stage_dag(1, 1),
            JobPolicy {
                max_task_failures: 1,
                ..Default::default()
            },
        );
        let (a, _, _) = launches(&drain(&mut s))[0].clone();
        s.executor_decommissioning(E1);
        s.task_killed(a, E1);
        assert!(
            launches(&drain(&mut s)).is_empty(),
            "nothing goes back to E1"
        );
        assert_eq!(s.total_cores(), 0);
        s.executor_added(E2, 1, 10);
        let cmds = drain(&mut s);
        assert!(failed_job(&cmds).is_none());
        let l = launches(&cmds);
        assert_eq!((l[0].0.task, l[0].1), (a.task, E2));
        s.executor_lost(E1);
        assert!(failed_job(&drain(&mut s)).is_none());
    }

    #[test]
    fn a_failed_job_kills_its_running_attempts() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 2, 0);
        s.submit_job(
            J,
            two_stage_dag(2, 1),
            JobPolicy {
                max_task_failures: 1,
                ..Default::default()
            },
        );
        let l = launches(&drain(&mut s));
        s.task_failed(l[0].0, E1, ok());
        let cmds = drain(&mut s);
        assert!(cmds.contains(&Command::KillTask {
            attempt: l[1].0,
            executor: E1
        }));
        assert!(failed_job(&cmds).is_some());
    }

    #[test]
    fn a_success_reported_by_a_lost_executor_does_not_register_map_output() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.submit_job_default(J, two_stage_dag(1, 1));
        let (a, e, _) = launches(&drain(&mut s))[0].clone();
        s.executor_lost(e);
        let relaunch = launches(&drain(&mut s));
        assert_eq!(relaunch.len(), 1);
        s.task_succeeded(a, e, Some(vec![5]));
        let cmds = drain(&mut s);
        assert!(
            !cmds.contains(&Command::CommitTask { attempt: a }),
            "{cmds:?}"
        );
    }

    #[test]
    fn losing_outputs_of_two_shuffles_reruns_the_upstream_stage_first() {
        // text → shuffle A → shuffle B → result; E2 holds map outputs of both shuffles
        // when it dies during the last stage.
        let plan = LogicalPlan {
            nodes: vec![
                text_node(),
                shuffle_node(0, 2, "a"),
                shuffle_node(1, 2, "b"),
            ],
            action: Action::Count,
        };
        let dag = build_dag(&plan, &|_| 2, None).unwrap();
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        s.submit_job_default(J, dag);
        for stage in 0..2 {
            let l = launches(&drain(&mut s));
            assert_eq!(l.len(), 2);
            assert!(l.iter().all(|x| x.0.task.stage.index == stage));
            for (a, e, _) in l {
                s.task_succeeded(a, e, Some(vec![3, 3]));
            }
        }
        let last = launches(&drain(&mut s));
        assert!(last.iter().all(|x| x.0.task.stage.index == 2));
        let e1_last = last.iter().find(|x| x.1 == E1).unwrap().0;
        s.task_succeeded(e1_last, E1, None);
        drain(&mut s);
        s.executor_lost(E2);
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0].0.task.stage.index, 0, "stage 0's lost output first");
        assert_eq!(l[0].1, E1);
        s.task_succeeded(l[0].0, E1, Some(vec![3, 3]));
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0.task.stage.index, 1, "then stage 1's");
        s.task_succeeded(l[0].0, E1, Some(vec![3, 3]));
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1);
        assert_eq!(
            l[0].0.task.stage.index, 2,
            "then the result task E2 was running"
        );
        s.task_succeeded(l[0].0, E1, None);
        assert!(drain(&mut s).contains(&Command::JobSucceeded { job: J }));
    }

    #[test]
    fn an_executor_failing_across_stages_is_excluded_for_the_whole_job() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 1, 0);
        s.executor_added(E2, 1, 0);
        let policy = JobPolicy {
            exclusion: Some(Exclusion {
                max_failed_tasks_per_stage: 10,
                max_failed_tasks_per_job: 2,
            }),
            max_task_failures: 10,
            ..Default::default()
        };
        s.submit_job(J, two_stage_dag(1, 1), policy);
        // The one map task fails on E1 twice (E2 busy elsewhere is not needed: the soft
        // avoidance sends the retry to E2, so fail it there once and back on E1).
        let (a, e, _) = launches(&drain(&mut s))[0].clone();
        assert_eq!(e, E1);
        s.task_failed(a, E1, ok());
        let (a, e, _) = launches(&drain(&mut s))[0].clone();
        assert_eq!(e, E2);
        s.task_failed(a, E2, ok());
        let (a, e, _) = launches(&drain(&mut s))[0].clone();
        assert_eq!(e, E1, "both failed it once: least loaded again");
        s.task_failed(a, E1, ok());
        let cmds = drain(&mut s);
        assert!(
            cmds.iter().any(|c| matches!(
                c,
                Command::ExecutorExcluded {
                    executor: E1,
                    stage: None,
                    ..
                }
            )),
            "{cmds:?}"
        );
        let l = launches(&cmds);
        assert_eq!(l[0].1, E2);
        s.task_succeeded(l[0].0, E2, Some(vec![1]));
        let l = launches(&drain(&mut s));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].1, E2, "the next stage avoids E1 too");
    }

    fn pool(name: &str, weight: u32, min_share: u32, max_slots: Option<u32>) -> JobPolicy {
        JobPolicy {
            pool: Pool {
                name: name.into(),
                weight,
                min_share,
                max_slots,
            },
            ..Default::default()
        }
    }

    /// Tenant A floods the cluster with 50 jobs, then tenant B submits one; returns the
    /// tenant of each task launched when A's first task finishes.
    fn flood(fair: bool) -> Vec<u64> {
        let mut s = Scheduler::new(SchedulerConf {
            fair,
            ..Default::default()
        });
        s.executor_added(E1, 2, 0);
        for j in 1..=50 {
            s.submit_job(JobId(j), two_stage_dag(2, 1), pool("a", 1, 0, None));
        }
        s.submit_job(JobId(100), two_stage_dag(2, 1), pool("b", 1, 0, None));
        let first = launches(&drain(&mut s));
        assert!(
            first.iter().all(|l| l.0.task.stage.job.0 <= 50),
            "A came first"
        );
        s.task_succeeded(first[0].0, E1, Some(vec![1]));
        launches(&drain(&mut s))
            .iter()
            .map(|l| l.0.task.stage.job.0)
            .collect()
    }

    #[test]
    fn fair_pools_let_a_small_tenant_in_past_a_flood_and_fifo_does_not() {
        assert_eq!(flood(true), vec![100], "FAIR: B's job takes the free slot");
        assert_ne!(flood(false), vec![100], "FIFO: A's queue comes first");
    }

    #[test]
    fn a_pool_never_exceeds_its_max_slots_and_min_share_is_served_first() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.submit_job(JobId(1), two_stage_dag(4, 1), pool("capped", 1, 0, Some(1)));
        s.submit_job(JobId(2), two_stage_dag(4, 1), pool("big", 1, 0, None));
        s.executor_added(E1, 4, 0);
        let l = launches(&drain(&mut s));
        let capped = l.iter().filter(|x| x.0.task.stage.job.0 == 1).count();
        assert_eq!((capped, l.len()), (1, 4), "{l:?}");

        // With weights equal, a pool below its min share goes first.
        let mut s = Scheduler::new(SchedulerConf::default());
        s.submit_job(JobId(1), two_stage_dag(4, 1), pool("a", 10, 0, None));
        s.submit_job(JobId(2), two_stage_dag(4, 1), pool("b", 1, 2, None));
        s.executor_added(E1, 3, 0);
        let l = launches(&drain(&mut s));
        let b = l.iter().filter(|x| x.0.task.stage.job.0 == 2).count();
        assert_eq!(
            b, 2,
            "b gets its min share of 2 before a's weight counts: {l:?}"
        );
    }

    /// text → cache → count, with the cached dataset's partitions kept by an earlier job.
    fn cached_dag() -> JobDag {
        let plan = LogicalPlan {
            nodes: vec![
                text_node(),
                Node::Cache {
                    parent: 0,
                    id: 1,
                    level: crate::plan::StorageLevel::MemoryOnly,
                    write: Op::bare(2),
                    read: Op::bare(3),
                },
            ],
            action: Action::Count,
        };
        build_dag(&plan, &|_| 2, None).unwrap()
    }

    #[test]
    fn kept_partitions_skip_their_stage_and_a_lost_one_is_recomputed_from_lineage() {
        let mut s = Scheduler::new(SchedulerConf::default());
        s.executor_added(E1, 2, 0);
        s.executor_added(E2, 2, 0);
        let dag = cached_dag();
        assert_eq!(dag.stages.len(), 2);
        let known = vec![
            (
                ShuffleId(0),
                0,
                MapStatus {
                    executor: E1,
                    sizes: vec![7, 0],
                },
            ),
            (
                ShuffleId(0),
                1,
                MapStatus {
                    executor: E2,
                    sizes: vec![0, 9],
                },
            ),
        ];
        s.submit_job_with(J, dag, JobPolicy::default(), known);
        let l = launches(&drain(&mut s));
        // Only the reading stage runs, each task where its partition is kept.
        assert_eq!(l.len(), 2, "{l:?}");
        for (a, e, inputs) in &l {
            assert_eq!(a.task.stage.index, 1);
            assert_eq!(inputs.len(), 1);
            assert_eq!(*e, inputs[0].executor, "process-local");
        }
        // E2 dies with its partition: the cache stage recomputes it from the source.
        s.executor_lost(E2);
        let again = launches(&drain(&mut s));
        assert!(
            again
                .iter()
                .any(|(a, e, _)| a.task.stage.index == 0 && a.task.partition == 1 && *e == E1),
            "{again:?}"
        );
    }
}
