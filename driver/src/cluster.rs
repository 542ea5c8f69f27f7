//! The driver's event loop: the IO shell around the [`Scheduler`] state machine. It turns
//! the scheduler's commands into messages to executors, and what executors say back into
//! scheduler events, after checking that each status is one the scheduler waits for.
//!
//! It keeps no state of its own about executors or where data lives: the scheduler
//! decides who is alive and where cached partitions are; the loop holds connections,
//! the jobs' results on their way to the driver program, and per-application reports.

use crate::output::OutputCommit;
use crate::ui::{EventSink, now_ms as wall_ms};
use flint_protocol::dag::{JobDag, StageInput, StageOutput};
use flint_protocol::events::{self as ev, StageInfo, TaskOutcome};
use flint_protocol::ids::{ExecutorId, JobId, ModuleHash, ShuffleId, TaskAttemptId};
use flint_protocol::plan::{Action, NodeIndex};
use flint_protocol::scheduler::{
    Command, JobFailure, JobPolicy, Scheduler, SchedulerConf, TaskFailure, fmt_ms,
};
use flint_protocol::wire::{
    self, AppError, AppErrorKind, BuildInput, CacheTarget, ExecutorSummary, FetchResult,
    FromExecutor, ShuffleSideInput, SubmitEvent, TaskDescriptor, TaskError, TaskErrorKind,
    TaskInput, TaskLimits, TaskOutput, TaskPiece, TaskResult, TaskStatus, TaskSuccess, ToExecutor,
};
use flint_transport::net::{self, NetError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// One action's job, ready to schedule.
pub struct JobSpec {
    pub app: u64,
    pub dag: JobDag,
    pub module: ModuleHash,
    /// Per source node of the plan, the input of each of its partitions.
    pub sources: Arc<HashMap<NodeIndex, Vec<TaskInput>>>,
    /// Where a `save_*` action writes.
    pub output: Option<Arc<OutputCommit>>,
    pub limits: TaskLimits,
    pub policy: JobPolicy,
    /// The component's name, the action and the tenant, for the UI.
    pub name: String,
    pub action: String,
    pub tenant: String,
    /// The submitter's stream: stage progress goes there.
    pub progress: mpsc::Sender<SubmitEvent>,
    /// The job's shuffle capability (random): only its own tasks can fetch its segments.
    pub shuffle_secret: [u8; 16],
    /// The application's capability for its cached partitions (random, per application).
    pub app_secret: [u8; 16],
    /// Result bytes the job may bring back: what is left of its action's
    /// `driver.max_result_size`.
    pub max_result_bytes: u64,
    /// Accumulator bytes it may add: what is left of its application's
    /// `driver.max_accumulator_bytes`.
    pub max_accumulator_bytes: u64,
}

/// A task's accumulator updates: (accumulator id, encoded partial value).
pub type AccumulatorUpdates = Vec<(u32, Vec<u8>)>;

/// What a finished job hands its driver program.
pub struct JobResults {
    /// Per result partition, the committed attempt's output.
    pub results: Vec<Option<TaskSuccess>>,
    /// The accumulator updates of the committed attempts.
    pub updates: AccumulatorUpdates,
    /// Result bytes brought back.
    pub result_bytes: u64,
    /// Accumulator bytes among `updates`.
    pub accumulator_bytes: u64,
}

pub type JobOutcome = Result<JobResults, AppError>;

pub enum Event {
    ExecutorUp {
        cores: u32,
        shuffle_addr: String,
        metrics_addr: Option<String>,
        conn: quinn::Connection,
        tx: mpsc::Sender<ToExecutor>,
        reply: oneshot::Sender<ExecutorId>,
    },
    Executor {
        id: ExecutorId,
        msg: FromExecutor,
    },
    ExecutorDown {
        id: ExecutorId,
    },
    /// A stored result arrived (or could not be fetched); its status counts now.
    ResultFetched {
        id: ExecutorId,
        status: Box<TaskStatus>,
        bytes: u64,
        fetched: Result<Vec<Vec<u8>>, String>,
    },
    Submit {
        job: JobId,
        spec: Box<JobSpec>,
        reply: oneshot::Sender<JobOutcome>,
    },
    TotalCores {
        reply: oneshot::Sender<u32>,
    },
    /// The application drops its cached dataset `id`.
    Unpersist {
        app: u64,
        id: u32,
    },
    /// The application is over (or its submitter left): its jobs stop, its cached data
    /// goes, and what its executors reported is handed back.
    AppDone {
        app: u64,
        reply: Option<oneshot::Sender<Vec<ExecutorSummary>>>,
    },
}

struct ExecutorConn {
    addr: String,
    tx: mpsc::Sender<ToExecutor>,
    conn: quinn::Connection,
    /// Stored results fetched from it at once: a stalled executor holds only its own.
    fetches: Arc<Semaphore>,
    /// The version of each shuffle's map statuses it was sent (until its job is cleaned).
    statuses_sent: HashMap<(JobId, ShuffleId), u64>,
}

struct RunningJob {
    spec: Box<JobSpec>,
    reply: Option<oneshot::Sender<JobOutcome>>,
    results: Vec<Option<TaskSuccess>>,
    /// Successful attempts waiting for the scheduler's commit decision, with their
    /// accumulator updates.
    unclaimed: HashMap<TaskAttemptId, (TaskSuccess, AccumulatorUpdates)>,
    /// Accumulator updates of committed attempts: each task counts once.
    updates: AccumulatorUpdates,
    /// Per stage, partitions done (for progress reports).
    done: Vec<BTreeSet<u32>>,
    /// Result bytes committed, and being fetched.
    result_bytes: u64,
    fetching: u64,
    /// Tasks whose result is being fetched (a second attempt's is not).
    fetching_tasks: BTreeSet<flint_protocol::ids::TaskId>,
    accumulator_bytes: u64,
}

/// Stored results fetched at once from one executor.
const RESULT_FETCHES: usize = 2;

/// Bytes of map statuses per message at most (a frame may have 256 MiB): a shuffle of
/// 1,000 reduce partitions sends about 16,000 map outputs a part.
const STATUS_PART_BYTES: usize = 16 << 20;

/// Time for a stored result to arrive: a base, and a rate no link slower than 1 MiB/s
/// would miss. A fetch past it fails, and its task runs again.
fn fetch_time(bytes: u64) -> Duration {
    Duration::from_secs(30 + bytes / (1 << 20))
}

pub struct ClusterLoop {
    scheduler: Scheduler,
    executors: HashMap<ExecutorId, ExecutorConn>,
    jobs: HashMap<JobId, RunningJob>,
    apps: HashMap<u64, HashMap<ExecutorId, ExecutorSummary>>,
    next_executor: u32,
    started: Instant,
    tick: Duration,
    sink: Arc<EventSink>,
    /// For what the loop's own tasks report back (fetched results).
    events: mpsc::Sender<Event>,
}

impl ClusterLoop {
    pub fn new(
        conf: SchedulerConf,
        tick: Duration,
        sink: Arc<EventSink>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        ClusterLoop {
            sink,
            scheduler: Scheduler::new(conf),
            executors: HashMap::new(),
            jobs: HashMap::new(),
            apps: HashMap::new(),
            next_executor: 1,
            started: Instant::now(),
            tick,
            events,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(self.tick);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => return,
                },
                _ = tick.tick() => {
                    let now = self.now_ms();
                    self.scheduler.tick(now);
                }
            }
            self.drain_commands();
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = self.now_ms();
        self.scheduler.set_time(now);
        match ev {
            Event::ExecutorUp {
                cores,
                shuffle_addr,
                metrics_addr,
                conn,
                tx,
                reply,
            } => {
                let id = ExecutorId(self.next_executor);
                self.next_executor += 1;
                tracing::info!(executor = id.0, cores, addr = %shuffle_addr, "executor registered");
                self.sink.emit(ev::Event::ExecutorAdded {
                    at_ms: wall_ms(),
                    executor: id,
                    addr: shuffle_addr.clone(),
                    cores,
                    metrics_addr,
                });
                self.executors.insert(
                    id,
                    ExecutorConn {
                        addr: shuffle_addr,
                        tx,
                        conn,
                        fetches: Arc::new(Semaphore::new(RESULT_FETCHES)),
                        statuses_sent: HashMap::new(),
                    },
                );
                let _ = reply.send(id);
                self.scheduler.executor_added(id, cores, now);
            }
            Event::Executor { id, msg } => {
                if !self.scheduler.is_registered(id) {
                    // Removed already: whatever it says no longer counts.
                    return;
                }
                self.scheduler.heartbeat(id, now);
                self.sink.heartbeat(id.0);
                match msg {
                    FromExecutor::Status(status) => self.task_status(id, *status),
                    FromExecutor::Heartbeat { .. } => {}
                    FromExecutor::Decommissioning => {
                        tracing::info!(
                            executor = id.0,
                            "executor is shutting down: no new tasks for it"
                        );
                        self.sink.emit(ev::Event::ExecutorDecommissioning {
                            at_ms: wall_ms(),
                            executor: id,
                        });
                        self.scheduler.executor_decommissioning(id);
                    }
                    FromExecutor::CachedDropped { job, shuffle, maps } => {
                        let Some(app) = job.cached_app() else { return };
                        tracing::debug!(
                            executor = id.0,
                            app,
                            cache = shuffle.0,
                            "cached partitions evicted"
                        );
                        self.scheduler.cached_dropped(id, app, shuffle.0, &maps);
                    }
                }
            }
            Event::ExecutorDown { id } => self.scheduler.executor_disconnected(id),
            Event::ResultFetched {
                id,
                mut status,
                bytes,
                fetched,
            } => {
                if let Some(job) = self.jobs.get_mut(&status.attempt.task.stage.job) {
                    job.fetching = job.fetching.saturating_sub(bytes);
                    job.fetching_tasks.remove(&status.attempt.task);
                }
                if !self.scheduler.accepts_status(status.attempt, id) {
                    return;
                }
                status.result = match (status.result, fetched) {
                    (Ok(TaskSuccess::Rows { rows, .. }), Ok(batches)) => Ok(TaskSuccess::Rows {
                        rows,
                        result: TaskResult::Direct(batches),
                    }),
                    (_, Err(why)) => Err(TaskError {
                        kind: TaskErrorKind::Io,
                        chain: vec![format!(
                            "fetching the result of {} from executor {}: {why}",
                            status.attempt, id.0
                        )],
                    }),
                    (other, Ok(_)) => other,
                };
                self.finish_status(id, *status);
            }
            Event::Submit { job, spec, reply } => self.submit(job, spec, reply),
            Event::TotalCores { reply } => {
                let _ = reply.send(self.scheduler.total_cores());
            }
            Event::Unpersist { app, id } => {
                self.scheduler.unpersist(app, id);
                for conn in self.executors.values() {
                    let _ = conn.tx.try_send(ToExecutor::DropCached {
                        job: JobId::cache_of_app(app),
                        shuffle: ShuffleId(id),
                    });
                }
            }
            Event::AppDone { app, reply } => {
                let left: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, j)| j.spec.app == app)
                    .map(|(id, _)| *id)
                    .collect();
                for job in left {
                    tracing::info!(app, job = job.0, "the application ended: its job stops");
                    self.scheduler.cancel_job(job);
                    self.end_job(
                        job,
                        Err(AppError::new(
                            AppErrorKind::Driver,
                            vec!["the application ended before its job did".into()],
                        )),
                    );
                }
                self.scheduler.app_ended(app);
                for conn in self.executors.values() {
                    let _ = conn.tx.try_send(ToExecutor::CleanJob {
                        job: JobId::cache_of_app(app),
                    });
                }
                let mut v: Vec<ExecutorSummary> = self
                    .apps
                    .remove(&app)
                    .unwrap_or_default()
                    .into_values()
                    .collect();
                v.sort_by_key(|s| s.executor);
                if let Some(reply) = reply {
                    let _ = reply.send(v);
                }
            }
        }
    }

    fn submit(&mut self, job: JobId, spec: Box<JobSpec>, reply: oneshot::Sender<JobOutcome>) {
        let partitions = spec.dag.result_stage().partitions as usize;
        let dag = spec.dag.clone();
        let policy = spec.policy.clone();
        let app = spec.app;
        self.sink.emit(ev::Event::JobStarted {
            at_ms: wall_ms(),
            job,
            app,
            name: spec.name.clone(),
            action: spec.action.clone(),
            tenant: spec.tenant.clone(),
            stages: stage_infos(&dag),
        });
        self.jobs.insert(
            job,
            RunningJob {
                done: vec![Default::default(); dag.stages.len()],
                spec,
                reply: Some(reply),
                results: (0..partitions).map(|_| None).collect(),
                unclaimed: HashMap::new(),
                updates: Vec::new(),
                result_bytes: 0,
                fetching: 0,
                fetching_tasks: BTreeSet::new(),
                accumulator_bytes: 0,
            },
        );
        self.scheduler.submit_job(job, app, dag, policy);
    }

    /// What `executor` did for application `app`, so far.
    fn summary(&mut self, app: u64, executor: ExecutorId) -> &mut ExecutorSummary {
        let addr = self.executors.get(&executor).map(|e| e.addr.clone());
        self.apps
            .entry(app)
            .or_default()
            .entry(executor)
            .or_insert_with(|| ExecutorSummary {
                executor,
                addr: addr.unwrap_or_default(),
                ..Default::default()
            })
    }

    /// A status from `executor`. Only one the scheduler waits for counts: the attempt
    /// must have been launched on this executor and not have ended. A stored result is
    /// fetched first, if the job may still bring that many bytes back.
    fn task_status(&mut self, executor: ExecutorId, status: TaskStatus) {
        let attempt = status.attempt;
        if !self.scheduler.accepts_status(attempt, executor) {
            tracing::warn!(
                executor = executor.0,
                %attempt,
                "ignoring a status for an attempt that is not running on this executor"
            );
            return;
        }
        let stored = match &status.result {
            Ok(TaskSuccess::Rows {
                result: TaskResult::Stored { bytes },
                ..
            }) => Some(*bytes),
            _ => None,
        };
        let (Some(bytes), Some(job)) = (stored, self.jobs.get_mut(&attempt.task.stage.job)) else {
            self.finish_status(executor, status);
            return;
        };
        let job_id = attempt.task.stage.job;
        // Another attempt's result counts already, or is on its way: this one is not
        // fetched, and does not count as a failure.
        if self.scheduler.task_done(attempt.task) || job.fetching_tasks.contains(&attempt.task) {
            self.scheduler.task_killed(attempt, executor);
            return;
        }
        let max = job.spec.max_result_bytes;
        let wanted = job
            .result_bytes
            .checked_add(job.fetching)
            .and_then(|b| b.checked_add(bytes));
        if wanted.is_none_or(|w| w > max) {
            let error = result_too_large(job_id, wanted.unwrap_or(u64::MAX), max);
            self.fail_job(job_id, error);
            // The attempt is over for the scheduler too; its stored bytes go with the job.
            self.scheduler.task_killed(attempt, executor);
            return;
        }
        let Some((conn, permits)) = self
            .executors
            .get(&executor)
            .map(|e| (e.conn.clone(), e.fetches.clone()))
        else {
            return;
        };
        job.fetching += bytes;
        job.fetching_tasks.insert(attempt.task);
        let events = self.events.clone();
        tokio::spawn(async move {
            let fetched = async {
                let _permit = permits.acquire_owned().await;
                match tokio::time::timeout(fetch_time(bytes), fetch_result(&conn, attempt, bytes))
                    .await
                {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "the {bytes} bytes did not arrive within {:?}",
                        fetch_time(bytes)
                    )),
                }
            }
            .await;
            let _ = events
                .send(Event::ResultFetched {
                    id: executor,
                    status: Box::new(status),
                    bytes,
                    fetched,
                })
                .await;
        });
    }

    /// A status that counts, with its result at hand: recorded for the UI and the
    /// summary, then handed to the scheduler.
    fn finish_status(&mut self, executor: ExecutorId, status: TaskStatus) {
        let attempt = status.attempt;
        let outcome = match &status.result {
            Ok(_) => TaskOutcome::Succeeded,
            Err(e) => match &e.kind {
                TaskErrorKind::Killed => TaskOutcome::Killed {
                    reason: e.chain.join(": "),
                },
                TaskErrorKind::FetchFailed { executor: from, .. } => TaskOutcome::FetchFailed {
                    from: *from,
                    chain: e.chain.clone(),
                },
                kind => TaskOutcome::Failed {
                    kind: format!("{kind:?}"),
                    chain: e.chain.clone(),
                },
            },
        };
        self.sink.emit(ev::Event::TaskEnded {
            at_ms: wall_ms(),
            attempt,
            executor,
            outcome,
            metrics: status.metrics.clone(),
            output: status.output.clone(),
        });
        if status.result.is_ok()
            && let Some(job) = self.jobs.get_mut(&attempt.task.stage.job)
            && let Some(done) = job.done.get_mut(attempt.task.stage.index as usize)
            && done.insert(attempt.task.partition)
        {
            let total = job.spec.dag.stages[attempt.task.stage.index as usize].partitions;
            let _ = job.spec.progress.try_send(SubmitEvent::StageProgress {
                stage: attempt.task.stage,
                done: done.len() as u32,
                total,
            });
        }
        if let Some(job) = self.jobs.get(&attempt.task.stage.job) {
            let s = self.summary(job.spec.app, executor);
            s.metrics.add(&status.metrics);
            s.compiles += status.metrics.compiled as u64;
            match &status.result {
                Ok(_) => s.tasks_succeeded += 1,
                Err(e) if e.kind == TaskErrorKind::Killed => s.tasks_killed += 1,
                Err(e) if matches!(e.kind, TaskErrorKind::FetchFailed { .. }) => {
                    s.fetch_failures += 1
                }
                Err(_) => s.tasks_failed += 1,
            }
        }
        let result = match status.result {
            Ok(success) => match self.check_output(attempt, &success) {
                Ok(()) => Ok(success),
                Err(why) => Err(TaskError {
                    kind: TaskErrorKind::Io,
                    chain: vec![format!("executor {}: {why}", executor.0)],
                }),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(success) => {
                tracing::debug!(
                    job = attempt.task.stage.job.0,
                    stage = attempt.task.stage.index,
                    partition = attempt.task.partition,
                    attempt = attempt.attempt,
                    executor = executor.0,
                    "task succeeded"
                );
                let sizes = match &success {
                    TaskSuccess::MapOutput { sizes } => Some(sizes.clone()),
                    _ => None,
                };
                // Only the attempt that makes its task done is kept for its commit: a late
                // duplicate, or a map output that does not fit its stage, never will be,
                // and its rows would outlive the budget that admitted them.
                let was_done = self.scheduler.task_done(attempt.task);
                self.scheduler.task_succeeded(attempt, executor, sizes);
                if !was_done
                    && self.scheduler.task_done(attempt.task)
                    && let Some(job) = self.jobs.get_mut(&attempt.task.stage.job)
                {
                    job.unclaimed
                        .insert(attempt, (success, status.accumulators));
                }
            }
            Err(e) => {
                let mut chain = vec![format!("{attempt} on executor {}", executor.0)];
                chain.extend(e.chain);
                match e.kind {
                    TaskErrorKind::Killed => self.scheduler.task_killed(attempt, executor),
                    TaskErrorKind::FetchFailed {
                        executor: from,
                        map_partition,
                    } => {
                        tracing::warn!(%attempt, from = from.0, map_partition, "fetch failed: {}", chain.join(": "));
                        self.scheduler.task_fetch_failed(
                            attempt,
                            executor,
                            from,
                            map_partition,
                            chain,
                        )
                    }
                    kind => {
                        tracing::info!(%attempt, executor = executor.0, "task failed: {}", chain.join(": "));
                        let limit = match &kind {
                            TaskErrorKind::Limit(l) => Some(l.setting().to_string()),
                            _ => None,
                        };
                        self.scheduler.task_failed(
                            attempt,
                            executor,
                            TaskFailure {
                                chain,
                                retryable: !kind.is_deterministic(),
                                limit,
                            },
                        )
                    }
                }
            }
        }
    }

    /// Whether a success is the kind of output its stage makes (the scheduler checks a
    /// map output's sizes itself).
    fn check_output(&self, attempt: TaskAttemptId, success: &TaskSuccess) -> Result<(), String> {
        let Some(stage) = self
            .jobs
            .get(&attempt.task.stage.job)
            .and_then(|j| j.spec.dag.stages.get(attempt.task.stage.index as usize))
        else {
            return Ok(());
        };
        let fits = matches!(
            (&stage.output, success),
            (
                StageOutput::ShuffleWrite { .. },
                TaskSuccess::MapOutput { .. }
            ) | (
                StageOutput::Result(Action::Collect { .. }),
                TaskSuccess::Rows {
                    result: TaskResult::Direct(_),
                    ..
                }
            ) | (StageOutput::Result(Action::Count), TaskSuccess::Count(_))
                | (
                    StageOutput::Result(Action::Save { .. }),
                    TaskSuccess::File { .. }
                )
        );
        if fits {
            Ok(())
        } else {
            Err(format!(
                "reported an output that {} does not produce",
                attempt.task.stage
            ))
        }
    }

    fn drain_commands(&mut self) {
        while let Some(cmd) = self.scheduler.poll_command() {
            match cmd {
                Command::Launch {
                    attempt,
                    executor,
                    speculative,
                } => {
                    self.sink.emit(ev::Event::TaskStarted {
                        at_ms: wall_ms(),
                        attempt,
                        executor,
                        speculative,
                    });
                    if speculative {
                        tracing::info!(%attempt, executor = executor.0, "launching a speculative copy of a slow task");
                        if let Some(job) = self.jobs.get(&attempt.task.stage.job) {
                            let app = job.spec.app;
                            self.summary(app, executor).tasks_speculated += 1;
                        }
                    }
                    self.launch(attempt, executor)
                }
                Command::KillTask { attempt, executor } => {
                    if let Some(e) = self.executors.get(&executor) {
                        let _ = e.tx.try_send(ToExecutor::Kill { attempt });
                    }
                }
                Command::ExecutorExcluded {
                    executor,
                    job,
                    stage,
                    reason,
                } => {
                    let scope = match stage {
                        Some(s) => format!("stage {}.{s}", job.0),
                        None => format!("job {}", job.0),
                    };
                    tracing::warn!(
                        executor = executor.0,
                        job = job.0,
                        "executor excluded for {scope}: {reason}"
                    );
                    if let Some(j) = self.jobs.get(&job) {
                        let app = j.spec.app;
                        self.summary(app, executor)
                            .exclusions
                            .push(format!("{scope}: {reason}"));
                    }
                    self.sink.emit(ev::Event::ExecutorExcluded {
                        at_ms: wall_ms(),
                        executor,
                        job,
                        stage,
                        reason,
                    });
                }
                Command::RemoveExecutor { executor, reason } => {
                    use flint_protocol::scheduler::ExecutorRemoval as R;
                    let id = executor.0;
                    match &reason {
                        R::Lost { silent_ms } => tracing::warn!(
                            executor = id,
                            silent_ms,
                            "executor lost: no heartbeat within executor.timeout ({} silent)",
                            fmt_ms(*silent_ms)
                        ),
                        R::Disconnected => tracing::warn!(executor = id, "executor disconnected"),
                        R::Decommissioned => {
                            tracing::info!(executor = id, "executor left after decommissioning")
                        }
                        R::Unreachable { why } => {
                            tracing::warn!(executor = id, "executor removed: {why}")
                        }
                    }
                    // Dropping its sender ends the control stream: a cut-off executor that
                    // comes back finds itself disconnected, not half-registered.
                    if let Some(conn) = self.executors.remove(&executor) {
                        conn.conn
                            .close(0u32.into(), format!("removed: {reason}").as_bytes());
                    }
                    self.sink.emit(ev::Event::ExecutorRemoved {
                        at_ms: wall_ms(),
                        executor,
                        reason: reason.to_string(),
                    });
                }
                Command::CommitTask { attempt } => self.commit_task(attempt),
                Command::StageStarted { stage, attempt } => {
                    self.sink.emit(ev::Event::StageStarted {
                        at_ms: wall_ms(),
                        stage,
                        attempt,
                    })
                }
                Command::StageCompleted {
                    stage,
                    map_output_bytes,
                } => self.sink.emit(ev::Event::StageCompleted {
                    at_ms: wall_ms(),
                    stage,
                    map_output_bytes,
                }),
                Command::Replanned { job, dag, changes } => self.replanned(job, *dag, changes),
                Command::JobSucceeded { job } => self.job_succeeded(job),
                Command::JobFailed { job, error } => self.end_job(job, Err(job_error(error))),
                Command::CleanJob { job } => {
                    for e in self.executors.values_mut() {
                        e.statuses_sent.retain(|(j, _), _| *j != job);
                        let _ = e.tx.try_send(ToExecutor::CleanJob { job });
                    }
                }
            }
        }
    }

    /// Adaptive execution changed `job`'s stages: tasks are described from the new DAG
    /// from now on, and the UI, the event log and the submitter hear what changed.
    fn replanned(&mut self, job: JobId, dag: JobDag, changes: Vec<String>) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        for c in &changes {
            tracing::info!(job = job.0, "adaptive execution: {c}");
        }
        let partitions = dag.result_stage().partitions as usize;
        if j.results.len() != partitions {
            j.results = (0..partitions).map(|_| None).collect();
        }
        let _ = j.spec.progress.try_send(SubmitEvent::Replanned {
            job,
            stages: dag.stages.iter().map(|s| s.name.clone()).collect(),
            stage_tasks: dag.stages.iter().map(|s| s.partitions).collect(),
            changes: changes.clone(),
        });
        self.sink.emit(ev::Event::StagesReplanned {
            at_ms: wall_ms(),
            job,
            stages: stage_infos(&dag),
            changes,
        });
        j.spec.dag = dag;
    }

    /// Fails `job` from the shell's side (a bound the scheduler does not know).
    fn fail_job(&mut self, job: JobId, error: AppError) {
        tracing::info!(job = job.0, "job failed: {error}");
        self.scheduler.cancel_job(job);
        self.end_job(job, Err(error));
    }

    fn commit_task(&mut self, attempt: TaskAttemptId) {
        let job_id = attempt.task.stage.job;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some((success, updates)) = job.unclaimed.remove(&attempt) else {
            return;
        };
        job.accumulator_bytes += updates.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
        if job.accumulator_bytes > job.spec.max_accumulator_bytes {
            let (got, max) = (job.accumulator_bytes, job.spec.max_accumulator_bytes);
            self.fail_job(
                job_id,
                AppError::limit(
                    "driver.max_accumulator_bytes",
                    format!(
                        "{job_id}'s tasks added {got} bytes of accumulator updates, over what the application may hold ({max} bytes left of driver.max_accumulator_bytes)"
                    ),
                ),
            );
            return;
        }
        job.updates.extend(updates);
        if attempt.task.stage.index as usize != job.spec.dag.stages.len() - 1 {
            return; // map outputs are registered by the scheduler itself
        }
        if let TaskSuccess::Rows {
            result: TaskResult::Direct(batches),
            ..
        } = &success
        {
            job.result_bytes += batches.iter().map(|b| b.len() as u64).sum::<u64>();
            if job.result_bytes > job.spec.max_result_bytes {
                let error = result_too_large(job_id, job.result_bytes, job.spec.max_result_bytes);
                self.fail_job(job_id, error);
                return;
            }
        }
        if let (Some(out), TaskSuccess::File { rows, .. }) = (&job.spec.output, &success)
            && let Err(e) = out.commit_task(attempt, *rows)
        {
            // The attempt succeeded but its output cannot be published: the job fails.
            tracing::error!(%attempt, "committing task output: {e}");
            self.fail_job(
                job_id,
                AppError::new(
                    AppErrorKind::Io,
                    vec![format!("committing the output of {attempt}"), e.to_string()],
                ),
            );
            return;
        }
        if let Some(slot) = job.results.get_mut(attempt.task.partition as usize) {
            *slot = Some(success);
        }
    }

    fn job_succeeded(&mut self, job: JobId) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        let results = JobResults {
            results: std::mem::take(&mut j.results),
            updates: std::mem::take(&mut j.updates),
            result_bytes: j.result_bytes,
            accumulator_bytes: j.accumulator_bytes,
        };
        self.end_job(job, Ok(results));
    }

    /// Answers the job's waiter.
    fn end_job(&mut self, job: JobId, outcome: JobOutcome) {
        let Some(mut j) = self.jobs.remove(&job) else {
            return;
        };
        self.sink.emit(ev::Event::JobEnded {
            at_ms: wall_ms(),
            job,
            succeeded: outcome.is_ok(),
            error: outcome
                .as_ref()
                .err()
                .map(|e| e.chain.clone())
                .unwrap_or_default(),
        });
        if let Some(reply) = j.reply.take() {
            let _ = reply.send(outcome);
        }
    }

    /// Sends `attempt` to `executor`, after the map statuses it needs that the executor
    /// has not had. An attempt that cannot be sent goes back to the scheduler (killed,
    /// not failed) so its slot is not held by nothing.
    fn launch(&mut self, attempt: TaskAttemptId, executor: ExecutorId) {
        let job_id = attempt.task.stage.job;
        let Some(job) = self.jobs.get(&job_id) else {
            // Its job ended earlier in this round of commands.
            self.scheduler.task_killed(attempt, executor);
            return;
        };
        let Some(desc) = self.descriptor(job, attempt) else {
            // It runs again once its inputs are whole again.
            tracing::debug!(
                %attempt,
                "not launched: no such partition in its stage, or some of its map outputs were lost since"
            );
            self.scheduler.task_killed(attempt, executor);
            return;
        };
        let reads: Vec<(ShuffleId, u64)> = desc.shuffle_reads().collect();
        let msg = ToExecutor::Launch(Box::new(desc));
        // The DAG builder bounds what a task carries; this is the last word before the
        // wire, so that no executor is ever sent a frame it must refuse.
        match wire::body_size(&msg) {
            Ok(len) if len <= wire::MAX_FRAME => {}
            other => {
                let len = other.map_or("an unknown number of".to_string(), |l| l.to_string());
                self.scheduler.task_killed(attempt, executor);
                self.fail_job(
                    job_id,
                    AppError::limit(
                        "the wire's task size",
                        format!(
                            "{attempt}'s descriptor has {len} bytes, over the {} a frame may have",
                            wire::MAX_FRAME
                        ),
                    ),
                );
                return;
            }
        }
        let mut sent = Ok(());
        for (shuffle, version) in reads {
            sent = sent.and_then(|()| self.send_statuses(executor, job_id, shuffle, version));
        }
        let Some(conn) = self.executors.get(&executor) else {
            self.scheduler.task_killed(attempt, executor);
            return;
        };
        match sent.and_then(|()| conn.tx.try_send(msg).map_err(unit)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(())) => {
                self.scheduler
                    .executor_unreachable(executor, "its queue of messages is full");
            }
            // The connection is going away. Its reader still hands on what the executor
            // said last (a decommission notice, task statuses), then `ExecutorDown`, which
            // gives this attempt back to the scheduler. Deciding now would lose those.
            Err(mpsc::error::TrySendError::Closed(())) => tracing::debug!(
                executor = executor.0,
                %attempt,
                "executor's connection is closing; its end will reschedule the attempt"
            ),
        }
    }

    /// Sends `executor` where the map outputs of `shuffle` are as of `version`, unless it
    /// has had them: in parts of at most [`STATUS_PART_BYTES`], once per executor and
    /// version however many of its tasks read them.
    fn send_statuses(
        &mut self,
        executor: ExecutorId,
        job: JobId,
        shuffle: ShuffleId,
        version: u64,
    ) -> Result<(), mpsc::error::TrySendError<()>> {
        let Some(conn) = self.executors.get(&executor) else {
            return Ok(());
        };
        if conn.statuses_sent.get(&(job, shuffle)) == Some(&version) {
            return Ok(());
        }
        let Some(maps) = self.scheduler.map_outputs().statuses(job, shuffle) else {
            return Ok(());
        };
        let partitions = maps
            .iter()
            .flatten()
            .map(|m| m.sizes.len())
            .max()
            .unwrap_or(0);
        // A size is one byte: a part's frame stays under the bound.
        let per_part = (STATUS_PART_BYTES / (partitions + 32)).max(1);
        let mut first = 0;
        for chunk in maps.chunks(per_part) {
            let mut holders: Vec<(ExecutorId, String)> = Vec::new();
            let mut index: HashMap<ExecutorId, usize> = HashMap::new();
            let mut outputs = Vec::with_capacity(chunk.len());
            for status in chunk {
                // A task is launched once its map outputs are all known.
                let Some(status) = status else { return Ok(()) };
                let holder = *index.entry(status.executor).or_insert_with(|| {
                    let addr = self
                        .executors
                        .get(&status.executor)
                        .map(|e| e.addr.clone())
                        .unwrap_or_default();
                    holders.push((status.executor, addr));
                    holders.len() - 1
                });
                // Compressed as the tracker keeps them.
                let mut sizes = status.sizes.to_vec();
                sizes.resize(partitions, 0);
                outputs.push(wire::MapOutput {
                    holder: holder as u32,
                    sizes,
                });
            }
            let part = wire::MapStatuses {
                job,
                shuffle,
                version,
                maps: maps.len() as u32,
                partitions: partitions as u32,
                first,
                holders,
                outputs,
            };
            first += chunk.len() as u32;
            conn.tx
                .try_send(ToExecutor::MapStatuses(Box::new(part)))
                .map_err(unit)?;
        }
        if let Some(conn) = self.executors.get_mut(&executor) {
            conn.statuses_sent.insert((job, shuffle), version);
        }
        Ok(())
    }

    /// What the executor needs to run `attempt`.
    fn descriptor(&self, job: &RunningJob, attempt: TaskAttemptId) -> Option<TaskDescriptor> {
        // A version of whole statuses only: an output lost since the launch was decided
        // (its executor became unreachable in this round of commands) leaves none.
        let statuses = |sh: ShuffleId| {
            let outputs = self.scheduler.map_outputs();
            let job = attempt.task.stage.job;
            outputs
                .version(job, sh)
                .filter(|_| outputs.complete(job, sh))
        };
        let stage = job.spec.dag.stages.get(attempt.task.stage.index as usize)?;
        let refs = stage.pieces.get(attempt.task.partition as usize)?;
        let mut pieces = Vec::with_capacity(refs.len());
        for r in refs {
            let branch = stage.branches.get(r.branch as usize)?;
            let input = match &branch.input {
                StageInput::Source { node, .. } => job
                    .spec
                    .sources
                    .get(node)
                    .and_then(|s| s.get(r.partition as usize))
                    .cloned()?,
                StageInput::Shuffle { shuffles, read, .. } => TaskInput::Shuffle {
                    reduce_partition: r.partition,
                    read: read.clone(),
                    sides: shuffles
                        .iter()
                        .enumerate()
                        .map(|(side, sh)| {
                            Some(ShuffleSideInput {
                                shuffle: *sh,
                                statuses: statuses(*sh)?,
                                maps: r
                                    .maps
                                    .filter(|m| m.side as usize == side)
                                    .map(|m| m.start..m.end),
                                cached: kept_target(job, *sh),
                            })
                        })
                        .collect::<Option<_>>()?,
                },
            };
            pieces.push(TaskPiece {
                input,
                ops: branch.ops.clone(),
            });
        }
        let output = match &stage.output {
            StageOutput::ShuffleWrite {
                shuffle,
                partitions,
                write,
                cache,
            } => TaskOutput::ShuffleWrite {
                shuffle: *shuffle,
                partitions: *partitions,
                write: write.clone(),
                cached: cache.map(|c| CacheTarget {
                    job: JobId::cache_of_app(job.spec.app),
                    shuffle: ShuffleId(c.id),
                    level: c.level,
                }),
            },
            StageOutput::Result(Action::Collect { encode, .. }) => TaskOutput::Rows {
                encode: encode.clone(),
            },
            StageOutput::Result(Action::Count) => TaskOutput::Count,
            StageOutput::Result(Action::Save {
                render,
                format,
                options,
                ..
            }) => {
                let out = job.spec.output.as_ref()?;
                TaskOutput::File {
                    file: out.attempt_file(attempt),
                    format: *format,
                    compression: options.compression.unwrap_or(format.default_codec()),
                    partition_by: options.partition_by.clone(),
                    render: render.clone(),
                }
            }
        };
        let builds = stage
            .builds
            .iter()
            .map(|sh| {
                Some(BuildInput {
                    shuffle: *sh,
                    statuses: statuses(*sh)?,
                    cached: kept_target(job, *sh),
                })
            })
            .collect::<Option<_>>()?;
        Some(TaskDescriptor {
            attempt,
            shuffle_secret: job.spec.shuffle_secret,
            app_secret: job.spec.app_secret,
            app: job.spec.app,
            module: job.spec.module,
            pieces,
            ops: stage.ops.clone(),
            output,
            limits: job.spec.limits.clone(),
            builds,
        })
    }
}

