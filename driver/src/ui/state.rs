//! What the UI shows, folded from [`Event`]s: the live driver applies each event as it
//! happens, `flint history` applies a log's events in order. Same fold, same pages.

use flint_protocol::events::{Event, StageInfo, TaskOutcome};
use flint_protocol::wire::{GuestOutput, TaskMetrics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Serialize)]
pub struct UiState {
    pub executors: BTreeMap<u32, ExecutorView>,
    pub jobs: BTreeMap<u64, JobView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExecutorView {
    pub id: u32,
    pub addr: String,
    pub cores: u32,
    pub metrics_addr: Option<String>,
    /// `alive`, `decommissioning`, `lost`, `disconnected`, `decommissioned`.
    pub state: String,
    pub reason: Option<String>,
    pub added_ms: u64,
    /// Last heartbeat (live UI) or last event (history).
    pub last_seen_ms: u64,
    pub tasks_running: u64,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub tasks_killed: u64,
    pub shuffle_write_bytes: u64,
    pub shuffle_read_bytes: u64,
    pub exclusions: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub id: u64,
    pub app: u64,
    pub name: String,
    pub action: String,
    pub tenant: String,
    /// `running`, `succeeded`, `failed`.
    pub state: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub error: Vec<String>,
    pub stages: Vec<StageView>,
    /// What adaptive execution changed at the job's stage boundaries, in order.
    pub adaptive: Vec<String>,
}

impl JobView {
    pub fn stages_done(&self) -> usize {
        self.stages.iter().filter(|s| s.state() == "done").count()
    }

    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.ended_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.started_ms)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StageView {
    #[serde(flatten)]
    pub info: StageInfo,
    /// When it (last) became runnable, and how many times it restarted after lost input.
    pub started_ms: Option<u64>,
    pub attempt: u32,
    pub completed_ms: Option<u64>,
    /// Map output bytes the driver tracked when the stage (last) completed.
    pub map_output_bytes: Option<u64>,
    /// Every attempt, in (partition, attempt) order.
    pub tasks: Vec<TaskView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    pub partition: u32,
    pub attempt: u32,
    pub executor: u32,
    pub speculative: bool,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// `running`, `succeeded`, `failed`, `fetch_failed`, `killed`, `lost`.
    pub state: String,
    pub error: Vec<String>,
    pub metrics: TaskMetrics,
    /// Tails of the guest's stdout and stderr.
    pub output: GuestOutput,
}

impl TaskView {
    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.ended_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.started_ms)
    }
}

/// Task counts of a stage by state.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TaskCounts {
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub fetch_failed: u64,
    pub killed: u64,
    pub lost: u64,
}

/// Min, 25th percentile, median, 75th percentile, max.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Quantiles {
    pub min: u64,
    pub p25: u64,
    pub median: u64,
    pub p75: u64,
    pub max: u64,
}

impl Quantiles {
    pub fn of(mut v: Vec<u64>) -> Option<Quantiles> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(Quantiles {
            min: v[0],
            p25: at(0.25),
            median: at(0.5),
            p75: at(0.75),
            max: v[v.len() - 1],
        })
    }
}

impl StageView {
    pub fn counts(&self) -> TaskCounts {
        let mut c = TaskCounts::default();
        for t in &self.tasks {
            match t.state.as_str() {
                "running" => c.running += 1,
                "succeeded" => c.succeeded += 1,
                "failed" => c.failed += 1,
                "fetch_failed" => c.fetch_failed += 1,
                "killed" => c.killed += 1,
                _ => c.lost += 1,
            }
        }
        c
    }

    /// Partitions with a successful attempt.
    pub fn partitions_done(&self) -> u32 {
        let mut done: Vec<u32> = self
            .tasks
            .iter()
            .filter(|t| t.state == "succeeded")
            .map(|t| t.partition)
            .collect();
        done.dedup();
        done.len() as u32
    }

    /// `waiting`, `running` or `done`.
    pub fn state(&self) -> &'static str {
        if self.tasks.iter().any(|t| t.state == "running") {
            "running"
        } else if self.completed_ms.is_some() && self.partitions_done() == self.info.partitions {
            "done"
        } else if self.tasks.is_empty() {
            "waiting"
        } else {
            "running"
        }
    }

    /// Durations of successful attempts.
    pub fn durations(&self) -> Option<Quantiles> {
        Quantiles::of(
            self.tasks
                .iter()
                .filter(|t| t.state == "succeeded")
                .map(|t| t.duration_ms(0))
                .collect(),
        )
    }

    /// Sums over successful attempts.
    pub fn totals(&self) -> TaskMetrics {
        let mut m = TaskMetrics::default();
        for t in self.tasks.iter().filter(|t| t.state == "succeeded") {
            m.add(&t.metrics);
        }
        m
    }
}

