//! Atomic output commit for the `save_*` actions.
//!
//! On a file system, in the manner of Hadoop's FileOutputCommitter: task attempts write
//! private files in a staging directory beside OUTPUT; the one committed attempt per
//! partition is renamed to `part-NNNNN` (under its `column=value/` directories when
//! partitioned); the job commit renames the staging directory to OUTPUT. A failed job
//! removes the staging directory, so OUTPUT is never half-written.
//!
//! On object storage, where nothing renames: attempts upload under
//! `OUTPUT/_temporary/<job>/` (hidden from readers, as every `_` name), the driver records
//! which attempt of each partition won, and the job commit copies the winners' objects to
//! their final keys (server side) and then PUTs `OUTPUT/_SUCCESS` as a manifest listing
//! them. A reader of OUTPUT reads what the manifest lists, so it sees the old output or
//! the new one, never a part of it; a failed or killed job leaves only `_temporary/`.
//!
//! Spark's save modes decide what an existing OUTPUT means: an error, output to replace
//! (in two renames; on object storage, a new manifest then deletes), to add to (one
//! rename per file; a manifest of old and new files), or to leave alone.

use flint_protocol::ids::{JobId, TaskAttemptId};
use flint_protocol::plan::SaveMode;
use flint_storage::manifest::{self, Manifest};
use flint_storage::object;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
}

/// Objects one commit lists at most (attempt files, or an existing output's files).
const MAX_OBJECTS: usize = 1_000_000;

/// Deepest `column=value` nesting an existing output's files are read from.
const MAX_PARTITION_DEPTH: usize = 16;

#[derive(Debug)]
pub struct OutputCommit {
    naming: Naming,
    place: Place,
}

#[derive(Debug)]
enum Place {
    Local {
        target: PathBuf,
        staging: PathBuf,
    },
    Object {
        /// `s3://bucket/prefix`, without a trailing `/`.
        url: String,
        /// `url/_temporary/<tag>`: where attempts upload.
        temp: String,
        /// The committed attempt of each partition, by the name of its file or directory.
        winners: Mutex<BTreeMap<u32, String>>,
    },
}

/// How published part files are named.
#[derive(Debug)]
struct Naming {
    /// Extension of part files (`.parquet`, `.csv.gz`), empty for plain text.
    extension: String,
    mode: SaveMode,
    /// Directory levels of `column=value` an attempt writes (0: one file).
    partition_levels: usize,
    /// Unique to this job, in part names when they must not meet an existing output's.
    tag: Option<String>,
}

impl Naming {
    /// `part-NNNNN[-tag][-cKKK].ext`: the chunk when an attempt wrote more than one file
    /// into one partition directory (it reopens a directory it had to close to bound its
    /// open files).
    fn part_name(&self, partition: u32, chunk: u32) -> String {
        let mut name = format!("part-{partition:05}");
        if let Some(tag) = &self.tag {
            name.push('-');
            name.push_str(tag);
        }
        if chunk > 0 {
            name.push_str(&format!("-c{chunk:03}"));
        }
        name + &self.extension
    }

    /// Where the file `rel` of a partitioned attempt (`k1=v1/…/kn=vn/cNNN`) is published:
    /// `k1=v1/…/kn=vn/part-NNNNN[-cKKK].ext`.
    fn published(&self, partition: u32, rel: &str, path: &str) -> Result<String, OutputError> {
        let layout = |message: String| OutputError::Layout {
            path: path.into(),
            message,
        };
        let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
        let depth = if dir.is_empty() {
            0
        } else {
            dir.split('/').count()
        };
        if depth != self.partition_levels {
            return Err(layout(format!(
                "an attempt wrote a file {depth} directories deep, not {}",
                self.partition_levels
            )));
        }
        // The executor names an attempt's files in a directory `c000`, `c001`, ….
        let chunk = file
            .strip_prefix('c')
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| layout("an attempt wrote a file not named cNNN".into()))?;
        Ok(format!("{dir}/{}", self.part_name(partition, chunk)))
    }
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.into();
    move |source| OutputError::Io { path, source }
}

/// An attempt's file (or directory) name.
fn attempt_name(a: TaskAttemptId) -> String {
    format!("part-{:05}-attempt-{}", a.task.partition, a.attempt)
}