/// A failed send, without the message it could not send.
fn unit<T>(e: mpsc::error::TrySendError<T>) -> mpsc::error::TrySendError<()> {
    match e {
        mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
        mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
    }
}

/// Where the map output of `shuffle` is filed when the application keeps it (a cached
/// dataset, or a shuffle kept for later jobs): under the application, not the job.
fn kept_target(job: &RunningJob, shuffle: ShuffleId) -> Option<CacheTarget> {
    job.spec.dag.cache_of(shuffle).map(|c| CacheTarget {
        job: JobId::cache_of_app(job.spec.app),
        shuffle: ShuffleId(c.id),
        level: c.level,
    })
}

/// What the UI and the event log know of a DAG's stages.
fn stage_infos(dag: &JobDag) -> Vec<StageInfo> {
    dag.stages
        .iter()
        .map(|s| StageInfo {
            index: s.index,
            parents: s.parents.clone(),
            partitions: s.partitions,
            name: s.name.clone(),
            shuffle_write: matches!(s.output, StageOutput::ShuffleWrite { .. }),
        })
        .collect()
}

/// A job failure as the application sees it: a task that failed, or a limit it hit.
fn job_error(f: JobFailure) -> AppError {
    let kind = match f.limit {
        Some(limit) => AppErrorKind::Limit { limit },
        None => AppErrorKind::TaskFailed,
    };
    let mut chain = vec![f.message];
    chain.extend(f.causes);
    AppError::new(kind, chain)
}