/// What a tenant's jobs consumed: every attempt counts, failed and killed ones too.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub jobs: u64,
    pub task_attempts: u64,
    pub task_seconds: f64,
    /// Wasm instructions counted, when the tenant's tasks are metered.
    pub fuel: Option<u64>,
    pub peak_memory_bytes: u64,
    pub input_bytes: u64,
    pub shuffle_write_bytes: u64,
    pub shuffle_read_bytes: u64,
    pub output_bytes: u64,
}

impl Usage {
    fn add_task(&mut self, m: &TaskMetrics) {
        self.task_attempts += 1;
        self.task_seconds += m.run_ms as f64 / 1000.0;
        if let Some(f) = m.fuel {
            self.fuel = Some(self.fuel.unwrap_or(0) + f);
        }
        self.peak_memory_bytes = self.peak_memory_bytes.max(m.peak_memory_bytes);
        self.input_bytes += m.input_bytes;
        self.shuffle_write_bytes += m.shuffle_write_bytes;
        self.shuffle_read_bytes += m.shuffle_read_local_bytes + m.shuffle_read_remote_bytes;
        self.output_bytes += m.output_bytes;
    }

    fn add(&mut self, o: &Usage) {
        self.jobs += o.jobs;
        self.task_attempts += o.task_attempts;
        self.task_seconds += o.task_seconds;
        if let Some(f) = o.fuel {
            self.fuel = Some(self.fuel.unwrap_or(0) + f);
        }
        self.peak_memory_bytes = self.peak_memory_bytes.max(o.peak_memory_bytes);
        self.input_bytes += o.input_bytes;
        self.shuffle_write_bytes += o.shuffle_write_bytes;
        self.shuffle_read_bytes += o.shuffle_read_bytes;
        self.output_bytes += o.output_bytes;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobUsage {
    pub job: u64,
    pub name: String,
    pub state: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub tenant: String,
    pub total: Usage,
    pub jobs: Vec<JobUsage>,
}

impl UiState {
    /// Per job and in total, what `tenant`'s jobs consumed.
    pub fn usage(&self, tenant: &str) -> UsageReport {
        let mut report = UsageReport {
            tenant: tenant.to_string(),
            ..Default::default()
        };
        for j in self.jobs.values().filter(|j| j.tenant == tenant) {
            let mut u = Usage {
                jobs: 1,
                ..Default::default()
            };
            for t in j
                .stages
                .iter()
                .flat_map(|s| &s.tasks)
                .filter(|t| t.ended_ms.is_some())
            {
                u.add_task(&t.metrics);
            }
            report.total.add(&u);
            report.jobs.push(JobUsage {
                job: j.id,
                name: j.name.clone(),
                state: j.state.clone(),
                usage: u,
            });
        }
        report
    }

    /// Tenants that ran jobs here.
    pub fn tenants(&self) -> Vec<String> {
        let mut t: Vec<String> = self.jobs.values().map(|j| j.tenant.clone()).collect();
        t.sort();
        t.dedup();
        t
    }

    pub fn apply(&mut self, ev: &Event) {
        match ev {
            Event::StagesReplanned {
                job,
                stages,
                changes,
                ..
            } => {
                if let Some(j) = self.jobs.get_mut(&job.0) {
                    for (view, info) in j.stages.iter_mut().zip(stages) {
                        view.info = info.clone();
                    }
                    j.adaptive.extend(changes.iter().cloned());
                }
            }
            Event::ExecutorAdded {
                at_ms,
                executor,
                addr,
                cores,
                metrics_addr,
            } => {
                self.executors.insert(
                    executor.0,
                    ExecutorView {
                        id: executor.0,
                        addr: addr.clone(),
                        cores: *cores,
                        metrics_addr: metrics_addr.clone(),
                        state: "alive".into(),
                        reason: None,
                        added_ms: *at_ms,
                        last_seen_ms: *at_ms,
                        tasks_running: 0,
                        tasks_succeeded: 0,
                        tasks_failed: 0,
                        tasks_killed: 0,
                        shuffle_write_bytes: 0,
                        shuffle_read_bytes: 0,
                        exclusions: Vec::new(),
                    },
                );
            }
            Event::ExecutorRemoved {
                at_ms,
                executor,
                reason,
            } => {
                if let Some(e) = self.executors.get_mut(&executor.0) {
                    e.state = reason
                        .split(':')
                        .next()
                        .unwrap_or("lost")
                        .trim()
                        .to_string();
                    e.reason = Some(reason.clone());
                    e.tasks_running = 0;
                }
                // Its attempts will never report.
                for job in self.jobs.values_mut() {
                    for stage in &mut job.stages {
                        for t in &mut stage.tasks {
                            if t.executor == executor.0 && t.state == "running" {
                                t.state = "lost".into();
                                t.ended_ms = Some(*at_ms);
                            }
                        }
                    }
                }
            }
            Event::ExecutorDecommissioning { executor, .. } => {
                if let Some(e) = self.executors.get_mut(&executor.0) {
                    e.state = "decommissioning".into();
                }
            }
            Event::ExecutorExcluded {
                executor,
                job,
                stage,
                reason,
                ..
            } => {
                if let Some(e) = self.executors.get_mut(&executor.0) {
                    let scope = match stage {
                        Some(s) => format!("stage {}.{s}", job.0),
                        None => format!("job {}", job.0),
                    };
                    e.exclusions.push(format!("excluded for {scope}: {reason}"));
                }
            }
            Event::JobStarted {
                at_ms,
                job,
                app,
                name,
                action,
                tenant,
                stages,
            } => {
                self.jobs.insert(
                    job.0,
                    JobView {
                        id: job.0,
                        app: *app,
                        name: name.clone(),
                        action: action.clone(),
                        tenant: tenant.clone(),
                        state: "running".into(),
                        started_ms: *at_ms,
                        ended_ms: None,
                        error: Vec::new(),
                        adaptive: Vec::new(),
                        stages: stages
                            .iter()
                            .map(|info| StageView {
                                info: info.clone(),
                                started_ms: None,
                                attempt: 0,
                                completed_ms: None,
                                map_output_bytes: None,
                                tasks: Vec::new(),
                            })
                            .collect(),
                    },
                );
            }
            Event::TaskStarted {
                at_ms,
                attempt,
                executor,
                speculative,
            } => {
                if let Some(e) = self.executors.get_mut(&executor.0) {
                    e.tasks_running += 1;
                    e.last_seen_ms = e.last_seen_ms.max(*at_ms);
                }
                if let Some(stage) =
                    self.stage_mut(attempt.task.stage.job.0, attempt.task.stage.index)
                {
                    let t = TaskView {
                        partition: attempt.task.partition,
                        attempt: attempt.attempt,
                        executor: executor.0,
                        speculative: *speculative,
                        started_ms: *at_ms,
                        ended_ms: None,
                        state: "running".into(),
                        error: Vec::new(),
                        metrics: TaskMetrics::default(),
                        output: GuestOutput::default(),
                    };
                    let at = stage
                        .tasks
                        .partition_point(|x| (x.partition, x.attempt) < (t.partition, t.attempt));
                    stage.tasks.insert(at, t);
                }
            }
            Event::TaskEnded {
                at_ms,
                attempt,
                executor,
                outcome,
                metrics,
                output,
            } => {
                let (state, error) = match outcome {
                    TaskOutcome::Succeeded => ("succeeded", Vec::new()),
                    TaskOutcome::Failed { kind, chain } => {
                        let mut e = vec![format!("{kind} error")];
                        e.extend(chain.iter().cloned());
                        ("failed", e)
                    }
                    TaskOutcome::FetchFailed { from, chain } => {
                        let mut e = vec![format!("could not fetch from executor {}", from.0)];
                        e.extend(chain.iter().cloned());
                        ("fetch_failed", e)
                    }
                    TaskOutcome::Killed { reason } => ("killed", vec![reason.clone()]),
                };
                if let Some(e) = self.executors.get_mut(&executor.0) {
                    e.tasks_running = e.tasks_running.saturating_sub(1);
                    e.last_seen_ms = e.last_seen_ms.max(*at_ms);
                    match state {
                        "succeeded" => {
                            e.tasks_succeeded += 1;
                            e.shuffle_write_bytes += metrics.shuffle_write_bytes;
                            e.shuffle_read_bytes += metrics.shuffle_read_local_bytes
                                + metrics.shuffle_read_remote_bytes;
                        }
                        "killed" => e.tasks_killed += 1,
                        _ => e.tasks_failed += 1,
                    }
                }
                if let Some(stage) =
                    self.stage_mut(attempt.task.stage.job.0, attempt.task.stage.index)
                    && let Ok(i) = stage
                        .tasks
                        .binary_search_by_key(&(attempt.task.partition, attempt.attempt), |t| {
                            (t.partition, t.attempt)
                        })
                {
                    // `tasks` is kept in (partition, attempt) order by TaskStarted.
                    let t = &mut stage.tasks[i];
                    t.state = state.into();
                    t.error = error;
                    t.ended_ms = Some(*at_ms);
                    t.metrics = metrics.clone();
                    t.output = output.clone();
                }
            }
            Event::StageStarted {
                at_ms,
                stage,
                attempt,
            } => {
                if let Some(s) = self.stage_mut(stage.job.0, stage.index) {
                    s.started_ms = Some(*at_ms);
                    s.attempt = *attempt;
                }
            }
            Event::StageCompleted {
                at_ms,
                stage,
                map_output_bytes,
            } => {
                if let Some(s) = self.stage_mut(stage.job.0, stage.index) {
                    s.completed_ms = Some(*at_ms);
                    s.map_output_bytes = *map_output_bytes;
                }
            }
            Event::JobEnded {
                at_ms,
                job,
                succeeded,
                error,
            } => {
                if let Some(j) = self.jobs.get_mut(&job.0) {
                    j.state = if *succeeded { "succeeded" } else { "failed" }.into();
                    j.ended_ms = Some(*at_ms);
                    j.error = error.clone();
                    for s in &mut j.stages {
                        for t in &mut s.tasks {
                            if t.state == "running" {
                                t.state = "killed".into();
                                t.error = vec!["the job ended".into()];
                                t.ended_ms = Some(*at_ms);
                            }
                        }
                    }
                }
            }
        }
    }

    fn stage_mut(&mut self, job: u64, index: u32) -> Option<&mut StageView> {
        self.jobs.get_mut(&job)?.stages.get_mut(index as usize)
    }

    /// Live only: an executor's heartbeat (not an event; too frequent to log).
    pub fn heartbeat(&mut self, executor: u32, at_ms: u64) {
        if let Some(e) = self.executors.get_mut(&executor) {
            e.last_seen_ms = e.last_seen_ms.max(at_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_spark_s_five_numbers() {
        let q = Quantiles::of(vec![5, 1, 3, 2, 4]).unwrap();
        assert_eq!(
            q,
            Quantiles {
                min: 1,
                p25: 2,
                median: 3,
                p75: 4,
                max: 5
            }
        );
        assert!(Quantiles::of(vec![]).is_none());
    }

    #[test]
    fn a_lost_executor_s_running_attempts_show_as_lost_and_a_retry_succeeds() {
        use flint_protocol::ids::{ExecutorId, JobId, StageId, TaskAttemptId, TaskId};
        let attempt = |n| TaskAttemptId {
            task: TaskId {
                stage: StageId {
                    job: JobId(1),
                    index: 0,
                },
                partition: 0,
            },
            attempt: n,
        };
        let mut st = UiState::default();
        for e in [1, 2] {
            st.apply(&Event::ExecutorAdded {
                at_ms: 0,
                executor: ExecutorId(e),
                addr: format!("e{e}"),
                cores: 1,
                metrics_addr: None,
            });
        }
        st.apply(&Event::JobStarted {
            at_ms: 0,
            job: JobId(1),
            app: 1,
            name: "j".into(),
            action: "count".into(),
            tenant: "default".into(),
            stages: vec![StageInfo {
                index: 0,
                parents: vec![],
                partitions: 1,
                name: "text_file".into(),
                shuffle_write: false,
            }],
        });
        st.apply(&Event::TaskStarted {
            at_ms: 10,
            attempt: attempt(0),
            executor: ExecutorId(1),
            speculative: false,
        });
        assert_eq!(st.jobs[&1].stages[0].state(), "running");
        st.apply(&Event::ExecutorRemoved {
            at_ms: 20,
            executor: ExecutorId(1),
            reason: "lost: no heartbeat for 1s".into(),
        });
        assert_eq!(st.executors[&1].state, "lost");
        assert_eq!(st.jobs[&1].stages[0].tasks[0].state, "lost");
        st.apply(&Event::TaskStarted {
            at_ms: 30,
            attempt: attempt(1),
            executor: ExecutorId(2),
            speculative: false,
        });
        st.apply(&Event::TaskEnded {
            at_ms: 50,
            attempt: attempt(1),
            executor: ExecutorId(2),
            outcome: TaskOutcome::Succeeded,
            metrics: TaskMetrics::default(),
            output: GuestOutput::default(),
        });
        st.apply(&Event::StageCompleted {
            at_ms: 50,
            stage: StageId {
                job: JobId(1),
                index: 0,
            },
            map_output_bytes: None,
        });
        let s = &st.jobs[&1].stages[0];
        assert_eq!(s.state(), "done");
        assert_eq!(s.partitions_done(), 1);
        assert_eq!(
            s.counts(),
            TaskCounts {
                succeeded: 1,
                lost: 1,
                ..Default::default()
            }
        );
        assert_eq!(s.durations().unwrap().median, 20);
        assert_eq!(st.executors[&2].tasks_succeeded, 1);
    }
}