impl OutputCommit {
    /// Checks OUTPUT against `mode` and makes the staging directory; `None` when the mode
    /// is `Ignore` and OUTPUT has files already (the save does nothing). Blocking.
    pub fn prepare(
        path: &str,
        job: JobId,
        extension: String,
        mode: SaveMode,
        partition_levels: usize,
    ) -> Result<Option<OutputCommit>, OutputError> {
        let tag = format!(
            "{}-{}-{:08x}",
            std::process::id(),
            job.0,
            rand::random::<u32>()
        );
        let mut naming = Naming {
            extension,
            mode,
            partition_levels,
            tag: (mode == SaveMode::Append).then(|| tag.clone()),
        };
        let (used, place) = if object::is_url(path) {
            let url = path.trim_end_matches('/').to_string();
            let (_, key) = object::parse(&url).map_err(io(&url))?;
            if key.is_empty() {
                return Err(OutputError::Layout {
                    path: url.into(),
                    message: "save under a prefix of the bucket, not at its root".into(),
                });
            }
            if object::size(&url).map_err(io(&url))?.is_some() {
                return Err(OutputError::NotADirectory(url.into()));
            }
            // Part names never meet the files they replace: the old manifest stays true
            // until the new one is written.
            if mode == SaveMode::Overwrite {
                naming.tag = Some(tag.clone());
            }
            let temp = format!("{url}/_temporary/{tag}");
            (
                object_in_use(&url)?,
                Place::Object {
                    url,
                    temp,
                    winners: Mutex::new(BTreeMap::new()),
                },
            )
        } else {
            let target = std::path::absolute(path).map_err(io(path))?;
            let parent = target.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let staging = parent.join(format!(".{name}.flint-staging-{tag}"));
            (in_use(&target)?, Place::Local { target, staging })
        };
        match mode {
            SaveMode::ErrorIfExists if used => {
                return Err(OutputError::Exists(PathBuf::from(path)));
            }
            SaveMode::Ignore if used => return Ok(None),
            _ => {}
        }
        if let Place::Local { staging, .. } = &place {
            let attempts = staging.join("_attempts");
            std::fs::create_dir_all(&attempts).map_err(io(&attempts))?;
        }
        Ok(Some(OutputCommit { naming, place }))
    }

    /// Where an attempt writes its partition: a file, or with partition columns a
    /// directory of `column=value/…/cNNN` files.
    pub fn attempt_file(&self, a: TaskAttemptId) -> String {
        match &self.place {
            Place::Local { staging, .. } => staging
                .join("_attempts")
                .join(attempt_name(a))
                .to_string_lossy()
                .into_owned(),
            Place::Object { temp, .. } => format!("{temp}/{}", attempt_name(a)),
        }
    }

    /// Makes attempt `a`'s output the partition's. An attempt that wrote no file (an
    /// empty partition of a columnar format) has none to publish. On object storage
    /// this only records the winner: the job commit publishes.
    pub fn commit_task(&self, a: TaskAttemptId, rows: u64) -> Result<(), OutputError> {
        let staging = match &self.place {
            Place::Object { winners, .. } => {
                let mut w = winners.lock().unwrap_or_else(|p| p.into_inner());
                w.insert(a.task.partition, attempt_name(a));
                return Ok(());
            }
            Place::Local { staging, .. } => staging,
        };
        let from = PathBuf::from(self.attempt_file(a));
        if rows == 0 && !from.exists() {
            return Ok(());
        }
        if self.naming.partition_levels == 0 {
            let dest = staging.join(self.naming.part_name(a.task.partition, 0));
            return std::fs::rename(from, &dest).map_err(io(&dest));
        }
        // `from/k1=v1/…/kn=vn/cNNN` → `staging/k1=v1/…/kn=vn/part-NNNNN.ext`.
        for file in files_under(&from, self.naming.partition_levels + 1)? {
            let rel = file.strip_prefix(&from).unwrap_or(&file);
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let dest = staging.join(self.naming.published(
                a.task.partition,
                &rel,
                &file.to_string_lossy(),
            )?);
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
            std::fs::rename(&file, &dest).map_err(io(&dest))?;
        }
        Ok(())
    }

