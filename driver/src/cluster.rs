//! The driver's event loop: owns the [`Scheduler`] state machine, turns its commands into
//! task descriptors for executors, and turns executor messages back into events.

use crate::output::OutputCommit;
use crate::ui::{EventSink, now_ms as wall_ms};
use flint_protocol::dag::{JobDag, StageInput, StageOutput};
use flint_protocol::events::{self as ev, StageInfo, TaskOutcome};
use flint_protocol::ids::{ExecutorId, JobId, ModuleHash, ShuffleId, TaskAttemptId};
use flint_protocol::plan::{Action, NodeIndex};
use flint_protocol::scheduler::{
    Command, JobFailure, JobPolicy, MapStatus, Scheduler, SchedulerConf, TaskFailure, fmt_ms,
};
use flint_protocol::wire::{
    CacheTarget, ExecutorSummary, FromExecutor, SegmentSource, ShuffleSideInput, SubmitEvent,
    TaskDescriptor, TaskErrorKind, TaskInput, TaskLimits, TaskOutput, TaskPiece, TaskSuccess,
    ToExecutor,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// One action's job, ready to schedule.
pub struct JobSpec {
    pub app: u64,
    pub dag: JobDag,
    pub module: ModuleHash,
    /// Per source node of the plan, the input of each of its partitions.
    pub sources: HashMap<NodeIndex, Vec<TaskInput>>,
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
}

/// Per result partition, the committed attempt's output.
/// A task's accumulator updates: (accumulator id, encoded partial value).
pub type AccumulatorUpdates = Vec<(u32, Vec<u8>)>;

/// With the accumulator updates of the committed attempts.
pub type JobOutcome = Result<(Vec<Option<TaskSuccess>>, AccumulatorUpdates), JobFailure>;

pub enum Event {
    ExecutorUp {
        cores: u32,
        shuffle_addr: String,
        metrics_addr: Option<String>,
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
    /// The application is over: hand back what its executors reported.
    AppDone {
        app: u64,
        reply: oneshot::Sender<Vec<ExecutorSummary>>,
    },
}

struct ExecutorConn {
    addr: String,
    tx: mpsc::Sender<ToExecutor>,
    last_heard_ms: u64,
    decommissioning: bool,
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
    done: Vec<std::collections::BTreeSet<u32>>,
}

pub struct ClusterLoop {
    scheduler: Scheduler,
    executors: HashMap<ExecutorId, ExecutorConn>,
    jobs: HashMap<JobId, RunningJob>,
    apps: HashMap<u64, HashMap<ExecutorId, ExecutorSummary>>,
    /// Per (application, cached dataset id), where each partition is kept: the block
    /// manager's master of Spark. Entries go when their executor is lost or evicts them.
    cached: HashMap<(u64, u32), Vec<Option<MapStatus>>>,
    next_executor: u32,
    started: Instant,
    tick: Duration,
    sink: Arc<EventSink>,
}

impl ClusterLoop {
    /// Cached partitions kept by a lost executor are gone.
    fn forget_cached_on(&mut self, executor: ExecutorId) {
        for parts in self.cached.values_mut() {
            for slot in parts.iter_mut() {
                if slot.as_ref().is_some_and(|s| s.executor == executor) {
                    *slot = None;
                }
            }
        }
    }

    pub fn new(conf: SchedulerConf, tick: Duration, sink: Arc<EventSink>) -> Self {
        ClusterLoop {
            sink,
            scheduler: Scheduler::new(conf),
            executors: HashMap::new(),
            jobs: HashMap::new(),
            apps: HashMap::new(),
            cached: HashMap::new(),
            next_executor: 1,
            started: Instant::now(),
            tick,
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
                    let lost = self.scheduler.tick(now);
                    for id in lost {
                        let silent = self.executors.get(&id).map_or(0, |e| now.saturating_sub(e.last_heard_ms));
                        tracing::warn!(
                            executor = id.0,
                            silent_ms = silent,
                            "executor lost: no heartbeat within executor.timeout ({} silent)",
                            fmt_ms(silent)
                        );
                        // Dropping its sender ends the control stream: a cut-off executor
                        // that comes back finds itself disconnected, not half-registered.
                        self.executors.remove(&id);
                        self.forget_cached_on(id);
                        self.sink.emit(ev::Event::ExecutorRemoved {
                            at_ms: wall_ms(),
                            executor: id,
                            reason: format!("lost: no heartbeat for {}", fmt_ms(silent)),
                        });
                    }
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
                tx,
                reply,
            } => {
                let id = ExecutorId(self.next_executor);
                self.next_executor += 1;
                tracing::info!(executor = id.0, cores, addr = %shuffle_addr, "executor registered");
                let now = self.now_ms();
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
                        last_heard_ms: now,
                        decommissioning: false,
                    },
                );
                let _ = reply.send(id);
                self.scheduler.executor_added(id, cores, now);
            }
            Event::Executor { id, msg } => {
                let now = self.now_ms();
                let Some(conn) = self.executors.get_mut(&id) else {
                    // Declared lost already: whatever it says no longer counts.
                    return;
                };
                conn.last_heard_ms = now;
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
                        self.scheduler.executor_decommissioning(id);
                    }
                    FromExecutor::CachedDropped { job, shuffle, maps } => {
                        let Some(app) = job.cached_app() else { return };
                        if let Some(parts) = self.cached.get_mut(&(app, shuffle.0)) {
                            for m in maps {
                                if let Some(slot) = parts.get_mut(m as usize)
                                    && slot.as_ref().is_some_and(|s| s.executor == id)
                                {
                                    *slot = None;
                                }
                            }
                        }
                        tracing::debug!(
                            executor = id.0,
                            app,
                            cache = shuffle.0,
                            "cached partitions evicted"
                        );
                    }
                }
            }
            Event::ExecutorDown { id } => {
                if let Some(conn) = self.executors.remove(&id) {
                    let reason = if conn.decommissioning {
                        tracing::info!(executor = id.0, "executor left after decommissioning");
                        "decommissioned"
                    } else {
                        tracing::warn!(executor = id.0, "executor disconnected");
                        "disconnected"
                    };
                    self.sink.emit(ev::Event::ExecutorRemoved {
                        at_ms: wall_ms(),
                        executor: id,
                        reason: reason.into(),
                    });
                    self.scheduler.executor_lost(id);
                    self.forget_cached_on(id);
                }
            }
            Event::Submit { job, spec, reply } => {
                let partitions = spec.dag.result_stage().partitions as usize;
                let dag = spec.dag.clone();
                let policy = spec.policy.clone();
                self.sink.emit(ev::Event::JobStarted {
                    at_ms: wall_ms(),
                    job,
                    app: spec.app,
                    name: spec.name.clone(),
                    action: spec.action.clone(),
                    tenant: spec.tenant.clone(),
                    stages: dag
                        .stages
                        .iter()
                        .map(|s| StageInfo {
                            index: s.index,
                            parents: s.parents.clone(),
                            partitions: s.partitions,
                            name: s.name.clone(),
                            shuffle_write: matches!(s.output, StageOutput::ShuffleWrite { .. }),
                        })
                        .collect(),
                });
                let running = RunningJob {
                    done: vec![Default::default(); dag.stages.len()],
                    spec,
                    reply: Some(reply),
                    results: (0..partitions).map(|_| None).collect(),
                    unclaimed: HashMap::new(),
                    updates: Vec::new(),
                };
                // Partitions of cached datasets that earlier jobs kept.
                let mut known = Vec::new();
                for st in &dag.stages {
                    if let StageOutput::ShuffleWrite {
                        shuffle,
                        cache: Some(c),
                        ..
                    } = st.output
                        && let Some(parts) = self.cached.get(&(running.spec.app, c.id))
                        && parts.len() == st.partitions as usize
                    {
                        for (map, status) in parts.iter().enumerate() {
                            if let Some(status) = status {
                                known.push((shuffle, map as u32, status.clone()));
                            }
                        }
                    }
                }
                self.jobs.insert(job, running);
                self.scheduler.submit_job_with(job, dag, policy, known);
            }
            Event::TotalCores { reply } => {
                let _ = reply.send(self.scheduler.total_cores());
            }
            Event::Unpersist { app, id } => {
                self.cached.remove(&(app, id));
                for conn in self.executors.values() {
                    let _ = conn.tx.try_send(ToExecutor::DropCached {
                        job: JobId::cache_of_app(app),
                        shuffle: ShuffleId(id),
                    });
                }
            }
            Event::AppDone { app, reply } => {
                self.cached.retain(|(a, _), _| *a != app);
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
                let _ = reply.send(v);
            }
        }
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

    fn task_status(&mut self, executor: ExecutorId, status: flint_protocol::wire::TaskStatus) {
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
        match status.result {
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
                // A partition of a cached dataset: remember where it is kept.
                if let (Some(sizes), Some(job)) = (&sizes, self.jobs.get(&attempt.task.stage.job))
                    && self.executors.contains_key(&executor)
                    && let Some(st) = job.spec.dag.stages.get(attempt.task.stage.index as usize)
                    && let StageOutput::ShuffleWrite { cache: Some(c), .. } = st.output
                {
                    let parts = self
                        .cached
                        .entry((job.spec.app, c.id))
                        .or_insert_with(|| vec![None; st.partitions as usize]);
                    if parts.len() != st.partitions as usize {
                        *parts = vec![None; st.partitions as usize];
                    }
                    parts[attempt.task.partition as usize] = Some(MapStatus {
                        executor,
                        sizes: sizes.clone(),
                    });
                }
                if let Some(job) = self.jobs.get_mut(&attempt.task.stage.job) {
                    job.unclaimed
                        .insert(attempt, (success, status.accumulators));
                }
                self.scheduler.task_succeeded(attempt, executor, sizes);
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
                        let retryable = kind != TaskErrorKind::BadModule;
                        self.scheduler.task_failed(
                            attempt,
                            executor,
                            TaskFailure { chain, retryable },
                        )
                    }
                }
            }
        }
    }

    fn drain_commands(&mut self) {
        while let Some(cmd) = self.scheduler.poll_command() {
            match cmd {
                Command::Launch {
                    attempt,
                    executor,
                    inputs,
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
                    self.launch(attempt, executor, inputs)
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
                Command::JobSucceeded { job } => self.end_job(job, None),
                Command::JobFailed { job, error } => self.end_job(job, Some(error)),
                Command::CleanJob { job } => {
                    for e in self.executors.values() {
                        let _ = e.tx.try_send(ToExecutor::CleanJob { job });
                    }
                }
            }
        }
    }

    fn commit_task(&mut self, attempt: TaskAttemptId) {
        let Some(job) = self.jobs.get_mut(&attempt.task.stage.job) else {
            return;
        };
        let Some((success, updates)) = job.unclaimed.remove(&attempt) else {
            return;
        };
        job.updates.extend(updates);
        if attempt.task.stage.index as usize != job.spec.dag.stages.len() - 1 {
            return; // map outputs are registered by the scheduler itself
        }
        if let (Some(out), TaskSuccess::File { rows, .. }) = (&job.spec.output, &success)
            && let Err(e) = out.commit_task(attempt, *rows)
        {
            // The attempt succeeded but its output cannot be published: the job fails.
            tracing::error!(%attempt, "committing task output: {e}");
            let job_id = attempt.task.stage.job;
            self.scheduler.cancel_job(job_id);
            self.end_job(
                job_id,
                Some(JobFailure {
                    message: format!("committing the output of {attempt}"),
                    causes: vec![e.to_string()],
                }),
            );
            return;
        }
        if let Some(slot) = job.results.get_mut(attempt.task.partition as usize) {
            *slot = Some(success);
        }
    }

    /// Answers the job's waiter: its results, or `failure`.
    fn end_job(&mut self, job: JobId, failure: Option<JobFailure>) {
        let Some(mut j) = self.jobs.remove(&job) else {
            return;
        };
        self.sink.emit(ev::Event::JobEnded {
            at_ms: wall_ms(),
            job,
            succeeded: failure.is_none(),
            error: failure
                .iter()
                .flat_map(|f| std::iter::once(f.message.clone()).chain(f.causes.iter().cloned()))
                .collect(),
        });
        if let Some(reply) = j.reply.take() {
            let _ = reply.send(match failure {
                None => Ok((
                    std::mem::take(&mut j.results),
                    std::mem::take(&mut j.updates),
                )),
                Some(f) => Err(f),
            });
        }
    }

    fn launch(
        &mut self,
        attempt: TaskAttemptId,
        executor: ExecutorId,
        inputs: Vec<flint_protocol::scheduler::MapLocation>,
    ) {
        let Some(job) = self.jobs.get(&attempt.task.stage.job) else {
            return;
        };
        let stage = &job.spec.dag.stages[attempt.task.stage.index as usize];
        let p = attempt.task.partition;
        let Some(refs) = stage.pieces.get(p as usize) else {
            tracing::error!(%attempt, "no such partition in its stage");
            return;
        };
        let mut pieces = Vec::with_capacity(refs.len());
        for r in refs {
            let Some(branch) = stage.branches.get(r.branch as usize) else {
                return;
            };
            let input = match &branch.input {
                StageInput::Source { node, .. } => {
                    let input = job
                        .spec
                        .sources
                        .get(node)
                        .and_then(|s| s.get(r.partition as usize))
                        .cloned();
                    let Some(input) = input else {
                        tracing::error!(%attempt, "no input for this partition");
                        return;
                    };
                    input
                }
                StageInput::Shuffle { shuffles, read } => TaskInput::Shuffle {
                    reduce_partition: r.partition,
                    read: read.clone(),
                    sides: shuffles
                        .iter()
                        .map(|sh| ShuffleSideInput {
                            shuffle: *sh,
                            cached: job.spec.dag.cache_of(*sh).map(|c| CacheTarget {
                                job: JobId::cache_of_app(job.spec.app),
                                shuffle: ShuffleId(c.id),
                                level: c.level,
                            }),
                            segments: inputs
                                .iter()
                                .filter(|l| l.shuffle == *sh && l.reduce == r.partition)
                                .map(|l| SegmentSource {
                                    executor: l.executor,
                                    addr: self
                                        .executors
                                        .get(&l.executor)
                                        .map(|e| e.addr.clone())
                                        .unwrap_or_default(),
                                    map_partition: l.map_partition,
                                    size: l.size,
                                })
                                .collect(),
                        })
                        .collect(),
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
            StageOutput::Result(Action::Save { render, format, .. }) => match &job.spec.output {
                Some(out) => TaskOutput::File {
                    file: out.attempt_file(attempt).to_string_lossy().into_owned(),
                    format: *format,
                    render: render.clone(),
                },
                None => return,
            },
        };
        let desc = TaskDescriptor {
            attempt,
            shuffle_secret: job.spec.shuffle_secret,
            app_secret: job.spec.app_secret,
            app: job.spec.app,
            module: job.spec.module,
            pieces,
            ops: stage.ops.clone(),
            output,
            limits: job.spec.limits.clone(),
        };
        let Some(conn) = self.executors.get(&executor) else {
            return;
        };
        match conn.tx.try_send(ToExecutor::Launch(Box::new(desc))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    executor = executor.0,
                    "executor's queue is full; declaring it lost"
                );
                self.executors.remove(&executor);
                self.forget_cached_on(executor);
                self.scheduler.executor_lost(executor);
            }
            // The connection is going away. Its reader still hands on what the executor
            // said last (a decommission notice, task statuses), then `ExecutorDown`, which
            // gives this attempt back to the scheduler. Deciding now would lose those.
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::debug!(
                executor = executor.0,
                %attempt,
                "executor's connection is closing; its end will reschedule the attempt"
            ),
        }
    }
}
