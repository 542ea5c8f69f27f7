//! Atomic output commit for the `save_*` actions, in the manner of Hadoop's
//! FileOutputCommitter: task attempts write private files in a staging directory beside
//! OUTPUT; the one committed attempt per partition is renamed to `part-NNNNN` (under its
//! `column=value/` directories when partitioned); the job commit renames the staging
//! directory to OUTPUT. A failed job removes the staging directory, so OUTPUT is never
//! half-written. Spark's save modes decide what an existing OUTPUT means: an error, output
//! to replace (in two renames), to add to (one rename per file), or to leave alone.

use flint_protocol::ids::{JobId, TaskAttemptId};
use flint_protocol::plan::SaveMode;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutputError {
    #[error(
        "output directory {0} already exists and is not empty; remove it, choose another, or save with mode overwrite or append"
    )]
    Exists(PathBuf),
    #[error("output path {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("output {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output {path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error(
        "output {0}: saving to object storage is not supported yet; save to a local or shared file system path"
    )]
    ObjectStorage(String),
}

#[derive(Debug)]
pub struct OutputCommit {
    target: PathBuf,
    staging: PathBuf,
    /// Extension of part files (`.parquet`, `.csv.gz`), empty for plain text.
    extension: String,
    mode: SaveMode,
    /// Directory levels of `column=value` an attempt writes (0: one file).
    partition_levels: usize,
    /// Unique to this job: names appended part files so they do not meet earlier ones.
    tag: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + use<> {
    let path = path.to_path_buf();
    move |source| OutputError::Io { path, source }
}

impl OutputCommit {
    /// Checks OUTPUT against `mode` and makes the staging directory; `None` when the mode
    /// is `Ignore` and OUTPUT has files already (the save does nothing).
    pub fn prepare(
        path: &str,
        job: JobId,
        extension: String,
        mode: SaveMode,
        partition_levels: usize,
    ) -> Result<Option<OutputCommit>, OutputError> {
        if flint_storage::object::is_url(path) {
            return Err(OutputError::ObjectStorage(path.to_string()));
        }
        let target = std::path::absolute(path).map_err(|source| OutputError::Io {
            path: path.into(),
            source,
        })?;
        let used = in_use(&target)?;
        match mode {
            SaveMode::ErrorIfExists if used => return Err(OutputError::Exists(target)),
            SaveMode::Ignore if used => return Ok(None),
            _ => {}
        }
        let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = format!("{}-{}", std::process::id(), job.0);
        let staging = parent.join(format!(".{name}.flint-staging-{tag}"));
        let attempts = staging.join("_attempts");
        std::fs::create_dir_all(&attempts).map_err(io(&attempts))?;
        Ok(Some(OutputCommit {
            target,
            staging,
            extension,
            mode,
            partition_levels,
            tag: format!("{tag}-{:08x}", rand::random::<u32>()),
        }))
    }

    /// Where an attempt writes its partition: a file, or with partition columns a
    /// directory of `column=value/…/part` files.
    pub fn attempt_file(&self, a: TaskAttemptId) -> PathBuf {
        self.staging.join("_attempts").join(format!(
            "part-{:05}-attempt-{}",
            a.task.partition, a.attempt
        ))
    }

    /// `part-NNNNN[-tag][-cKKK].ext`: the tag when appending, the chunk when an attempt
    /// wrote more than one file into one partition directory (it reopens a directory it
    /// had to close to bound its open files).
    fn part_name(&self, partition: u32, chunk: u32) -> String {
        let mut name = format!("part-{partition:05}");
        if self.mode == SaveMode::Append {
            name.push('-');
            name.push_str(&self.tag);
        }
        if chunk > 0 {
            name.push_str(&format!("-c{chunk:03}"));
        }
        name + &self.extension
    }