    /// Publishes the output; returns where. Blocking.
    pub fn commit_job(&self) -> Result<String, OutputError> {
        match &self.place {
            Place::Local { target, staging } => self.commit_local(target, staging),
            Place::Object {
                url, temp, winners, ..
            } => {
                let winners = winners.lock().unwrap_or_else(|p| p.into_inner()).clone();
                self.commit_object(url, temp, &winners)
            }
        }
    }

    /// `_SUCCESS`, then one rename (or, appending to existing output, one rename per file).
    fn commit_local(&self, target: &Path, staging: &Path) -> Result<String, OutputError> {
        // Move the attempts' files aside in one rename first: an attempt killed a moment
        // ago may still be writing there, which must not fail the commit nor leak into
        // OUTPUT.
        let attempts = staging.join("_attempts");
        let trash = beside(staging, "attempts");
        std::fs::rename(&attempts, &trash).map_err(io(&attempts))?;
        remove_dir(&trash);
        let success = staging.join(manifest::NAME);
        std::fs::write(&success, b"").map_err(io(&success))?;
        let done = Ok(target.display().to_string());
        let used = in_use(target)?;
        match self.naming.mode {
            SaveMode::ErrorIfExists | SaveMode::Ignore if used => {
                return Err(OutputError::Exists(target.to_path_buf()));
            }
            SaveMode::Append if used => {
                for file in files_under(staging, self.naming.partition_levels + 1)? {
                    let rel = file.strip_prefix(staging).unwrap_or(&file);
                    let dest = target.join(rel);
                    if let Some(dir) = dest.parent() {
                        std::fs::create_dir_all(dir).map_err(io(dir))?;
                    }
                    std::fs::rename(&file, &dest).map_err(io(&dest))?;
                }
                remove_dir(staging);
                return done;
            }
            SaveMode::Overwrite if used => {
                // The old output goes aside in one rename, the new one takes its place.
                let old = beside(staging, "replaced");
                std::fs::rename(target, &old).map_err(io(target))?;
                std::fs::rename(staging, target).map_err(io(target))?;
                remove_dir(&old);
                return done;
            }
            _ => {}
        }
        if target.is_dir() {
            std::fs::remove_dir(target).map_err(io(target))?;
        }
        std::fs::rename(staging, target).map_err(io(target))?;
        done
    }

    /// Copies the winners' objects to their final keys, then writes the manifest that
    /// makes them the output, then removes what it replaced and the attempts' objects.
    fn commit_object(
        &self,
        url: &str,
        temp: &str,
        winners: &BTreeMap<u32, String>,
    ) -> Result<String, OutputError> {
        let by_name: HashMap<&str, u32> = winners.iter().map(|(p, n)| (n.as_str(), *p)).collect();
        let mut copies = Vec::new();
        let mut files = Vec::new();
        for (obj, _) in list_all(temp)? {
            let Some(rel) = obj.strip_prefix(temp).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            let (attempt, inner) = match rel.split_once('/') {
                Some((a, r)) => (a, Some(r)),
                None => (rel, None),
            };
            let Some(&partition) = by_name.get(attempt) else {
                continue; // a losing or failed attempt's
            };
            let dest = match inner {
                None if self.naming.partition_levels == 0 => self.naming.part_name(partition, 0),
                Some(inner) if self.naming.partition_levels > 0 => {
                    self.naming.published(partition, inner, &obj)?
                }
                _ => {
                    return Err(OutputError::Layout {
                        path: obj.clone().into(),
                        message: format!(
                            "an attempt's output is not laid out for {} partition columns",
                            self.naming.partition_levels
                        ),
                    });
                }
            };
            copies.push((obj.clone(), format!("{url}/{dest}")));
            files.push(dest);
        }
        let used = object_in_use(url)?;
        let mode = self.naming.mode;
        if used && matches!(mode, SaveMode::ErrorIfExists | SaveMode::Ignore) {
            return Err(OutputError::Exists(url.into()));
        }
        let existing = if used {
            existing_output(url)?
        } else {
            Existing::default()
        };
        let success = format!("{url}/{}", manifest::NAME);
        let put = |m: Manifest| object::put(&success, m.to_bytes()).map_err(io(&success));
        // Readers keep seeing what they saw while the new files are copied in.
        put(Manifest::new(existing.data.clone()))?;
        let published = object::copy_all(copies.clone())
            .map_err(io(url))
            .and_then(|()| {
                let mut listed = files.clone();
                if mode == SaveMode::Append {
                    listed.extend(existing.data.iter().cloned());
                }
                put(Manifest::new(listed))
            });
        if let Err(e) = published {
            // Undo: the copies go, and a fresh output's empty manifest with them.
            let mut undo: Vec<String> = copies.into_iter().map(|(_, to)| to).collect();
            if !used {
                undo.push(success.clone());
            }
            let _ = object::delete_all(&undo);
            return Err(e);
        }
        if mode == SaveMode::Overwrite {
            let new: HashSet<&str> = files.iter().map(String::as_str).collect();
            let old: Vec<String> = existing
                .all
                .iter()
                .filter(|f| !new.contains(f.as_str()) && f.as_str() != manifest::NAME)
                .map(|f| format!("{url}/{f}"))
                .collect();
            object::delete_all(&old).map_err(io(url))?;
        }
        self.abort();
        Ok(url.to_string())
    }

