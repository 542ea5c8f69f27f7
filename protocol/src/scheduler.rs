//! The driver's scheduling brain as a pure state machine: DAG scheduler (stage barriers),
//! task scheduler (filling executor slots) and map-output tracker in one place.
//!
//! The driver feeds it events (`submit_job`, `executor_added`, `task_succeeded`, ...) and
//! drains [`Command`]s (`Launch`, `CommitTask`, `JobSucceeded`, ...) with
//! [`Scheduler::poll_command`]. Time only enters through `now_ms` arguments, so every
//! transition is unit-testable without sockets or clocks.

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
                    map_partition: i as u32,
                    executor: status.executor,
                    size,
                });
            }
        }
        Some(out)
    }

    /// Per reduce partition, total bytes over all map outputs (for reporting).
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
    /// segments to fetch.
    Launch {
        attempt: TaskAttemptId,
        executor: ExecutorId,
        inputs: Vec<MapLocation>,
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

#[derive(Clone, Debug)]
pub struct SchedulerConf {
    pub max_task_failures: u32,
    pub executor_timeout_ms: u64,
}

impl Default for SchedulerConf {
    fn default() -> Self {
        SchedulerConf {
            max_task_failures: 4,
            executor_timeout_ms: 120_000,
        }
    }
}

#[derive(Debug)]
struct Executor {
    cores: u32,
    running: BTreeSet<TaskAttemptId>,
    last_heartbeat_ms: u64,
    tasks_succeeded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageStatus {
    /// Parents not done yet.
    Waiting,
    Running,
    Done,
}

#[derive(Debug, Default)]
struct TaskState {
    next_attempt: u32,
    running: BTreeMap<u32, ExecutorId>,
    done: bool,
    failures: Vec<Vec<String>>,
    failed_on: BTreeSet<ExecutorId>,
}

#[derive(Debug)]
struct Stage {
    status: StageStatus,
    tasks: Vec<TaskState>,
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
}

/// Read-only view of an executor's load, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorLoad {
    pub id: ExecutorId,
    pub cores: u32,
    pub running: usize,
    pub tasks_succeeded: u64,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    conf: SchedulerConf,
    executors: BTreeMap<ExecutorId, Executor>,
    jobs: BTreeMap<JobId, Job>,
    /// Tasks ready to launch, in (job, stage, partition) order: FIFO between jobs.
    pending: BTreeSet<TaskId>,
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

    pub fn executors(&self) -> Vec<ExecutorLoad> {
        self.executors
            .iter()
            .map(|(id, e)| ExecutorLoad {
                id: *id,
                cores: e.cores,
                running: e.running.len(),
                tasks_succeeded: e.tasks_succeeded,
            })
            .collect()
    }

    pub fn total_cores(&self) -> u32 {
        self.executors.values().map(|e| e.cores).sum()
    }

    pub fn stage_def(&self, stage: StageId) -> Option<&crate::dag::StageDef> {
        self.jobs
            .get(&stage.job)
            .and_then(|j| j.dag.stages.get(stage.index as usize))
    }

    pub fn executor_added(&mut self, id: ExecutorId, cores: u32, now_ms: u64) {
        self.executors.insert(
            id,
            Executor {
                cores: cores.max(1),
                running: BTreeSet::new(),
                last_heartbeat_ms: now_ms,
                tasks_succeeded: 0,
            },
        );
        self.schedule();
    }

    pub fn heartbeat(&mut self, id: ExecutorId, now_ms: u64) {
        if let Some(e) = self.executors.get_mut(&id) {
            e.last_heartbeat_ms = now_ms;
        }
    }

    /// Declares executors lost whose last heartbeat is older than the timeout.
    pub fn tick(&mut self, now_ms: u64) -> Vec<ExecutorId> {
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
        silent
    }

    /// The executor is gone: its running attempts go back to pending (not counted as
    /// failures), its map outputs are forgotten and the stages that made them run again.
    pub fn executor_lost(&mut self, id: ExecutorId) {
        let Some(exec) = self.executors.remove(&id) else {
            return;
        };
        for attempt in exec.running {
            if let Some(task) = self.task_mut(attempt.task) {
                task.running.remove(&attempt.attempt);
                if !task.done && task.running.is_empty() {
                    self.pending.insert(attempt.task);
                }
            }
        }
        for (job_id, shuffle, map) in self.map_outputs.remove_executor(id) {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let Some(writer) = job.dag.stages.iter().position(|s| {
                matches!(s.output, StageOutput::ShuffleWrite { shuffle: sh, .. } if sh == shuffle)
            }) else {
                continue;
            };
            // Children that still need this output wait for it again.
            let needed = job.dag.stages.iter().enumerate().any(|(i, s)| {
                s.parents.contains(&(writer as u32)) && job.stages[i].status != StageStatus::Done
            });
            if !needed {
                continue;
            }
            job.stages[writer].tasks[map as usize].done = false;
            job.stages[writer].status = StageStatus::Running;
            self.pending.insert(TaskId {
                stage: StageId {
                    job: job_id,
                    index: writer as u32,
                },
                partition: map,
            });
            for (i, s) in job.dag.stages.iter().enumerate() {
                if s.parents.contains(&(writer as u32))
                    && job.stages[i].status == StageStatus::Running
                {
                    job.stages[i].status = StageStatus::Waiting;
                    self.pending
                        .retain(|t| !(t.stage.job == job_id && t.stage.index == i as u32));
                }
            }
        }
        self.schedule();
    }

    pub fn submit_job(&mut self, job: JobId, dag: JobDag) {
        let stages = dag
            .stages
            .iter()
            .map(|s| Stage {
                status: StageStatus::Waiting,
                tasks: (0..s.partitions).map(|_| TaskState::default()).collect(),
            })
            .collect();
        for s in &dag.stages {
            if let StageOutput::ShuffleWrite { shuffle, .. } = s.output {
                self.map_outputs
                    .register_shuffle(job, shuffle, s.partitions);
            }
        }
        self.jobs.insert(job, Job { dag, stages });
        self.advance_stages(job);
        self.schedule();
    }

    /// Stops a job: pending tasks are dropped, running ones are left to finish unheard.
    pub fn cancel_job(&mut self, job: JobId) {
        if self.jobs.remove(&job).is_some() {
            self.pending.retain(|t| t.stage.job != job);
            self.map_outputs.remove_job(job);
            self.commands.push_back(Command::CleanJob { job });
        }
    }

    pub fn task_succeeded(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        map_sizes: Option<Vec<u64>>,
    ) {
        if let Some(e) = self.executors.get_mut(&executor) {
            e.running.remove(&attempt);
            e.tasks_succeeded += 1;
        }
        let job_id = attempt.task.stage.job;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            self.schedule();
            return;
        };
        let stage_index = attempt.task.stage.index as usize;
        let Some(task) = job
            .stages
            .get_mut(stage_index)
            .and_then(|s| s.tasks.get_mut(attempt.task.partition as usize))
        else {
            return;
        };
        task.running.remove(&attempt.attempt);
        if task.done {
            // A duplicate (an older attempt that finished late): its output never counts.
            self.schedule();
            return;
        }
        task.done = true;
        self.commands.push_back(Command::CommitTask { attempt });
        if let StageOutput::ShuffleWrite {
            shuffle,
            partitions,
            ..
        } = job.dag.stages[stage_index].output
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

    pub fn task_failed(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        failure: TaskFailure,
    ) {
        if let Some(e) = self.executors.get_mut(&executor) {
            e.running.remove(&attempt);
        }
        let job_id = attempt.task.stage.job;
        let max = self.conf.max_task_failures;
        let Some(task) = self.task_mut(attempt.task) else {
            self.schedule();
            return;
        };
        task.running.remove(&attempt.attempt);
        if task.done {
            self.schedule();
            return;
        }
        task.failures.push(failure.chain);
        task.failed_on.insert(executor);
        let failures = task.failures.len() as u32;
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
        } else if task.running.is_empty() {
            self.pending.insert(attempt.task);
        }
        self.schedule();
    }

    fn fail_job(&mut self, job: JobId, error: JobFailure) {
        self.cancel_job(job);
        self.commands.push_back(Command::JobFailed { job, error });
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut TaskState> {
        self.jobs
            .get_mut(&id.stage.job)?
            .stages
            .get_mut(id.stage.index as usize)?
            .tasks
            .get_mut(id.partition as usize)
    }

    /// Marks finished stages done, starts stages whose parents are all done, and ends the
    /// job when its result stage is done.
    fn advance_stages(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        for i in 0..job.stages.len() {
            if job.stages[i].status == StageStatus::Running && job.stages[i].all_done() {
                job.stages[i].status = StageStatus::Done;
            }
        }
        for i in 0..job.stages.len() {
            let ready = job.dag.stages[i]
                .parents
                .iter()
                .all(|p| job.stages[*p as usize].status == StageStatus::Done);
            if job.stages[i].status == StageStatus::Waiting && ready {
                job.stages[i].status = StageStatus::Running;
                for (p, t) in job.stages[i].tasks.iter().enumerate() {
                    if !t.done && t.running.is_empty() {
                        self.pending.insert(TaskId {
                            stage: StageId {
                                job: job_id,
                                index: i as u32,
                            },
                            partition: p as u32,
                        });
                    }
                }
                if job.stages[i].all_done() {
                    job.stages[i].status = StageStatus::Done;
                }
            }
        }
        if job
            .stages
            .last()
            .is_some_and(|s| s.status == StageStatus::Done)
        {
            self.jobs.remove(&job_id);
            self.map_outputs.remove_job(job_id);
            self.commands
                .push_back(Command::JobSucceeded { job: job_id });
            self.commands.push_back(Command::CleanJob { job: job_id });
        }
    }

    /// Fills free executor slots with pending tasks, in order. A task that failed on an
    /// executor goes elsewhere when another executor exists.
    fn schedule(&mut self) {
        let pending: Vec<TaskId> = self.pending.iter().copied().collect();
        for task_id in pending {
            let has_free = self
                .executors
                .values()
                .any(|e| (e.running.len() as u32) < e.cores);
            if !has_free {
                break;
            }
            let Some(job) = self.jobs.get(&task_id.stage.job) else {
                self.pending.remove(&task_id);
                continue;
            };
            let stage_def = &job.dag.stages[task_id.stage.index as usize];
            let inputs = match stage_def.input {
                StageInput::Shuffle { shuffle, .. } => {
                    match self
                        .map_outputs
                        .locations(task_id.stage.job, shuffle, task_id.partition)
                    {
                        Some(l) => l,
                        None => continue,
                    }
                }
                StageInput::TextFile { .. } => Vec::new(),
            };
            let task = &job.stages[task_id.stage.index as usize].tasks[task_id.partition as usize];
            let avoid = &task.failed_on;
            let elsewhere_exists = self.executors.keys().any(|e| !avoid.contains(e));
            // Least-loaded executor with a free slot, avoiding past failures when possible.
            let choice = self
                .executors
                .iter()
                .filter(|(_, e)| (e.running.len() as u32) < e.cores)
                .filter(|(id, _)| !elsewhere_exists || !avoid.contains(id))
                .min_by_key(|(id, e)| (e.running.len() * 1000 / e.cores as usize, **id))
                .map(|(id, _)| *id);
            let Some(executor) = choice else {
                continue;
            };
            let Some(task) = self.task_mut(task_id) else {
                continue;
            };
            let attempt = TaskAttemptId {
                task: task_id,
                attempt: task.next_attempt,
            };
            task.next_attempt += 1;
            task.running.insert(attempt.attempt, executor);
            self.pending.remove(&task_id);
            if let Some(e) = self.executors.get_mut(&executor) {
                e.running.insert(attempt);
            }
            self.commands.push_back(Command::Launch {
                attempt,
                executor,
                inputs,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::build_dag;
    use crate::plan::{Action, FnRef, LogicalPlan, Node};

    const J: JobId = JobId(1);
    const E1: ExecutorId = ExecutorId(1);
    const E2: ExecutorId = ExecutorId(2);

    fn two_stage_dag(maps: u32, reduces: u32) -> JobDag {
        let plan = LogicalPlan {
            nodes: vec![
                Node::TextFile {
                    paths: vec!["in".into()],
                    min_partitions: 1,
                    decode: FnRef(1),
                },
                Node::Shuffle {
                    parent: 0,
                    partitions: Some(reduces),
                    write: FnRef(2),
                    read: FnRef(3),
                    name: "reduce_by_key".into(),
                },
            ],
            action: Action::Count,
        };
        build_dag(&plan, &|_| maps, None).unwrap()
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
        s.submit_job(J, two_stage_dag(3, 2));
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
        s.submit_job(J, two_stage_dag(2, 2));
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
                    map_partition: 0,
                    executor: e0,
                    size: 10
                },
                MapLocation {
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
        s.submit_job(J, two_stage_dag(1, 1));
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
        let mut s = Scheduler::new(SchedulerConf {
            max_task_failures: 3,
            ..Default::default()
        });
        s.executor_added(E1, 1, 0);
        s.submit_job(J, two_stage_dag(1, 1));
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
        s.submit_job(J, two_stage_dag(1, 1));
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
        s.submit_job(J, two_stage_dag(1, 1));
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
        s.submit_job(J, two_stage_dag(2, 1));
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
        let mut s = Scheduler::new(SchedulerConf {
            max_task_failures: 1,
            ..Default::default()
        });
        s.executor_added(E1, 1, 0);
        s.submit_job(J, two_stage_dag(1, 1));
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
            ..Default::default()
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
        s.submit_job(JobId(1), two_stage_dag(2, 1));
        s.submit_job(JobId(2), two_stage_dag(2, 1));
        s.executor_added(E1, 3, 0);
        let l = launches(&drain(&mut s));
        let jobs: Vec<u64> = l.iter().map(|x| x.0.task.stage.job.0).collect();
        assert_eq!(jobs, vec![1, 1, 2]);
    }
}