    /// Makes attempt `a`'s output the partition's. An attempt that wrote no file (an
    /// empty partition of a columnar format) has none to publish.
    pub fn commit_task(&self, a: TaskAttemptId, rows: u64) -> Result<(), OutputError> {
        let from = self.attempt_file(a);
        if rows == 0 && !from.exists() {
            return Ok(());
        }
        if self.partition_levels == 0 {
            let dest = self.staging.join(self.part_name(a.task.partition, 0));
            return std::fs::rename(from, &dest).map_err(io(&dest));
        }
        // `from/k1=v1/…/kn=vn/part` → `staging/k1=v1/…/kn=vn/part-NNNNN.ext`.
        for file in files_under(&from, self.partition_levels + 1)? {
            let rel = file.strip_prefix(&from).unwrap_or(&file);
            let dir = rel.parent().unwrap_or(Path::new(""));
            if dir.components().count() != self.partition_levels {
                return Err(OutputError::Layout {
                    path: file.clone(),
                    message: format!(
                        "an attempt wrote a file {} directories deep, not {}",
                        dir.components().count(),
                        self.partition_levels
                    ),
                });
            }
            let dest_dir = self.staging.join(dir);
            std::fs::create_dir_all(&dest_dir).map_err(io(&dest_dir))?;
            // The executor names an attempt's files in a directory `c000`, `c001`, ….
            let chunk = file
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix('c'))
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| OutputError::Layout {
                    path: file.clone(),
                    message: "an attempt wrote a file not named cNNN".into(),
                })?;
            let dest = dest_dir.join(self.part_name(a.task.partition, chunk));
            std::fs::rename(&file, &dest).map_err(io(&dest))?;
        }
        Ok(())
    }

    /// Publishes the output: `_SUCCESS`, then one rename (or, appending to existing
    /// output, one rename per file).
    pub fn commit_job(&self) -> Result<PathBuf, OutputError> {
        // Move the attempts' files aside in one rename first: an attempt killed a moment
        // ago may still be writing there, which must not fail the commit nor leak into
        // OUTPUT.
        let attempts = self.staging.join("_attempts");
        let trash = self.beside("attempts");
        std::fs::rename(&attempts, &trash).map_err(io(&attempts))?;
        remove_dir(&trash);
        let success = self.staging.join("_SUCCESS");
        std::fs::write(&success, b"").map_err(io(&success))?;
        let used = in_use(&self.target)?;
        match self.mode {
            SaveMode::ErrorIfExists | SaveMode::Ignore if used => {
                return Err(OutputError::Exists(self.target.clone()));
            }
            SaveMode::Append if used => {
                for file in files_under(&self.staging, self.partition_levels + 1)? {
                    let rel = file.strip_prefix(&self.staging).unwrap_or(&file);
                    let dest = self.target.join(rel);
                    if let Some(dir) = dest.parent() {
                        std::fs::create_dir_all(dir).map_err(io(dir))?;
                    }
                    std::fs::rename(&file, &dest).map_err(io(&dest))?;
                }
                remove_dir(&self.staging);
                return Ok(self.target.clone());
            }
            SaveMode::Overwrite if used => {
                // The old output goes aside in one rename, the new one takes its place.
                let old = self.beside("replaced");
                std::fs::rename(&self.target, &old).map_err(io(&self.target))?;
                std::fs::rename(&self.staging, &self.target).map_err(io(&self.target))?;
                remove_dir(&old);
                return Ok(self.target.clone());
            }
            _ => {}
        }
        if self.target.is_dir() {
            std::fs::remove_dir(&self.target).map_err(io(&self.target))?;
        }
        std::fs::rename(&self.staging, &self.target).map_err(io(&self.target))?;
        Ok(self.target.clone())
    }

    /// A path beside the staging directory (`….attempts`).
    fn beside(&self, what: &str) -> PathBuf {
        let mut p = self.staging.clone().into_os_string();
        p.push(".");
        p.push(what);
        PathBuf::from(p)
    }

    pub fn abort(&self) {
        remove_dir(&self.staging);
        remove_dir(&self.beside("attempts"));
    }
}

fn remove_dir(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The files under `dir`, at most `depth` levels down, skipping `_attempts`.
fn files_under(dir: &Path, depth: usize) -> Result<Vec<PathBuf>, OutputError> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0)];
    while let Some((d, level)) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                if level + 1 < depth && entry.file_name() != "_attempts" {
                    todo.push((path, level + 1));
                }
            } else if kind.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `target` holds anything; a non-directory is refused.