fn result_too_large(job: JobId, bytes: u64, max: u64) -> AppError {
    AppError::limit(
        "driver.max_result_size",
        format!(
            "{job}'s result reached {bytes} bytes, over what its action may bring to the driver ({max} bytes of driver.max_result_size); write large results with a save_* action instead"
        ),
    )
}

/// A stored result, from the executor that holds it: `bytes` of length-prefixed Arrow
/// IPC streams, read batch by batch, none larger than what is left.
async fn fetch_result(
    conn: &quinn::Connection,
    attempt: TaskAttemptId,
    bytes: u64,
) -> Result<Vec<Vec<u8>>, NetError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    net::write_frame(&mut send, &FetchResult { attempt }).await?;
    let _ = send.finish();
    let reply: wire::FetchReply = net::expect_frame(&mut recv, 1 << 16).await?;
    let len = reply.map_err(NetError::Refused)?;
    if len != bytes {
        return Err(NetError::Refused(format!(
            "the executor offers {len} bytes of a result it reported as {bytes}"
        )));
    }
    let mut left = len;
    let mut batches = Vec::new();
    while left > 0 {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix).await?;
        let n = u32::from_le_bytes(prefix) as u64;
        left = left.checked_sub(4 + n).ok_or(NetError::Truncated)?;
        batches.push(net::read_exact_vec(&mut recv, n as usize).await?);
    }
    Ok(batches)
}
