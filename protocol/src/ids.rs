//! Identifier newtypes. Wire and log formats show them as `job 3`, `stage 3.1`, `task 3.1.7`.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id {
    ($(#[$m:meta])* $name:ident($inner:ty), $fmt:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub $inner);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }
    };
}

id!(/// One action of an application (a `collect`, `count`, `save_as_text`...).
    JobId(u64), "job {}");
id!(/// A registered executor process.
    ExecutorId(u32), "executor {}");
id!(/// Index of a stage inside its job.
    StageIndex(u32), "{}");
id!(/// A shuffle inside its job (one per wide dependency).
    ShuffleId(u32), "shuffle {}");

impl JobId {
    /// The pseudo-job under which application `app` files its cached partitions on
    /// executors: they outlive the jobs that computed them. Real job ids never set the
    /// top bit.
    pub fn cache_of_app(app: u64) -> JobId {
        JobId(app | 1 << 63)
    }

    /// For a cache pseudo-job, the application it belongs to.
    pub fn cached_app(self) -> Option<u64> {
        (self.0 & 1 << 63 != 0).then_some(self.0 & !(1 << 63))
    }
}

/// A stage, globally: job plus index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StageId {
    pub job: JobId,
    pub index: u32,
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage {}.{}", self.job.0, self.index)
    }
}

/// One partition of one stage: what a task computes, whatever the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub stage: StageId,
    pub partition: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {}.{}.{} (partition {})",
            self.stage.job.0, self.stage.index, self.partition, self.partition
        )
    }
}

/// One attempt at a task; attempts count from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskAttemptId {
    pub task: TaskId,
    pub attempt: u32,
}

impl fmt::Display for TaskAttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} attempt {}", self.task, self.attempt)
    }
}

/// SHA-256 of a job component's bytes: how components are named everywhere.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..12])
    }
}