fn in_use(target: &Path) -> Result<bool, OutputError> {
    match std::fs::metadata(target) {
        Ok(m) if !m.is_dir() => Err(OutputError::NotADirectory(target.to_path_buf())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(target).map_err(io(target))?;
            Ok(entries.next().is_some())
        }
        Err(_) => Ok(false),
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
        let c = OutputCommit::prepare(
            out.to_str().unwrap(),
            JobId(1),
            String::new(),
            SaveMode::ErrorIfExists,
            0,
        )
        .unwrap()
        .unwrap();
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
        let e = OutputCommit::prepare(
            out.to_str().unwrap(),
            JobId(1),
            String::new(),
            SaveMode::ErrorIfExists,
            0,
        )
        .unwrap_err();
        assert!(matches!(e, OutputError::Exists(_)), "{e}");
        let fresh = dir.path().join("fresh");
        let c = OutputCommit::prepare(
            fresh.to_str().unwrap(),
            JobId(2),
            String::new(),
            SaveMode::ErrorIfExists,
            0,
        )
        .unwrap()
        .unwrap();
        c.abort();
        assert!(!fresh.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "staging removed"
        );
    }

    fn save(out: &Path, job: u64, mode: SaveMode, content: &str) -> Option<PathBuf> {
        let c = OutputCommit::prepare(out.to_str().unwrap(), JobId(job), ".txt".into(), mode, 0)
            .unwrap()?;
        std::fs::write(c.attempt_file(attempt(0, 0)), content).unwrap();
        c.commit_task(attempt(0, 0), 1).unwrap();
        Some(c.commit_job().unwrap())
    }

    fn contents(dir: &Path) -> Vec<String> {
        files_under(dir, 4)
            .unwrap()
            .iter()
            .filter(|f| !f.ends_with("_SUCCESS"))
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect()
    }

    #[test]
    fn save_modes_replace_add_to_or_leave_existing_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        save(&out, 1, SaveMode::ErrorIfExists, "first").unwrap();
        assert!(
            OutputCommit::prepare(
                out.to_str().unwrap(),
                JobId(2),
                String::new(),
                SaveMode::ErrorIfExists,
                0
            )
            .is_err()
        );
        assert!(save(&out, 3, SaveMode::Ignore, "ignored").is_none());
        assert_eq!(contents(&out), ["first"]);
        save(&out, 4, SaveMode::Append, "second").unwrap();
        let mut got = contents(&out);
        got.sort();
        assert_eq!(got, ["first", "second"]);
        save(&out, 5, SaveMode::Overwrite, "third").unwrap();
        assert_eq!(contents(&out), ["third"]);
        assert!(out.join("_SUCCESS").exists());
        // Nothing is left beside OUTPUT: no staging, no replaced output.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_partitioned_attempt_is_published_under_its_directories() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let c = OutputCommit::prepare(
            out.to_str().unwrap(),
            JobId(1),
            ".csv".into(),
            SaveMode::ErrorIfExists,
            2,
        )
        .unwrap()
        .unwrap();
        for (p, a) in [(0, 0), (1, 0)] {
            let root = c.attempt_file(attempt(p, a));
            for d in ["y=1/m=a", "y=1/m=b", "y=2/m=a"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
                std::fs::write(root.join(d).join("c000"), format!("{p} {d}")).unwrap();
            }
            // A directory reopened after its writer was closed holds a second chunk.
            std::fs::write(root.join("y=2/m=a/c001"), format!("{p} again")).unwrap();
            c.commit_task(attempt(p, a), 3).unwrap();
        }
        c.commit_job().unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("y=1/m=b/part-00001.csv")).unwrap(),
            "1 y=1/m=b"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("y=2/m=a/part-00001-c001.csv")).unwrap(),
            "1 again"
        );
        assert_eq!(
            files_under(&out, 3).unwrap().len(),
            9,
            "eight parts and _SUCCESS"
        );
    }
}