    /// Removes what the attempts wrote. Blocking.
    pub fn abort(&self) {
        match &self.place {
            Place::Local { staging, .. } => {
                remove_dir(staging);
                remove_dir(&beside(staging, "attempts"));
            }
            Place::Object { temp, .. } => {
                if let Ok(objects) = list_all(temp) {
                    let urls: Vec<String> = objects.into_iter().map(|(u, _)| u).collect();
                    if let Err(e) = object::delete_all(&urls) {
                        tracing::warn!("removing {temp}: {e}");
                    }
                }
            }
        }
    }
}

/// The objects below `url`, at most [`MAX_OBJECTS`].
fn list_all(url: &str) -> Result<Vec<(String, u64)>, OutputError> {
    let objects = object::list(url, MAX_OBJECTS).map_err(io(url))?;
    if objects.len() > MAX_OBJECTS {
        return Err(OutputError::Layout {
            path: url.into(),
            message: format!("more than {MAX_OBJECTS} objects"),
        });
    }
    Ok(objects)
}

/// Whether the prefix `url` holds anything but attempts' `_temporary/` objects.
fn object_in_use(url: &str) -> Result<bool, OutputError> {
    let (objects, prefixes) = object::list_dir(url).map_err(io(url))?;
    let temporary = format!("{url}/_temporary");
    Ok(!objects.is_empty()
        || prefixes
            .iter()
            .any(|p| p.trim_end_matches('/') != temporary))
}

/// An existing output on object storage, by names relative to it.
#[derive(Default)]
struct Existing {
    /// The files its readers read: its manifest's, or every data file.
    data: Vec<String>,
    /// Everything but `_temporary/`: what an overwrite removes.
    all: Vec<String>,
}

fn existing_output(url: &str) -> Result<Existing, OutputError> {
    let success = format!("{url}/{}", manifest::NAME);
    let listed = match object::read(&success, manifest::MAX_BYTES).map_err(io(&success))? {
        Some(bytes) => Manifest::parse(&bytes).map_err(|message| OutputError::Layout {
            path: success.clone().into(),
            message,
        })?,
        None => None,
    };
    let mut out = Existing::default();
    for (obj, _) in list_all(url)? {
        let Some(rel) = obj.strip_prefix(url).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        if rel.starts_with("_temporary/") {
            continue;
        }
        if flint_storage::hive::visible(rel, MAX_PARTITION_DEPTH).is_some() {
            out.data.push(rel.to_string());
        }
        out.all.push(rel.to_string());
    }
    if let Some(m) = listed {
        let named: HashSet<&str> = m.files.iter().map(String::as_str).collect();
        out.data.retain(|f| named.contains(f.as_str()));
    }
    Ok(out)
}

/// A path beside the staging directory (`….attempts`).
fn beside(staging: &Path, what: &str) -> PathBuf {
    let mut p = staging.to_path_buf().into_os_string();
    p.push(".");
    p.push(what);
    PathBuf::from(p)
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

    fn save(out: &Path, job: u64, mode: SaveMode, content: &str) -> Option<String> {
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
            let root = PathBuf::from(c.attempt_file(attempt(p, a)));
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
