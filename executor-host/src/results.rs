//! Task results bound for the driver. Small ones ride in the task's status; past
//! [`MAX_DIRECT_RESULT`] the task writes them to a file here as they come, and the driver
//! fetches the file over a stream of its own once it has checked the bytes fit what the
//! action may bring back (Spark's indirect task results). Nothing large ever queues on the
//! control stream, and a result never has to fit in one message.
//!
//! A stored result is `u32` little-endian length-prefixed Arrow IPC streams, back to back,
//! in `WORK/results/<job>/<attempt>`; it goes when fetched or when its job is cleaned.

use flint_protocol::ids::{JobId, TaskAttemptId};
use flint_protocol::wire::{MAX_DIRECT_RESULT, TaskResult};
use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The results this executor holds for the driver.
pub struct ResultStore {
    root: PathBuf,
    stored: Mutex<HashMap<TaskAttemptId, (PathBuf, u64)>>,
}

impl ResultStore {
    pub fn new(work_dir: &Path) -> ResultStore {
        ResultStore {
            root: work_dir.join("results"),
            stored: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskAttemptId, (PathBuf, u64)>> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_dir(&self, job: JobId) -> PathBuf {
        self.root.join(job.0.to_string())
    }

    /// A result being built by `attempt`.
    pub fn writer(&self, attempt: TaskAttemptId) -> ResultWriter {
        let a = attempt;
        ResultWriter {
            path: self.job_dir(a.task.stage.job).join(format!(
                "{}.{}.{}",
                a.task.stage.index, a.task.partition, a.attempt
            )),
            direct: Vec::new(),
            bytes: 0,
            file: None,
        }
    }

    /// Keeps a finished writer's file for the driver to fetch.
    pub fn keep(&self, attempt: TaskAttemptId, path: PathBuf, bytes: u64) {
        self.lock().insert(attempt, (path, bytes));
    }

    /// The stored result of `attempt`: its file and size, forgotten here (the caller
    /// sends it, then removes the file).
    pub fn take(&self, attempt: TaskAttemptId) -> Option<(PathBuf, u64)> {
        self.lock().remove(&attempt)
    }

    /// The job is over: its stored results go.
    pub fn remove_job(&self, job: JobId) {
        self.lock().retain(|a, _| a.task.stage.job != job);
        let _ = std::fs::remove_dir_all(self.job_dir(job));
    }

    /// Leftovers of an earlier run of this executor.
    pub fn clear(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A task's result as it grows: in memory while small, in a file past
/// [`MAX_DIRECT_RESULT`].
pub struct ResultWriter {
    path: PathBuf,
    direct: Vec<Vec<u8>>,
    bytes: u64,
    file: Option<BufWriter<std::fs::File>>,
}

impl ResultWriter {
    /// Bytes so far (as stored: with the length prefixes).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn push(&mut self, batch: Vec<u8>) -> std::io::Result<()> {
        self.bytes += 4 + batch.len() as u64;
        if self.file.is_none() && self.bytes > MAX_DIRECT_RESULT {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = BufWriter::with_capacity(1 << 20, std::fs::File::create(&self.path)?);
            for b in std::mem::take(&mut self.direct) {
                write_batch(&mut f, &b)?;
            }
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => write_batch(f, &batch),
            None => {
                self.direct.push(batch);
                Ok(())
            }
        }
    }

    /// The result for the status, and the file to keep when there is one.
    pub fn finish(self) -> std::io::Result<(TaskResult, Option<(PathBuf, u64)>)> {
        match self.file {
            None => Ok((TaskResult::Direct(self.direct), None)),
            Some(mut f) => {
                f.flush()?;
                Ok((
                    TaskResult::Stored { bytes: self.bytes },
                    Some((self.path, self.bytes)),
                ))
            }
        }
    }

    /// Drops what was written (the task failed).
    pub fn discard(self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn write_batch(f: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    f.write_all(&(b.len() as u32).to_le_bytes())?;
    f.write_all(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flint_protocol::ids::{StageId, TaskId};

    #[test]
    fn a_small_result_stays_in_memory_and_a_large_one_goes_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultStore::new(dir.path());
        let attempt = TaskAttemptId {
            task: TaskId {
                stage: StageId {
                    job: JobId(3),
                    index: 1,
                },
                partition: 2,
            },
            attempt: 0,
        };
        let mut w = store.writer(attempt);
        w.push(b"abc".to_vec()).unwrap();
        assert!(
            matches!(w.finish().unwrap(), (TaskResult::Direct(b), None) if b == vec![b"abc".to_vec()])
        );

        let mut w = store.writer(attempt);
        let big = vec![7u8; (MAX_DIRECT_RESULT / 2) as usize];
        for _ in 0..3 {
            w.push(big.clone()).unwrap();
        }
        let (result, file) = w.finish().unwrap();
        let (path, bytes) = file.unwrap();
        assert!(matches!(result, TaskResult::Stored { bytes: b } if b == bytes));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        assert_eq!(bytes, 3 * (4 + big.len() as u64));
        store.keep(attempt, path.clone(), bytes);
        store.remove_job(JobId(3));
        assert!(!path.exists());
        assert!(store.take(attempt).is_none());
    }
}
