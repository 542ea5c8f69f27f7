//! The DAG scheduler: jobs and their stages. A stage runs when its parents are done and
//! something still needs its output; a fetch failure starts a new stage attempt after
//! the lost map outputs are recomputed; a job ends when its result stage is done.

use super::map_outputs::MapOutputStatus;
use super::policy::{JobFailure, JobPolicy};
use super::{Command, Scheduler, fmt_ms};
use crate::dag::{JobDag, StageInput, StageOutput};
use crate::ids::{ExecutorId, JobId, ShuffleId, StageId, TaskAttemptId, TaskId};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StageStatus {
    /// Parents not done yet.
    Waiting,
    Running,
    Done,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct RunningAttempt {
    pub(super) executor: ExecutorId,
    pub(super) started_ms: u64,
    /// The stage attempt it was launched in (fetch failures of older ones count once).
    pub(super) stage_attempt: u32,
}

#[derive(Debug, Default)]
pub(super) struct TaskState {
    pub(super) next_attempt: u32,
    pub(super) running: BTreeMap<u32, RunningAttempt>,
    pub(super) done: bool,
    pub(super) failures: Vec<Vec<String>>,
    /// Executors to avoid for this task when another one exists.
    pub(super) failed_on: BTreeSet<ExecutorId>,
}

#[derive(Debug)]
pub(super) struct Stage {
    pub(super) status: StageStatus,
    pub(super) tasks: Vec<TaskState>,
    /// How many of `tasks` are done: kept with every change of a task's `done`, so that
    /// a stage's completion is known in O(1) on each task's success.
    pub(super) done_tasks: usize,
    /// Current attempt of the stage; bumped by each fetch failure that restarts it.
    pub(super) attempt: u32,
    /// Attempts since the stage last completed that ended in a fetch failure.
    pub(super) failed_attempts: u32,
    /// Run times of successful attempts, for speculation.
    pub(super) durations: Vec<u64>,
    /// Per executor, the partitions that failed on it.
    pub(super) failed_tasks_on: BTreeMap<ExecutorId, BTreeSet<u32>>,
    pub(super) excluded: BTreeMap<ExecutorId, String>,
}

impl Stage {
    pub(super) fn all_done(&self) -> bool {
        self.done_tasks == self.tasks.len()
    }
}

/// Whether no task of `stage` has run or is running: it may still be re-planned.
fn untouched(stage: &Stage) -> bool {
    stage.status != StageStatus::Done
        && stage.done_tasks == 0
        && stage
            .tasks
            .iter()
            .all(|t| t.running.is_empty() && t.next_attempt == 0)
}

#[derive(Debug)]
pub(super) struct Job {
    /// The application the job belongs to (its cached datasets are the application's).
    pub(super) app: u64,
    pub(super) dag: JobDag,
    pub(super) stages: Vec<Stage>,
    pub(super) policy: JobPolicy,
    pub(super) failures_on: BTreeMap<ExecutorId, u32>,
    pub(super) excluded: BTreeMap<ExecutorId, String>,
    /// Since when no executor could take any of its ready tasks.
    pub(super) starved_since: Option<u64>,
}

impl Job {
    /// Whether some stage reading `stage`'s output, directly or not, has yet to finish.
    pub(super) fn downstream_unfinished(&self, stage: usize) -> bool {
        // Stages read only stages with smaller indices: one pass from the end decides
        // each stage from those after it.
        let n = self.stages.len();
        let mut needs_input = vec![false; n];
        for i in (0..n).rev() {
            let unfinished = self.stages[i].status != StageStatus::Done || needs_input[i];
            if unfinished {
                for p in &self.dag.stages[i].parents {
                    if let Some(slot) = needs_input.get_mut(*p as usize) {
                        *slot = true;
                    }
                }
            }
        }
        needs_input.get(stage).copied().unwrap_or(false)
    }

    pub(super) fn eligible(&self, stage: usize, executor: ExecutorId) -> bool {
        !self.excluded.contains_key(&executor)
            && !self.stages[stage].excluded.contains_key(&executor)
    }

    /// The stage that writes `shuffle`.
    pub(super) fn writer_of(&self, shuffle: ShuffleId) -> Option<usize> {
        self.dag.stages.iter().position(
            |s| matches!(s.output, StageOutput::ShuffleWrite { shuffle: sh, .. } if sh == shuffle),
        )
    }
}

impl Scheduler {
    /// Runs `job` of application `app`. Partitions of cached datasets that earlier jobs
    /// of the application kept count as done: a stage none of whose output is missing
    /// does not run, nor do the stages that would only feed it.
    pub fn submit_job(&mut self, job: JobId, app: u64, dag: JobDag, policy: JobPolicy) {
        let mut stages: Vec<Stage> = dag
            .stages
            .iter()
            .map(|s| Stage {
                status: StageStatus::Waiting,
                tasks: (0..s.partitions).map(|_| TaskState::default()).collect(),
                done_tasks: 0,
                attempt: 0,
                failed_attempts: 0,
                durations: Vec::new(),
                failed_tasks_on: BTreeMap::new(),
                excluded: BTreeMap::new(),
            })
            .collect();
        for (i, s) in dag.stages.iter().enumerate() {
            let StageOutput::ShuffleWrite {
                shuffle,
                cache,
                partitions,
                ..
            } = s.output
            else {
                continue;
            };
            self.map_outputs
                .register_shuffle(job, shuffle, s.partitions);
            let Some(c) = cache else { continue };
            for (map, status) in self.cached.kept(app, c.id, s.partitions) {
                // A kept output must be of this shuffle's reduce partitions.
                let fits = !c.shuffle_output || status.sizes.len() == partitions as usize;
                if !fits || !self.executors.contains_key(&status.executor) {
                    continue;
                }
                if let Some(task) = stages[i].tasks.get_mut(map as usize) {
                    if !task.done {
                        task.done = true;
                        stages[i].done_tasks += 1;
                    }
                    self.map_outputs.register(job, shuffle, map, status);
                }
            }
        }
        self.jobs.insert(
            job,
            Job {
                app,
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
        if self.jobs.remove(&job).is_none() {
            return;
        }
        self.pending.retain(|t| t.stage.job != job);
        self.speculatable.retain(|t| t.stage.job != job);
        self.map_outputs.remove_job(job);
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

    /// The application dropped its cached dataset `id`.
    pub fn unpersist(&mut self, app: u64, id: u32) {
        self.cached.forget_dataset(app, id);
    }

    /// The application ended: its cached datasets are gone.
    pub fn app_ended(&mut self, app: u64) {
        self.cached.forget_app(app);
    }

    /// `executor` evicted partitions `maps` of the application's cached dataset `id`.
    pub fn cached_dropped(&mut self, executor: ExecutorId, app: u64, id: u32, maps: &[u32]) {
        self.cached.dropped(app, id, executor, maps);
    }

    /// Whether `task`'s stage reads a shuffle with a map output `map_partition`.
    fn reads_map_output(&self, task: TaskId, map_partition: u32) -> bool {
        let Some(stage) = self.stage_def(task.stage) else {
            return false;
        };
        stage.reads().any(|sh| {
            self.map_outputs
                .statuses(task.stage.job, sh)
                .is_some_and(|maps| (map_partition as usize) < maps.len())
        })
    }

    /// Whether `task` has succeeded (an attempt of it was committed). A task of a job that
    /// is over counts as done.
    pub fn task_done(&self, task: TaskId) -> bool {
        self.jobs
            .get(&task.stage.job)
            .and_then(|j| j.stages.get(task.stage.index as usize))
            .and_then(|s| s.tasks.get(task.partition as usize))
            .is_none_or(|t| t.done)
    }

    pub(super) fn fail_job(&mut self, job: JobId, error: JobFailure) {
        self.cancel_job(job);
        self.commands.push_back(Command::JobFailed { job, error });
    }

    /// Drops a running attempt that will never report; its task runs again if no other
    /// attempt is running.
    pub(super) fn forget_attempt(&mut self, attempt: TaskAttemptId) {
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

    /// Forgets `executor`'s map outputs (of job `only`, when given). Map tasks whose
    /// output a stage still to finish needs (directly or through another stage) run again,
    /// elsewhere if possible, and every stage downstream of them waits.
    pub(super) fn unregister_outputs(&mut self, executor: ExecutorId, only: Option<JobId>) {
        let mut touched = BTreeSet::new();
        for (job_id, shuffle, map) in self.map_outputs.remove_executor(executor, only) {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(writer) = job.writer_of(shuffle) else {
                continue;
            };
            if !job.downstream_unfinished(writer) {
                continue;
            }
            let stage = &mut job.stages[writer];
            let task = &mut stage.tasks[map as usize];
            if task.done {
                task.done = false;
                stage.done_tasks -= 1;
            }
            task.failed_on.insert(executor);
            touched.insert(job_id);
        }
        for job in touched {
            self.advance_stages(job);
        }
    }

    /// A reduce attempt could not fetch `map_partition`'s segment from `from`. Not a task
    /// failure: `from`'s map outputs are unregistered (its files are presumed gone), the
    /// lost map tasks run again, and this task waits for them. Each stage attempt that
    /// ends this way counts once towards `max_stage_attempts`.
    ///
    /// Only the job's own outputs on `from` are unregistered: the claim comes from one
    /// executor about one task, and other tenants' jobs find out for themselves. A claim
    /// about an output the task does not read is a failure of the task, not of `from`.
    pub fn task_fetch_failed(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        from: ExecutorId,
        map_partition: u32,
        chain: Vec<String>,
    ) {
        if !self.reads_map_output(attempt.task, map_partition) {
            let mut chain = chain;
            chain.insert(
                0,
                format!(
                    "executor {} reported a fetch failure of map output {map_partition}, which {} does not read",
                    executor.0, attempt.task
                ),
            );
            self.task_failed(
                attempt,
                executor,
                super::TaskFailure {
                    chain,
                    retryable: true,
                    limit: None,
                },
            );
            return;
        }
        self.attempt_ended(executor, attempt, |_| ());
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
                        limit: None,
                    },
                );
                self.schedule();
                return;
            }
        }
        // Only a registered executor's outputs can be unregistered: a status naming one
        // that never was changes nothing.
        self.unregister_outputs(from, Some(job_id));
        // The outputs may already have been unregistered and recomputed elsewhere: then
        // the stage is running and this task simply goes again.
        self.forget_attempt(attempt);
        self.schedule();
    }

    /// Brings every stage's status in line with its tasks and parents, in dependency
    /// order: all tasks done → done; parents all done → running, its idle unfinished tasks
    /// pending; otherwise waiting, with nothing pending. Ends the job when its result stage
    /// is done.
    pub(super) fn advance_stages(&mut self, job_id: JobId) {
        self.adapt(job_id);
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
                                .fold(0, |a: u64, m| a.saturating_add(m.bytes))
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
            let def = &job.dag.stages[i];
            let parents_done = def
                .parents
                .iter()
                .chain(&def.after)
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

    /// Adaptive execution at stage boundaries: a stage that reads a join's shuffle and
    /// has not started becomes a broadcast hash join when one side's map stage is done
    /// with at most `broadcast_threshold` bytes of output and the other side's has not
    /// started (nor is read by any other stage): that side then needs no shuffle.
    ///
    /// Then a stage that reads shuffles whose map stages are all done, and has not
    /// started, reads consecutive small partitions together: tasks of about
    /// `coalesce_target` bytes, or fewer bytes when that keeps every slot of the cluster
    /// busy (at least 1 MiB), as Spark's coalescing of shuffle partitions does.
    fn adapt(&mut self, job_id: JobId) {
        let slots: u64 = self
            .executors
            .values()
            .filter(|e| !e.decommissioning)
            .map(|e| e.cores as u64)
            .sum();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let threshold = job.policy.broadcast_threshold;
        let advisory = job.policy.coalesce_target;
        let skew = job.policy.skew;
        if threshold == 0 && advisory == 0 && skew.is_none() {
            return;
        }
        let mut changes = Vec::new();
        for j in 0..job.stages.len() {
            if threshold == 0 {
                break;
            }
            if job.dag.stages[j].broadcast.is_empty()
                || job.stages[j].status != StageStatus::Waiting
            {
                continue;
            }
            let chosen = job.dag.stages[j]
                .broadcast
                .iter()
                .enumerate()
                .find_map(|(c, cand)| {
                    let (a, b) = (cand.stream_stage as usize, cand.build_stage as usize);
                    if !job.stages[b].all_done() || !untouched(&job.stages[a]) {
                        return None;
                    }
                    let stream_shuffle = job.dag.stages[a].writes()?;
                    let readers = job
                        .dag
                        .stages
                        .iter()
                        .filter(|s| s.reads().any(|sh| sh == stream_shuffle))
                        .count();
                    if readers != 1 {
                        return None;
                    }
                    let bytes: u64 = self
                        .map_outputs
                        .statuses(job_id, cand.build_shuffle)?
                        .iter()
                        .try_fold(0u64, |a, m| m.as_ref().map(|m| a.saturating_add(m.bytes)))?;
                    (bytes <= threshold).then_some((c, a, bytes))
                });
            let Some((c, a, bytes)) = chosen else {
                continue;
            };
            let Some(change) = job.dag.broadcast_join(j as u32, c, bytes) else {
                continue;
            };
            let stream_id = StageId {
                job: job_id,
                index: a as u32,
            };
            self.pending.retain(|t| t.stage != stream_id);
            self.speculatable.retain(|t| t.stage != stream_id);
            let tasks = job.dag.stages[j].partitions;
            job.stages[a].tasks.clear();
            job.stages[a].done_tasks = 0;
            job.stages[j].tasks = (0..tasks).map(|_| TaskState::default()).collect();
            job.stages[j].done_tasks = 0;
            if let Some(out) = job.dag.stages[j].writes() {
                self.map_outputs.register_shuffle(job_id, out, tasks);
            }
            changes.push(change);
        }
        for s in 0..job.stages.len() {
            if advisory == 0 && skew.is_none() {
                break;
            }
            let def = &job.dag.stages[s];
            let ready = def
                .parents
                .iter()
                .chain(&def.after)
                .all(|p| job.stages[*p as usize].all_done());
            let [branch] = def.branches.as_slice() else {
                continue;
            };
            let StageInput::Shuffle { shuffles, .. } = &branch.input else {
                continue;
            };
            if !ready || job.stages[s].status != StageStatus::Waiting || !untouched(&job.stages[s])
            {
                continue;
            }
            // Bytes per side, map output and partition.
            let mut sizes: Vec<Vec<&MapOutputStatus>> = Vec::with_capacity(shuffles.len());
            let mut known = true;
            for sh in shuffles {
                let mut side = Vec::new();
                for status in self.map_outputs.statuses(job_id, *sh).unwrap_or_default() {
                    match status {
                        Some(st) => side.push(st),
                        None => known = false,
                    }
                }
                sizes.push(side);
            }
            if !known {
                continue;
            }
            // From the rounded sizes the planner groups by, so that the target is of the
            // same measure.
            let total: u64 = sizes
                .iter()
                .flatten()
                .map(|m| (0..m.sizes.len()).map(|p| m.size(p)).sum::<u64>())
                .sum();
            let advisory = if advisory == 0 { u64::MAX } else { advisory };
            let target = (total / slots.max(1)).clamp(1 << 20, advisory.max(1 << 20));
            let Some(change) = job.dag.plan_reads(s as u32, &sizes, target, skew) else {
                continue;
            };
            let tasks = job.dag.stages[s].partitions;
            job.stages[s].tasks = (0..tasks).map(|_| TaskState::default()).collect();
            if let Some(out) = job.dag.stages[s].writes() {
                self.map_outputs.register_shuffle(job_id, out, tasks);
            }
            changes.push(change);
        }
        if !changes.is_empty() {
            self.commands.push_back(Command::Replanned {
                job: job_id,
                dag: Box::new(job.dag.clone()),
                changes,
            });
        }
    }

    /// A job whose ready tasks no executor can take (none registered, or all shutting
    /// down) fails once it has waited `executor_wait_timeout_ms`.
    pub(super) fn check_starved_jobs(&mut self) {
        let now = self.now_ms;
        let any_usable = self.executors.values().any(|e| !e.decommissioning);
        let pending = &self.pending;
        // Whether `job` has a task waiting: one look into the ordered set, not a walk.
        let waiting = |job: JobId| {
            let first = TaskId {
                stage: StageId { job, index: 0 },
                partition: 0,
            };
            pending
                .range(first..)
                .next()
                .is_some_and(|t| t.stage.job == job)
        };
        let mut expired = Vec::new();
        for (id, job) in &mut self.jobs {
            if any_usable || !waiting(*id) {
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
            self.fail_job(
                job,
                JobFailure {
                    message,
                    causes,
                    limit: Some("scheduler.executor_wait_timeout".into()),
                },
            );
        }
    }
}
