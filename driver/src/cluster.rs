//! The driver's event loop: owns the [`Scheduler`] state machine, turns its commands into
//! task descriptors for executors, and turns executor messages back into events.

use crate::output::OutputCommit;
use crate::splits::Split;
use flint_protocol::dag::{JobDag, StageInput, StageOutput};
use flint_protocol::ids::{ExecutorId, JobId, ModuleHash, TaskAttemptId};
use flint_protocol::plan::Action;
use flint_protocol::scheduler::{Command, JobFailure, Scheduler, SchedulerConf, TaskFailure};
use flint_protocol::wire::{
    ExecutorSummary, FromExecutor, SegmentSource, TaskDescriptor, TaskErrorKind, TaskInput,
    TaskLimits, TaskOutput, TaskSuccess, ToExecutor,
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
    /// Splits of the first stage's text source, per partition.
    pub splits: HashMap<u32, Vec<Split>>,
    pub text_output: Option<Arc<OutputCommit>>,
    pub limits: TaskLimits,
}

/// Per result partition, the committed attempt's output.
pub type JobOutcome = Result<Vec<Option<TaskSuccess>>, JobFailure>;

pub enum Event {
    ExecutorUp {
        cores: u32,
        shuffle_addr: String,
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
    /// The application is over: hand back what its executors reported.
    AppDone {
        app: u64,
        reply: oneshot::Sender<Vec<ExecutorSummary>>,
    },
}

struct ExecutorConn {
    addr: String,
    tx: mpsc::Sender<ToExecutor>,
}

struct RunningJob {
    spec: Box<JobSpec>,
    reply: Option<oneshot::Sender<JobOutcome>>,
    results: Vec<Option<TaskSuccess>>,
    /// Successful attempts waiting for the scheduler's commit decision.
    unclaimed: HashMap<TaskAttemptId, TaskSuccess>,
}

pub struct ClusterLoop {
    scheduler: Scheduler,
    executors: HashMap<ExecutorId, ExecutorConn>,
    jobs: HashMap<JobId, RunningJob>,
    apps: HashMap<u64, HashMap<ExecutorId, ExecutorSummary>>,
    next_executor: u32,
    started: Instant,
    tick: Duration,
}

impl ClusterLoop {
    pub fn new(conf: SchedulerConf, tick: Duration) -> Self {
        ClusterLoop {
            scheduler: Scheduler::new(conf),
            executors: HashMap::new(),
            jobs: HashMap::new(),
            apps: HashMap::new(),
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
                    for id in self.scheduler.tick(now) {
                        tracing::warn!(executor = id.0, "executor lost: no heartbeat within executor.timeout");
                        self.executors.remove(&id);
                    }
                }
            }
            self.drain_commands();
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::ExecutorUp {
                cores,
                shuffle_addr,
                tx,
                reply,
            } => {
                let id = ExecutorId(self.next_executor);
                self.next_executor += 1;
                tracing::info!(executor = id.0, cores, addr = %shuffle_addr, "executor registered");
                self.executors.insert(
                    id,
                    ExecutorConn {
                        addr: shuffle_addr,
                        tx,
                    },
                );
                let _ = reply.send(id);
                let now = self.now_ms();
                self.scheduler.executor_added(id, cores, now);
            }
            Event::Executor { id, msg } => {
                let now = self.now_ms();
                self.scheduler.heartbeat(id, now);
                if let FromExecutor::Status(status) = msg {
                    self.task_status(id, *status);
                }
            }
            Event::ExecutorDown { id } => {
                if self.executors.remove(&id).is_some() {
                    tracing::warn!(executor = id.0, "executor disconnected");
                    self.scheduler.executor_lost(id);
                }
            }
            Event::Submit { job, spec, reply } => {
                let partitions = spec.dag.result_stage().partitions as usize;
                let dag = spec.dag.clone();
                self.jobs.insert(
                    job,
                    RunningJob {
                        spec,
                        reply: Some(reply),
                        results: (0..partitions).map(|_| None).collect(),
                        unclaimed: HashMap::new(),
                    },
                );
                self.scheduler.submit_job(job, dag);
            }
            Event::TotalCores { reply } => {
                let _ = reply.send(self.scheduler.total_cores());
            }
            Event::AppDone { app, reply } => {
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

    fn task_status(&mut self, executor: ExecutorId, status: flint_protocol::wire::TaskStatus) {
        let attempt = status.attempt;
        let addr = self
            .executors
            .get(&executor)
            .map(|e| e.addr.clone())
            .unwrap_or_default();
        if let Some(job) = self.jobs.get(&attempt.task.stage.job) {
            let s = self
                .apps
                .entry(job.spec.app)
                .or_default()
                .entry(executor)
                .or_insert_with(|| ExecutorSummary {
                    executor,
                    addr,
                    ..Default::default()
                });
            s.metrics.add(&status.metrics);
            s.compiles += status.metrics.compiled as u64;
            match &status.result {
                Ok(_) => s.tasks_succeeded += 1,
                Err(_) => s.tasks_failed += 1,
            }
        }
        match status.result {
            Ok(success) => {
                let sizes = match &success {
                    TaskSuccess::MapOutput { sizes } => Some(sizes.clone()),
                    _ => None,
                };
                if let Some(job) = self.jobs.get_mut(&attempt.task.stage.job) {
                    job.unclaimed.insert(attempt, success);
                }
                self.scheduler.task_succeeded(attempt, executor, sizes);
            }
            Err(e) => {
                let mut chain = vec![format!("{attempt} on {executor}")];
                chain.extend(e.chain);
                let retryable = e.kind != TaskErrorKind::BadModule;
                self.scheduler
                    .task_failed(attempt, executor, TaskFailure { chain, retryable });
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
                } => self.launch(attempt, executor, inputs),
                Command::CommitTask { attempt } => self.commit_task(attempt),
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
        let Some(success) = job.unclaimed.remove(&attempt) else {
            return;
        };
        if attempt.task.stage.index as usize != job.spec.dag.stages.len() - 1 {
            return; // map outputs are registered by the scheduler itself
        }
        if let (Some(out), TaskSuccess::Text { .. }) = (&job.spec.text_output, &success)
            && let Err(e) = out.commit_task(attempt)
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
        if let Some(reply) = j.reply.take() {
            let _ = reply.send(match failure {
                None => Ok(std::mem::take(&mut j.results)),
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
        let input = match &stage.input {
            StageInput::TextFile { decode, .. } => {
                let split = job
                    .spec
                    .splits
                    .get(&stage.index)
                    .and_then(|s| s.get(p as usize))
                    .cloned();
                let Some(split) = split else {
                    tracing::error!(%attempt, "no input split for this partition");
                    return;
                };
                TaskInput::TextSplit {
                    path: split.path,
                    start: split.start,
                    end: split.end,
                    decode: *decode,
                }
            }
            StageInput::Shuffle { shuffle, read } => TaskInput::Shuffle {
                shuffle: *shuffle,
                reduce_partition: p,
                read: *read,
                segments: inputs
                    .into_iter()
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
            },
        };
        let output = match &stage.output {
            StageOutput::ShuffleWrite {
                shuffle,
                partitions,
                write,
            } => TaskOutput::ShuffleWrite {
                shuffle: *shuffle,
                partitions: *partitions,
                write: *write,
            },
            StageOutput::Result(Action::Collect { encode }) => TaskOutput::Rows { encode: *encode },
            StageOutput::Result(Action::Count) => TaskOutput::Count,
            StageOutput::Result(Action::SaveAsText { render, .. }) => match &job.spec.text_output {
                Some(out) => TaskOutput::Text {
                    file: out.attempt_file(attempt).to_string_lossy().into_owned(),
                    render: *render,
                },
                None => return,
            },
        };
        let desc = TaskDescriptor {
            attempt,
            module: job.spec.module,
            input,
            ops: stage.ops.clone(),
            output,
            limits: job.spec.limits.clone(),
        };
        let Some(conn) = self.executors.get(&executor) else {
            return;
        };
        if conn
            .tx
            .try_send(ToExecutor::Launch(Box::new(desc)))
            .is_err()
        {
            tracing::warn!(
                executor = executor.0,
                "executor's queue is full or closed; declaring it lost"
            );
            self.executors.remove(&executor);
            self.scheduler.executor_lost(executor);
        }
    }
}
