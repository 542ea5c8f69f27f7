//! The task scheduler: fills free executor slots with pending tasks (FAIR between pools,
//! FIFO inside one), then with speculative copies of slow tasks; takes task outcomes;
//! retries failures elsewhere; excludes executors that keep failing (Spark's
//! exclude-on-failure).

use super::map_outputs::{MapLocation, MapStatus};
use super::policy::{JobFailure, Pool, TaskFailure};
use super::stages::{Job, RunningAttempt, StageStatus, TaskState};
use super::{Command, Scheduler, fmt_ms};
use crate::dag::{StageInput, StageOutput};
use crate::ids::{ExecutorId, JobId, StageId, TaskAttemptId, TaskId};
use std::collections::{BTreeMap, BTreeSet};

impl Scheduler {
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

    /// `attempt` succeeded on `executor`; a map task reports its segment sizes, one per
    /// reduce partition. Map output that does not fit its stage (no sizes, or not one per
    /// partition) is a failure of the attempt, not a success.
    pub fn task_succeeded(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        map_sizes: Option<Vec<u64>>,
    ) {
        let job_id = attempt.task.stage.job;
        let stage_index = attempt.task.stage.index as usize;
        let expected = self
            .jobs
            .get(&job_id)
            .and_then(|j| j.dag.stages.get(stage_index))
            .map(|s| match s.output {
                StageOutput::ShuffleWrite { partitions, .. } => Some(partitions),
                StageOutput::Result(_) => None,
            });
        if let Some(Some(partitions)) = expected {
            let got = map_sizes.as_ref().map(Vec::len);
            if got != Some(partitions as usize) {
                let what = match got {
                    Some(n) => format!("{n} segment sizes"),
                    None => "no segment sizes".to_string(),
                };
                self.task_failed(
                    attempt,
                    executor,
                    TaskFailure {
                        chain: vec![format!(
                            "executor {} reported {what} for a map output of {partitions} partitions",
                            executor.0
                        )],
                        retryable: true,
                        limit: None,
                    },
                );
                return;
            }
        }
        let now = self.now_ms;
        self.attempt_ended(executor, attempt, |e| e.tasks_succeeded += 1);
        let registered = self.executors.contains_key(&executor);
        let Some(job) = self.jobs.get_mut(&job_id) else {
            self.schedule();
            return;
        };
        let app = job.app;
        let Some(stage) = job.stages.get_mut(stage_index) else {
            return;
        };
        let stage_tasks = stage.tasks.len();
        let Some(task) = stage.tasks.get_mut(attempt.task.partition as usize) else {
            return;
        };
        let Some(run) = task.running.remove(&attempt.attempt) else {
            // Not an attempt we wait for (its executor was removed meanwhile).
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
        stage.done_tasks += 1;
        let stage_done = stage.done_tasks == stage_tasks;
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
        if let StageOutput::ShuffleWrite { shuffle, cache, .. } = *output {
            let status = MapStatus {
                executor,
                sizes: map_sizes.unwrap_or_default(),
            };
            if let Some(c) = cache {
                // Filed by map task: as many as the stage has tasks.
                self.cached.record(
                    app,
                    c.id,
                    stage_tasks as u32,
                    attempt.task.partition,
                    status.clone(),
                );
            }
            self.map_outputs
                .register(job_id, shuffle, attempt.task.partition, status);
        }
        // A stage's other tasks are not changed by one success: only its completion
        // moves the DAG (the full pass is O(stages × tasks), so it runs once a stage).
        if stage_done {
            self.advance_stages(job_id);
        }
        self.schedule();
    }

    /// The executor stopped `attempt` as asked (or handed it back while shutting down):
    /// not a failure; the task runs again if nothing else runs it.
    pub fn task_killed(&mut self, attempt: TaskAttemptId, executor: ExecutorId) {
        self.attempt_ended(executor, attempt, |_| ());
        self.forget_attempt(attempt);
        self.schedule();
    }

    pub fn task_failed(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        failure: TaskFailure,
    ) {
        self.attempt_ended(executor, attempt, |e| e.tasks_failed += 1);
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
        let limit = failure.limit.clone();
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
                format!(
                    "{} failed, and another attempt would fail the same way",
                    attempt.task
                )
            };
            self.fail_job(
                job_id,
                JobFailure {
                    message,
                    causes,
                    limit,
                },
            );
            self.schedule();
            return;
        }
        if retry {
            self.pending.insert(attempt.task);
        }
        self.count_failure_for_exclusion(attempt, executor);
        self.schedule();
    }

    /// Attempts that outlived their job's `attempt_timeout_ms` without a status fail (and
    /// are killed): an executor that takes tasks and never answers cannot hold a job.
    pub(super) fn give_up_on_silent_attempts(&mut self) {
        let now = self.now_ms;
        // Only running attempts can be silent: walk the executors' slots, not every task
        // of every job, on each tick.
        let mut silent = Vec::new();
        for (executor, e) in &self.executors {
            for attempt in &e.running {
                let Some(job) = self.jobs.get(&attempt.task.stage.job) else {
                    continue;
                };
                let Some(limit) = job.policy.attempt_timeout_ms else {
                    continue;
                };
                let run = job
                    .stages
                    .get(attempt.task.stage.index as usize)
                    .and_then(|s| s.tasks.get(attempt.task.partition as usize))
                    .and_then(|t| t.running.get(&attempt.attempt));
                if run.is_some_and(|r| now.saturating_sub(r.started_ms) > limit) {
                    silent.push((*attempt, *executor, limit));
                }
            }
        }
        for (attempt, executor, limit) in silent {
            self.commands
                .push_back(Command::KillTask { attempt, executor });
            self.task_failed(
                attempt,
                executor,
                TaskFailure {
                    chain: vec![format!(
                        "no status from executor {} within {} (task.deadline + executor.timeout)",
                        executor.0,
                        fmt_ms(limit)
                    )],
                    retryable: true,
                    limit: None,
                },
            );
        }
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

    /// Spark's `checkSpeculatableTasks`: once `quantile` of a running stage's tasks have
    /// succeeded, a task with one attempt running longer than `multiplier` × the median
    /// (and `min_runtime_ms`) gets a copy.
    pub(super) fn find_speculatable(&mut self) {
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
                let finished = stage.done_tasks;
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

    /// Whether every map output a task of `task_id`'s stage reads (of every shuffle
    /// piece and side, and of its broadcast build sides) is known. O(pieces): the task
    /// is launched with references to its shuffles, not with their map outputs.
    fn inputs_ready(&self, job: &Job, task_id: TaskId) -> bool {
        let stage = &job.dag.stages[task_id.stage.index as usize];
        let job_id = task_id.stage.job;
        let Some(pieces) = stage.pieces.get(task_id.partition as usize) else {
            return false;
        };
        pieces.iter().all(|piece| {
            match stage.branches.get(piece.branch as usize).map(|b| &b.input) {
                Some(StageInput::Shuffle { shuffles, .. }) => shuffles
                    .iter()
                    .all(|sh| self.map_outputs.complete(job_id, *sh)),
                Some(_) => true,
                None => false,
            }
        }) && stage
            .builds
            .iter()
            .all(|sh| self.map_outputs.complete(job_id, *sh))
    }

    /// The segments a task of `task_id`'s stage reads (of every shuffle piece and side,
    /// then of its build sides), or `None` while some are missing: what its executor
    /// resolves from the map statuses it is sent. O(map outputs).
    pub fn task_inputs(&self, task_id: TaskId) -> Option<Vec<MapLocation>> {
        let job = self.jobs.get(&task_id.stage.job)?;
        let stage = job.dag.stages.get(task_id.stage.index as usize)?;
        let mut out = Vec::new();
        for piece in stage.pieces.get(task_id.partition as usize)? {
            let branch = stage.branches.get(piece.branch as usize)?;
            if let StageInput::Shuffle { shuffles, .. } = &branch.input {
                for (side, shuffle) in shuffles.iter().enumerate() {
                    let mut locations =
                        self.map_outputs
                            .locations(task_id.stage.job, *shuffle, piece.partition)?;
                    // A share of a skewed partition: some map outputs of one side.
                    if let Some(r) = piece.maps.filter(|r| r.side as usize == side) {
                        locations.retain(|l| (r.start..r.end).contains(&l.map_partition));
                    }
                    out.extend(locations);
                }
            }
        }
        // A broadcast hash join's build side: every reduce partition of it.
        for shuffle in &stage.builds {
            let writer = job.writer_of(*shuffle)?;
            let StageOutput::ShuffleWrite { partitions, .. } = job.dag.stages[writer].output else {
                return None;
            };
            for reduce in 0..partitions {
                out.extend(
                    self.map_outputs
                        .locations(task_id.stage.job, *shuffle, reduce)?,
                );
            }
        }
        Some(out)
    }

    /// Fills free executor slots: pending tasks in order, then speculative copies. A task
    /// that failed on an executor goes elsewhere when another executor can take it; an
    /// excluded executor never gets the stage's tasks, and a stage that every live
    /// executor is excluded from fails its job (Spark's behaviour without dynamic
    /// allocation: nothing will change by waiting).
    pub(super) fn schedule(&mut self) {
        self.check_indexes();
        self.fail_unschedulable_stages();
        if self.free.is_empty() {
            return;
        }
        // Each pool's pending tasks in (job, stage, partition) order: FIFO inside a pool.
        // In FIFO mode there is one pool. A pool's queue is a cursor over `pending`
        // through its jobs, so that a call costs what it launches (O(log n) a task), not
        // the number of tasks waiting.
        let mut queues: BTreeMap<String, PoolQueue> = BTreeMap::new();
        for (job_id, job) in &self.jobs {
            let pool = if self.conf.fair {
                &job.policy.pool
            } else {
                &Pool::DEFAULT
            };
            queues
                .entry(pool.name.clone())
                .or_insert_with(|| PoolQueue::new(pool.clone()))
                .jobs
                .push(*job_id);
        }
        for q in queues.values_mut() {
            q.advance(&self.pending);
        }
        let mut running = self.running_per_pool();
        loop {
            if self.free.is_empty() {
                break;
            }
            // Spark's FairSchedulingAlgorithm: pools below their min share first (least
            // served first), then the lowest running-to-weight ratio.
            let next = queues
                .iter()
                .filter(|(_, q)| q.head.is_some())
                .map(|(name, q)| (name, &q.pool))
                .min_by(|(a, pa), (b, pb)| {
                    let rank = |name: &String, p: &Pool| {
                        let r = *running.get(name.as_str()).unwrap_or(&0) as f64;
                        let needy = r < p.min_share as f64;
                        let ratio = if needy {
                            r / p.min_share.max(1) as f64
                        } else {
                            r / p.weight.max(1) as f64
                        };
                        (!needy, ratio)
                    };
                    let (ra, rb) = (rank(a, pa), rank(b, pb));
                    ra.0.cmp(&rb.0).then(ra.1.total_cmp(&rb.1)).then(a.cmp(b))
                })
                .map(|(name, _)| name.clone());
            let Some(name) = next else { break };
            let queue = queues.get_mut(&name).expect("chosen from the map");
            let Some(task_id) = queue.head else {
                continue;
            };
            let at_cap = queue
                .pool
                .max_slots
                .is_some_and(|m| *running.get(name.as_str()).unwrap_or(&0) >= m);
            if at_cap {
                // The pool has all the slots it may have; its tasks wait.
                queue.head = None;
                continue;
            }
            let launched = self.try_launch(task_id);
            let queue = queues.get_mut(&name).expect("chosen from the map");
            queue.after = Some(task_id);
            queue.advance(&self.pending);
            if launched {
                *running.entry(name).or_default() += 1;
            }
        }
        let wanted: Vec<TaskId> = self.speculatable.iter().copied().collect();
        for task_id in wanted {
            if self.free.is_empty() {
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
            if !self.inputs_ready(job, task_id) {
                continue;
            }
            let Some(executor) = self.pick_executor(job, si, task) else {
                continue;
            };
            self.speculatable.remove(&task_id);
            self.launch(task_id, executor, true);
        }
    }

    /// A stage that every live executor is excluded from fails its job (Spark's behaviour
    /// without dynamic allocation: nothing will change by waiting). Judged once per stage
    /// with pending tasks, not per task.
    fn fail_unschedulable_stages(&mut self) {
        // Walked lazily: the first live executor is usually eligible, so that this costs
        // O(stages) per event, not O(executors).
        let live = || {
            self.executors
                .iter()
                .filter(|(_, e)| !e.decommissioning)
                .map(|(id, _)| *id)
        };
        if live().next().is_none() {
            return;
        }
        let mut unschedulable: Vec<(StageId, TaskId)> = Vec::new();
        for (job_id, job) in &self.jobs {
            for si in 0..job.stages.len() {
                if job.stages[si].status != StageStatus::Running
                    || live().any(|id| job.eligible(si, id))
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
            self.fail_job(
                stage.job,
                JobFailure {
                    message,
                    causes,
                    limit: None,
                },
            );
        }
    }

    /// Launches pending `task_id` if an executor can take it now.
    fn try_launch(&mut self, task_id: TaskId) -> bool {
        let Some(job) = self.jobs.get(&task_id.stage.job) else {
            self.pending.remove(&task_id);
            return false;
        };
        let si = task_id.stage.index as usize;
        if !self.inputs_ready(job, task_id) {
            return false;
        }
        let task = &job.stages[si].tasks[task_id.partition as usize];
        // Process-local: a task reading cached partitions goes where the most of them
        // are, if it can. (Judged per stage first: most stages read no cached dataset,
        // and only theirs pay for walking the map outputs.)
        let local = if job.dag.stages[si]
            .reads()
            .any(|sh| job.dag.cache_of(sh).is_some())
        {
            self.task_inputs(task_id).and_then(|inputs| {
                inputs
                    .iter()
                    .filter(|l| job.dag.cache_of(l.shuffle).is_some())
                    .max_by_key(|l| l.size)
                    .map(|l| l.executor)
            })
        } else {
            None
        };
        let Some(executor) = local
            .filter(|e| {
                self.executors.get(e).is_some_and(|x| x.has_free_slot())
                    && job.eligible(si, *e)
                    && !task.failed_on.contains(e)
            })
            .or_else(|| self.pick_executor(job, si, task))
        else {
            return false;
        };
        self.pending.remove(&task_id);
        self.launch(task_id, executor, false);
        true
    }

    /// Running attempts per pool, over every executor.
    fn running_per_pool(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for (job, n) in &self.running_per_job {
            let name = match self.jobs.get(job) {
                Some(j) if self.conf.fair => j.policy.pool.name.as_str(),
                _ => "",
            };
            match out.get_mut(name) {
                Some(total) => *total += n,
                None => {
                    out.insert(name.to_string(), *n);
                }
            }
        }
        out
    }

    /// Least-loaded executor with a free slot that may run this task: never an excluded
    /// one, never one already running it, and not one it failed on while another exists.
    fn pick_executor(&self, job: &Job, stage: usize, task: &TaskState) -> Option<ExecutorId> {
        let allowed = |id: ExecutorId| {
            job.eligible(stage, id) && !task.running.values().any(|r| r.executor == id)
        };
        // Judged only for a task that failed somewhere (rare): the walk is over every
        // executor.
        let elsewhere_exists = !task.failed_on.is_empty()
            && self
                .executors
                .iter()
                .any(|(id, e)| !e.decommissioning && allowed(*id) && !task.failed_on.contains(id));
        self.free
            .iter()
            .map(|(_, id)| *id)
            .find(|id| allowed(*id) && (!elsewhere_exists || !task.failed_on.contains(id)))
    }

    fn launch(&mut self, task_id: TaskId, executor: ExecutorId, speculative: bool) {
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
        self.attempt_started(executor, attempt);
        self.commands.push_back(Command::Launch {
            attempt,
            executor,
            speculative,
        });
    }
}

/// A pool's pending tasks, walked job by job in `pending` (which is in job order).
struct PoolQueue {
    pool: Pool,
    /// The pool's jobs, in job order.
    jobs: Vec<JobId>,
    /// Index in `jobs` of the job `head` is of.
    job: usize,
    /// The last task taken (launched or passed over).
    after: Option<TaskId>,
    /// The next pending task to try; `None`: the pool has nothing more this round.
    head: Option<TaskId>,
}

impl PoolQueue {
    fn new(pool: Pool) -> Self {
        PoolQueue {
            pool,
            jobs: Vec::new(),
            job: 0,
            after: None,
            head: None,
        }
    }

    /// Moves `head` to the first pending task after `after` among the pool's jobs.
    fn advance(&mut self, pending: &BTreeSet<TaskId>) {
        use std::ops::Bound;
        while let Some(&job) = self.jobs.get(self.job) {
            let from = match self.after {
                Some(t) if t.stage.job == job => Bound::Excluded(t),
                _ => Bound::Included(TaskId {
                    stage: StageId { job, index: 0 },
                    partition: 0,
                }),
            };
            if let Some(t) = pending
                .range((from, Bound::Unbounded))
                .next()
                .filter(|t| t.stage.job == job)
            {
                self.head = Some(*t);
                return;
            }
            self.job += 1;
            self.after = None;
        }
        self.head = None;
    }
}
