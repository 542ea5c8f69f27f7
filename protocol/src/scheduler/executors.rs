//! The executor registry: who is registered with how many slots, who is shutting down,
//! who has gone silent, and the one path by which an executor leaves: decided here,
//! announced as [`Command::RemoveExecutor`], carried out by the driver's IO shell.

use super::{Command, Scheduler, fmt_ms};
use crate::ids::{ExecutorId, TaskAttemptId};
use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug)]
pub(super) struct Executor {
    pub(super) cores: u32,
    pub(super) running: BTreeSet<TaskAttemptId>,
    pub(super) last_heartbeat_ms: u64,
    pub(super) tasks_succeeded: u64,
    pub(super) tasks_failed: u64,
    /// Shutting down gracefully: no new tasks.
    pub(super) decommissioning: bool,
}

impl Executor {
    pub(super) fn has_free_slot(&self) -> bool {
        !self.decommissioning && (self.running.len() as u32) < self.cores
    }

    /// Its place in [`Scheduler::free`]: least loaded first (running per core), then by id.
    fn load(&self) -> usize {
        self.running.len() * 1000 / self.cores as usize
    }
}

impl Scheduler {
    /// Runs `f` on executor `id`'s state, keeping the index of executors with a free slot
    /// and the running count per job in line with it: every change of an executor's
    /// running attempts or of its taking tasks goes through here.
    pub(super) fn with_executor<R>(
        &mut self,
        id: ExecutorId,
        f: impl FnOnce(&mut Executor) -> R,
    ) -> Option<R> {
        let e = self.executors.get_mut(&id)?;
        self.free.remove(&(e.load(), id));
        let r = f(e);
        if e.has_free_slot() {
            self.free.insert((e.load(), id));
        }
        Some(r)
    }

    /// `attempt` runs on `executor` from now.
    pub(super) fn attempt_started(&mut self, executor: ExecutorId, attempt: TaskAttemptId) {
        if self.with_executor(executor, |e| e.running.insert(attempt)) == Some(true) {
            *self
                .running_per_job
                .entry(attempt.task.stage.job)
                .or_default() += 1;
        }
    }

    /// `attempt` no longer runs on `executor`; `f` updates its counters.
    pub(super) fn attempt_ended(
        &mut self,
        executor: ExecutorId,
        attempt: TaskAttemptId,
        f: impl FnOnce(&mut Executor),
    ) {
        let removed = self.with_executor(executor, |e| {
            f(e);
            e.running.remove(&attempt)
        });
        if removed == Some(true) {
            self.job_attempt_ended(attempt.task.stage.job);
        }
    }

    /// Debug builds check the indexes against the executors they summarize.
    pub(super) fn check_indexes(&self) {
        if cfg!(debug_assertions) {
            let free: BTreeSet<(usize, ExecutorId)> = self
                .executors
                .iter()
                .filter(|(_, e)| e.has_free_slot())
                .map(|(id, e)| (e.load(), *id))
                .collect();
            assert_eq!(free, self.free, "the free-slot index");
            let mut per_job = std::collections::BTreeMap::new();
            for a in self.executors.values().flat_map(|e| &e.running) {
                *per_job.entry(a.task.stage.job).or_insert(0u32) += 1;
            }
            assert_eq!(per_job, self.running_per_job, "the running count per job");
        }
    }

    fn job_attempt_ended(&mut self, job: crate::ids::JobId) {
        if let Some(n) = self.running_per_job.get_mut(&job) {
            *n -= 1;
            if *n == 0 {
                self.running_per_job.remove(&job);
            }
        }
    }
}

/// Why an executor was removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecutorRemoval {
    /// No heartbeat within `executor.timeout`.
    Lost { silent_ms: u64 },
    /// Its connection ended without a goodbye.
    Disconnected,
    /// It left after announcing it would (SIGTERM).
    Decommissioned,
    /// The driver could not reach it (its queue is full).
    Unreachable { why: String },
}

impl fmt::Display for ExecutorRemoval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutorRemoval::Lost { silent_ms } => {
                write!(f, "lost: no heartbeat for {}", fmt_ms(*silent_ms))
            }
            ExecutorRemoval::Disconnected => f.write_str("disconnected"),
            ExecutorRemoval::Decommissioned => f.write_str("decommissioned"),
            ExecutorRemoval::Unreachable { why } => write!(f, "unreachable: {why}"),
        }
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

impl Scheduler {
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

    pub fn is_registered(&self, id: ExecutorId) -> bool {
        self.executors.contains_key(&id)
    }

    pub fn executor_added(&mut self, id: ExecutorId, cores: u32, now_ms: u64) {
        self.set_time(now_ms);
        if let Some(old) = self.executors.remove(&id) {
            // Registered again under the same id: the indexes forget the old one.
            self.free.remove(&(old.load(), id));
            for attempt in old.running {
                self.job_attempt_ended(attempt.task.stage.job);
            }
        }
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
        self.with_executor(id, |_| ());
        self.schedule();
    }

    /// Anything heard from the executor counts as a heartbeat.
    pub fn heartbeat(&mut self, id: ExecutorId, now_ms: u64) {
        self.set_time(now_ms);
        if let Some(e) = self.executors.get_mut(&id) {
            e.last_heartbeat_ms = now_ms;
        }
    }

    /// The executor is shutting down gracefully: it gets no new tasks; what it still runs
    /// either finishes or comes back killed, and neither counts as a failure. When its
    /// connection ends it was decommissioned, not lost.
    pub fn executor_decommissioning(&mut self, id: ExecutorId) {
        self.with_executor(id, |e| e.decommissioning = true);
        self.schedule();
    }

    /// The executor's connection ended.
    pub fn executor_disconnected(&mut self, id: ExecutorId) {
        let reason = match self.executors.get(&id) {
            Some(e) if e.decommissioning => ExecutorRemoval::Decommissioned,
            Some(_) => ExecutorRemoval::Disconnected,
            None => return,
        };
        self.remove_executor(id, reason);
    }

    /// The driver cannot get messages to the executor.
    pub fn executor_unreachable(&mut self, id: ExecutorId, why: impl Into<String>) {
        self.remove_executor(id, ExecutorRemoval::Unreachable { why: why.into() });
    }

    /// Executors silent for longer than `executor.timeout` are removed.
    pub(super) fn remove_silent_executors(&mut self) {
        let (now, timeout) = (self.now_ms, self.conf.executor_timeout_ms);
        let silent: Vec<(ExecutorId, u64)> = self
            .executors
            .iter()
            .map(|(id, e)| (*id, now.saturating_sub(e.last_heartbeat_ms)))
            .filter(|(_, silent)| *silent > timeout)
            .collect();
        for (id, silent_ms) in silent {
            self.remove_executor(id, ExecutorRemoval::Lost { silent_ms });
        }
    }

    /// The one way out: the executor's running attempts go back to pending (not counted
    /// as failures), its map outputs and cached partitions are forgotten and the stages
    /// that made them run again, and the driver is told to close its connection.
    pub(super) fn remove_executor(&mut self, id: ExecutorId, reason: ExecutorRemoval) {
        let Some(exec) = self.executors.remove(&id) else {
            return;
        };
        self.free.remove(&(exec.load(), id));
        for attempt in exec.running {
            self.job_attempt_ended(attempt.task.stage.job);
            self.forget_attempt(attempt);
        }
        self.cached.forget_executor(id);
        self.unregister_outputs(id, None);
        self.commands.push_back(Command::RemoveExecutor {
            executor: id,
            reason,
        });
        self.schedule();
    }
}
