//! Atomic output commit for `save_as_text`, in the manner of Hadoop's FileOutputCommitter:
//! task attempts write private files in a staging directory beside OUTPUT; the one
//! committed attempt per partition is renamed to `part-NNNNN`; the job commit renames the
//! staging directory to OUTPUT. A failed job removes the staging directory, so OUTPUT is
//! never half-written.

use flint_protocol::ids::{JobId, TaskAttemptId};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutputError {
    #[error("output directory {0} already exists and is not empty; remove it or choose another")]
    Exists(PathBuf),
    #[error("output path {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("output {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct OutputCommit {
    target: PathBuf,
    staging: PathBuf,
    /// Extension of part files (`.parquet`), empty for text.
    extension: &'static str,
}

impl OutputCommit {
    /// Checks OUTPUT and makes the staging directory.
    pub fn prepare(
        path: &str,
        job: JobId,
        extension: &'static str,
    ) -> Result<OutputCommit, OutputError> {
        let target = std::path::absolute(path).map_err(|source| OutputError::Io {
            path: path.into(),
            source,
        })?;
        check_free(&target)?;
        let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(
            ".{name}.flint-staging-{}-{}",
            std::process::id(),
            job.0
        ));
        let attempts = staging.join("_attempts");
        std::fs::create_dir_all(&attempts).map_err(|source| OutputError::Io {
            path: attempts,
            source,
        })?;
        Ok(OutputCommit {
            target,
            staging,
            extension,
        })
    }

    /// Where an attempt writes its partition.
    pub fn attempt_file(&self, a: TaskAttemptId) -> PathBuf {
        self.staging.join("_attempts").join(format!(
            "part-{:05}-attempt-{}",
            a.task.partition, a.attempt
        ))
    }

    /// Makes attempt `a`'s file the partition's output. An attempt that wrote no file
    /// (an empty partition of a columnar format) has none to publish.
    pub fn commit_task(&self, a: TaskAttemptId, rows: u64) -> Result<(), OutputError> {
        let from = self.attempt_file(a);
        if rows == 0 && !from.exists() {
            return Ok(());
        }
        let dest = self
            .staging
            .join(format!("part-{:05}{}", a.task.partition, self.extension));
        std::fs::rename(from, &dest).map_err(|source| OutputError::Io { path: dest, source })
    }

    /// Publishes the output: `_SUCCESS`, then one rename.
    pub fn commit_job(&self) -> Result<PathBuf, OutputError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutputError::Io { path, source }
        };
        // Move the attempts' files aside in one rename first: an attempt killed a moment
        // ago may still be writing there, which must not fail the commit nor leak into
        // OUTPUT.
        let attempts = self.staging.join("_attempts");
        let mut trash = self.staging.clone().into_os_string();
        trash.push(".attempts");
        let trash = PathBuf::from(trash);
        std::fs::rename(&attempts, &trash).map_err(io(&attempts))?;
        if std::fs::remove_dir_all(&trash).is_err() {
            let _ = std::fs::remove_dir_all(&trash);
        }
        let success = self.staging.join("_SUCCESS");
        std::fs::write(&success, b"").map_err(io(&success))?;
        check_free(&self.target)?;
        if self.target.is_dir() {
            std::fs::remove_dir(&self.target).map_err(io(&self.target))?;
        }
        std::fs::rename(&self.staging, &self.target).map_err(io(&self.target))?;
        Ok(self.target.clone())
    }

    pub fn abort(&self) {
        let _ = std::fs::remove_dir_all(&self.staging);
        let mut trash = self.staging.clone().into_os_string();
        trash.push(".attempts");
        let _ = std::fs::remove_dir_all(PathBuf::from(trash));
    }
}

fn check_free(target: &Path) -> Result<(), OutputError> {
    match std::fs::metadata(target) {
        Ok(m) if !m.is_dir() => Err(OutputError::NotADirectory(target.to_path_buf())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(target).map_err(|source| OutputError::Io {
                path: target.to_path_buf(),
                source,
            })?;
            if entries.next().is_some() {
                Err(OutputError::Exists(target.to_path_buf()))
            } else {
                Ok(())
            }
        }
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flint_protocol::ids::{StageId, TaskId};

    fn attempt(p: u32, a: u32) -> TaskAttemptId {
        TaskAttemptId {
            task: TaskId {
                stage: StageId {
                    job: JobId(1),
                    index: 0,
                },
                partition: p,
            },
            attempt: a,
        }
    }

    #[test]
    fn commit_publishes_only_committed_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let c = OutputCommit::prepare(out.to_str().unwrap(), JobId(1), "").unwrap();
        std::fs::write(c.attempt_file(attempt(0, 0)), "loser").unwrap();
        std::fs::write(c.attempt_file(attempt(0, 1)), "winner").unwrap();
        c.commit_task(attempt(0, 1), 1).unwrap();
        // An empty columnar partition wrote no file: nothing to publish, no error.
        c.commit_task(attempt(1, 0), 0).unwrap();
        assert!(!out.exists(), "nothing visible before the job commits");
        c.commit_job().unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("part-00000")).unwrap(),
            "winner"
        );
        assert!(out.join("_SUCCESS").exists());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }

    #[test]
    fn existing_output_is_refused_and_abort_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("x"), "").unwrap();
        let e = OutputCommit::prepare(out.to_str().unwrap(), JobId(1), "").unwrap_err();
        assert!(matches!(e, OutputError::Exists(_)), "{e}");
        let fresh = dir.path().join("fresh");
        let c = OutputCommit::prepare(fresh.to_str().unwrap(), JobId(2), "").unwrap();
        c.abort();
        assert!(!fresh.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "staging removed"
        );
    }
}
