//! Input listing and splits: Hadoop-style byte ranges for line-based formats, runs of
//! row groups for Parquet, runs of record batches for Arrow IPC files.

use flint_storage::manifest::{self, Manifest};
use flint_storage::object;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub path: String,
    pub start: u64,
    pub end: u64,
    /// Bytes of the file it covers (for a run of units, their compressed sizes).
    pub bytes: u64,
    /// The `column=value` directories between the listed directory and the file.
    pub partition: Partition,
}

pub use flint_storage::hive::Partition;

/// A listed file: its path, size and partition columns.
pub type Listed = (PathBuf, u64, Partition);

/// Deepest `column=value` nesting a listing follows.
const MAX_PARTITION_DEPTH: usize = 16;

#[derive(Debug, Error)]
pub enum SplitError {
    #[error("input path {0} does not exist")]
    Missing(PathBuf),
    #[error("reading input path {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("no file matches {0}")]
    NoMatch(PathBuf),
    #[error("{pattern} is not a usable glob: {message}")]
    BadGlob { pattern: String, message: String },
    /// A bound was hit; `limit` names the setting.
    #[error("{what}, over {limit} = {max}")]
    Limit {
        limit: &'static str,
        what: String,
        max: u64,
    },
}

/// How much listing and splitting one source may produce.
#[derive(Clone, Copy, Debug)]
pub struct SplitLimits {
    /// Files listed, and splits made, at most (`driver.max_tasks_per_job`).
    pub max_files: u32,
    /// Splits of one source at most (`driver.max_partitions_per_stage`).
    pub max_splits: u32,
}

impl Default for SplitLimits {
    fn default() -> Self {
        SplitLimits {
            max_files: 1_000_000,
            max_splits: 100_000,
        }
    }
}

impl SplitLimits {
    fn too_many_files(&self, what: &str) -> SplitError {
        SplitError::Limit {
            limit: "driver.max_tasks_per_job",
            what: format!("{what} hold more than {} files", self.max_files),
            max: self.max_files as u64,
        }
    }
}

/// Longest glob pattern accepted: matching is linear in the name, compiling is not free.
const MAX_GLOB: usize = 1024;

/// A glob over file names: `*` any run of characters, `?` one, `[a-z]` a class, as the
/// `globset` crate matches them, in time linear in the name whatever the pattern.
fn glob(pattern: &str) -> Result<globset::GlobMatcher, SplitError> {
    let bad = |message: String| SplitError::BadGlob {
        pattern: pattern.to_string(),
        message,
    };
    if pattern.len() > MAX_GLOB {
        return Err(bad(format!("it is longer than {MAX_GLOB} bytes")));
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| bad(e.kind().to_string()))
}

/// Files of `path`, where the last component may be a glob (`data/part-*.csv`).
pub fn list_matching(path: &Path, limits: &SplitLimits) -> Result<Vec<Listed>, SplitError> {
    if let Some(url) = path.to_str().filter(|p| object::is_url(p))
        && let Some((dir, name)) = url.rsplit_once('/')
        && name.contains(['*', '?', '['])
        && object::is_url(dir)
    {
        let matcher = glob(name)?;
        let out: Vec<_> = list_objects(dir, limits)?
            .into_iter()
            .filter(|(p, _, partition)| {
                partition.is_empty() && p.file_name().is_some_and(|n| matcher.is_match(n))
            })
            .collect();
        if out.is_empty() {
            return Err(SplitError::NoMatch(path.to_path_buf()));
        }
        return Ok(out);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?', '[']) {
        return list_files(path, limits);
    }
    let matcher = glob(&name)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let out: Vec<_> = list_files(dir, limits)?
        .into_iter()
        .filter(|(p, _, _)| p.file_name().is_some_and(|n| matcher.is_match(n)))
        .collect();
    if out.is_empty() {
        return Err(SplitError::NoMatch(path.to_path_buf()));
    }
    Ok(out)
}

/// Files of `path`: the file itself, or the visible files of a directory (names starting
/// with `.` or `_` are skipped, as Hadoop does), in name order, with those of its
/// Hive-style `column=value` subdirectories (Spark's partition discovery); at most
/// `limits.max_files` of them.
pub fn list_files(path: &Path, limits: &SplitLimits) -> Result<Vec<Listed>, SplitError> {
    if let Some(url) = path.to_str().filter(|p| object::is_url(p)) {
        return list_objects(url, limits);
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SplitError::Missing(path.to_path_buf()));
        }
        Err(source) => {
            return Err(SplitError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if meta.is_file() {
        return Ok(vec![(path.to_path_buf(), meta.len(), Vec::new())]);
    }
    let success = path.join(manifest::NAME);
    let listed = match std::fs::metadata(&success) {
        Ok(m) if m.is_file() && m.len() > 0 => {
            let format = |message: String| SplitError::Format {
                path: success.clone(),
                message,
            };
            if m.len() > manifest::MAX_BYTES {
                return Err(format(format!(
                    "{} bytes, over the {} a manifest may have",
                    m.len(),
                    manifest::MAX_BYTES
                )));
            }
            let bytes = std::fs::read(&success).map_err(|source| SplitError::Io {
                path: success.clone(),
                source,
            })?;
            Manifest::parse(&bytes).map_err(format)?
        }
        _ => None,
    };
    let mut out = Vec::new();
    let mut dirs = vec![(path.to_path_buf(), Partition::new())];
    while let Some((dir, partition)) = dirs.pop() {
        let io = |source| SplitError::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let m = entry.metadata().map_err(io)?;
            if m.is_file() {
                if out.len() as u64 >= limits.max_files as u64 {
                    return Err(limits.too_many_files(&path.display().to_string()));
                }
                out.push((entry.path(), m.len(), partition.clone()));
            } else if m.is_dir()
                && partition.len() < MAX_PARTITION_DEPTH
                && let Some((column, value)) = flint_storage::hive::parse(&name)
            {
                let mut p = partition.clone();
                p.push((column.to_string(), value));
                dirs.push((entry.path(), p));
            }
        }
    }
    if let Some(m) = listed {
        let rel = |p: &Path| {
            p.strip_prefix(path)
                .unwrap_or(p)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        };
        let named = out.into_iter().map(|l| (rel(&l.0), l)).collect();
        out = only_listed(&success.display().to_string(), &m, named)?
            .into_iter()
            .map(|(_, l)| l)
            .collect();
    }
    out.sort();
    Ok(out)
}

/// The objects of `url` by the rules of [`list_files`]: the object itself, or those
/// below it as a directory whose names (and directories') do not start with `.` or `_`,
/// in directories that are all `column=value`; when its `_SUCCESS` is a manifest, the
/// files that lists (an output committed on object storage, see [`manifest`]).
fn list_objects(url: &str, limits: &SplitLimits) -> Result<Vec<Listed>, SplitError> {
    let io = |source| SplitError::Io {
        path: url.into(),
        source,
    };
    if let Some(len) = object::size(url).map_err(io)? {
        return Ok(vec![(url.into(), len, Vec::new())]);
    }
    let dir = url.trim_end_matches('/');
    // The manifest before the listing: a commit writes it after its files, so every file
    // it lists is there to be listed (unless a later overwrite removed it meanwhile).
    let success = format!("{dir}/{}", manifest::NAME);
    let listed = match object::read(&success, manifest::MAX_BYTES).map_err(io)? {
        Some(bytes) => Manifest::parse(&bytes).map_err(|message| SplitError::Format {
            path: success.clone().into(),
            message,
        })?,
        None => None,
    };
    let max = limits.max_files as usize;
    let objects = object::list(url, max).map_err(io)?;
    if objects.is_empty() {
        return Err(SplitError::Missing(url.into()));
    }
    if objects.len() > max {
        return Err(limits.too_many_files(url));
    }
    let mut out = Vec::new();
    for (object, len) in objects {
        let Some(rel) = object.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        if let Some(partition) = flint_storage::hive::visible(rel, MAX_PARTITION_DEPTH) {
            out.push((rel.to_string(), (PathBuf::from(object), len, partition)));
        }
    }
    match listed {
        Some(m) => out = only_listed(&success, &m, out)?,
        // A prefix is not a directory: with no data in it (only attempts' `_temporary/`
        // objects of a job that never committed, say) there is nothing there.
        None if out.is_empty() => return Err(SplitError::Missing(url.into())),
        None => {}
    }
    let mut out: Vec<Listed> = out.into_iter().map(|(_, l)| l).collect();
    out.sort();
    Ok(out)
}

/// The files of `listing` (relative name, file) that manifest `m` names; every file it
/// names must be there.
fn only_listed(
    success: &str,
    m: &Manifest,
    listing: Vec<(String, Listed)>,
) -> Result<Vec<(String, Listed)>, SplitError> {
    let names: std::collections::HashSet<&str> = m.files.iter().map(String::as_str).collect();
    let out: Vec<_> = listing
        .into_iter()
        .filter(|(rel, _)| names.contains(rel.as_str()))
        .collect();
    if out.len() < names.len() {
        let found: std::collections::HashSet<&str> = out.iter().map(|(r, _)| r.as_str()).collect();
        let gone = m
            .files
            .iter()
            .find(|f| !found.contains(f.as_str()))
            .cloned()
            .unwrap_or_default();
        return Err(SplitError::Format {
            path: success.into(),
            message: format!(
                "the manifest lists {gone}, which is not there (or not a data file): the output was changed after its job committed it"
            ),
        });
    }
    Ok(out)
}

/// The files of every path, with their sizes, and the split size that gives about
/// `min_partitions` splits in all, between `floor` and `max_split` bytes.
fn files_and_split_size(
    paths: &[String],
    min_partitions: u32,
    floor: u64,
    max_split: u64,
    limits: &SplitLimits,
) -> Result<(Vec<Listed>, u64), SplitError> {
    let mut files = Vec::new();
    for p in paths {
        files.extend(list_matching(Path::new(p), limits)?);
        if files.len() as u64 > limits.max_files as u64 {
            return Err(limits.too_many_files("the source's paths"));
        }
    }
    let total: u64 = files.iter().map(|(_, len, _)| len).sum();
    let size = (total / min_partitions.max(1) as u64).clamp(floor, max_split.max(floor));
    Ok((files, size))
}

/// One more split, unless the source has as many as it may.
fn push_split(out: &mut Vec<Split>, split: Split, limits: &SplitLimits) -> Result<(), SplitError> {
    if out.len() as u64 >= limits.max_splits as u64 {
        return Err(SplitError::Limit {
            limit: "driver.max_partitions_per_stage",
            what: format!(
                "the source has more than {} splits (raise files.max_partition_bytes for fewer)",
                limits.max_splits
            ),
            max: limits.max_splits as u64,
        });
    }
    out.push(split);
    Ok(())
}

/// Splits: about `total / min_partitions` bytes each, at most `max_split`; empty files
/// give none. A compressed file, or any file when `whole` (CSV records may span lines),
/// is one split.
pub fn plan(
    paths: &[String],
    min_partitions: u32,
    max_split: u64,
    whole: bool,
    limits: &SplitLimits,
) -> Result<Vec<Split>, SplitError> {
    let (files, size) = files_and_split_size(paths, min_partitions, 4096, max_split, limits)?;
    let mut out = Vec::new();
    for (path, len, partition) in files {
        let whole = whole || !flint_storage::codec::splittable(&path);
        let mut start = 0;
        while start < len {
            // Avoid a sliver at the end: the last split takes up to 10% extra.
            let end = if whole || len - start <= size + size / 10 {
                len
            } else {
                start + size
            };
            push_split(
                &mut out,
                Split {
                    path: path.to_string_lossy().into_owned(),
                    start,
                    end,
                    bytes: end - start,
                    partition: partition.clone(),
                },
                limits,
            )?;
            start = end;
        }
    }
    Ok(out)
}

/// Splits of columnar files: runs of Parquet row groups or Arrow IPC record batches of
/// about `total / min_partitions` bytes, at most `max_split` (a unit is never cut).
pub fn plan_units(
    paths: &[String],
    parquet: bool,
    min_partitions: u32,
    max_split: u64,
    limits: &SplitLimits,
) -> Result<Vec<Split>, SplitError> {
    let (files, size) = files_and_split_size(paths, min_partitions, 1, max_split, limits)?;
    let mut out = Vec::new();
    for (path, _, partition) in files {
        let format = |message: String| SplitError::Format {
            path: path.clone(),
            message,
        };
        let file = object::open(&path).map_err(|source| SplitError::Io {
            path: path.clone(),
            source,
        })?;
        // Bytes per unit (row group or batch), in order.
        let units: Vec<u64> = if parquet {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let r = SerializedFileReader::new(file)
                .map_err(|e| format(format!("not a readable Parquet file: {e}")))?;
            r.metadata()
                .row_groups()
                .iter()
                .map(|g| g.compressed_size().max(1) as u64)
                .collect()
        } else {
            let len = file.len().unwrap_or(0);
            let r = arrow_ipc::reader::FileReader::try_new(file, None)
                .map_err(|e| format(format!("not an Arrow IPC file: {e}")))?;
            let n = r.num_batches() as u64;
            (0..n).map(|_| (len / n.max(1)).max(1)).collect()
        };
        let name = path.to_string_lossy().into_owned();
        let (mut start, mut acc) = (0u64, 0u64);
        for (i, u) in units.iter().enumerate() {
            acc += u;
            if acc >= size {
                push_split(
                    &mut out,
                    Split {
                        path: name.clone(),
                        start,
                        end: i as u64 + 1,
                        bytes: acc,
                        partition: partition.clone(),
                    },
                    limits,
                )?;
                start = i as u64 + 1;
                acc = 0;
            }
        }
        if start < units.len() as u64 {
            push_split(
                &mut out,
                Split {
                    path: name,
                    start,
                    end: units.len() as u64,
                    bytes: acc,
                    partition,
                },
                limits,
            )?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_files_split_by_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), vec![b'x'; 20_000]).unwrap();
        std::fs::write(dir.path().join("b.txt"), b"").unwrap();
        std::fs::write(dir.path().join("_SUCCESS"), b"").unwrap();
        std::fs::write(dir.path().join("c.txt"), b"hi\n").unwrap();
        let splits = plan(
            &[dir.path().to_string_lossy().into()],
            4,
            1 << 20,
            false,
            &SplitLimits::default(),
        )
        .unwrap();
        let a: Vec<_> = splits
            .iter()
            .filter(|s| s.path.ends_with("a.txt"))
            .collect();
        assert_eq!(a.len(), 4);
        assert_eq!(a[0].start, 0);
        assert_eq!(a.last().unwrap().end, 20_000);
        assert!(a.windows(2).all(|w| w[0].end == w[1].start));
        assert!(splits.iter().any(|s| s.path.ends_with("c.txt")));
        assert!(
            !splits
                .iter()
                .any(|s| s.path.ends_with("b.txt") || s.path.ends_with("_SUCCESS"))
        );
    }

    #[test]
    fn a_manifest_names_the_files_of_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["part-0.csv", "part-1.csv", "stale.csv"] {
            std::fs::write(dir.path().join(f), b"x\n").unwrap();
        }
        let success = dir.path().join("_SUCCESS");
        let listed = |files: &[&str]| {
            let m = Manifest::new(files.iter().map(|f| f.to_string()).collect());
            std::fs::write(&success, m.to_bytes()).unwrap();
            list_files(dir.path(), &SplitLimits::default())
        };
        let names = |l: Vec<Listed>| -> Vec<String> {
            l.iter()
                .map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(listed(&["part-0.csv", "part-1.csv"]).unwrap()),
            ["part-0.csv", "part-1.csv"],
            "what the manifest does not list is not read"
        );
        let e = listed(&["part-0.csv", "part-2.csv"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("_SUCCESS") && e.contains("part-2.csv"), "{e}");
        // An empty marker, or another engine's, lists nothing: the directory reads whole.
        std::fs::write(&success, b"").unwrap();
        assert_eq!(
            names(list_files(dir.path(), &SplitLimits::default()).unwrap()).len(),
            3
        );
    }

    #[test]
    fn a_glob_selects_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.csv", "b.csv", "c.txt"] {
            std::fs::write(dir.path().join(f), b"x\n").unwrap();
        }
        let pattern = dir.path().join("*.csv");
        let splits = plan(
            &[pattern.to_string_lossy().into()],
            1,
            1 << 20,
            false,
            &SplitLimits::default(),
        )
        .unwrap();
        let names: Vec<_> = splits
            .iter()
            .map(|s| {
                Path::new(&s.path)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, vec!["a.csv", "b.csv"]);
        let none = dir.path().join("*.json");
        assert!(matches!(
            plan(
                &[none.to_string_lossy().into()],
                1,
                1 << 20,
                false,
                &SplitLimits::default()
            ),
            Err(SplitError::NoMatch(_))
        ));
    }

    #[test]
    fn missing_path_is_named() {
        let e = plan(
            &["/no/such/input".into()],
            1,
            1 << 20,
            false,
            &SplitLimits::default(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "input path /no/such/input does not exist");
    }

    #[test]
    fn a_pathological_glob_matches_in_linear_time() {
        let dir = tempfile::tempdir().unwrap();
        let a = "a".repeat(200);
        std::fs::write(dir.path().join(&a), b"x\n").unwrap();
        // With backtracking, this is exponential in the number of stars.
        let pattern = format!("{}{}b", "a".repeat(50), "*a".repeat(30));
        let started = std::time::Instant::now();
        let e = plan(
            &[dir.path().join(&pattern).to_string_lossy().into()],
            1,
            1 << 20,
            false,
            &SplitLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(e, SplitError::NoMatch(_)), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let long = dir.path().join("*".repeat(2000));
        assert!(matches!(
            plan(
                &[long.to_string_lossy().into()],
                1,
                1 << 20,
                false,
                &SplitLimits::default()
            ),
            Err(SplitError::BadGlob { .. })
        ));
    }

    #[test]
    fn files_and_splits_are_bounded_while_listing() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i}")), vec![b'x'; 10_000]).unwrap();
        }
        let path: String = dir.path().to_string_lossy().into();
        let few_files = SplitLimits {
            max_files: 10,
            max_splits: 1000,
        };
        let e = plan(std::slice::from_ref(&path), 1, 1 << 20, false, &few_files).unwrap_err();
        assert!(e.to_string().contains("driver.max_tasks_per_job"), "{e}");
        let few_splits = SplitLimits {
            max_files: 1000,
            max_splits: 30,
        };
        let e = plan(&[path], 1, 4096, false, &few_splits).unwrap_err();
        assert!(
            e.to_string().contains("driver.max_partitions_per_stage"),
            "{e}"
        );
    }

    #[test]
    fn partition_directories_are_discovered_and_compressed_files_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("year=2013").join("carrier=U%2FA");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::create_dir_all(dir.path().join("not-a-partition")).unwrap();
        std::fs::write(leaf.join("a.csv"), vec![b'x'; 50_000]).unwrap();
        std::fs::write(leaf.join("b.csv.gz"), vec![b'x'; 50_000]).unwrap();
        std::fs::write(dir.path().join("not-a-partition").join("c.csv"), b"x\n").unwrap();
        let root: String = dir.path().to_string_lossy().into();
        let splits = plan(
            std::slice::from_ref(&root),
            10,
            1 << 20,
            false,
            &SplitLimits::default(),
        )
        .unwrap();
        let want = vec![
            ("year".to_string(), Some("2013".to_string())),
            ("carrier".to_string(), Some("U/A".to_string())),
        ];
        assert!(splits.iter().all(|s| s.partition == want), "{splits:?}");
        let a = splits.iter().filter(|s| s.path.ends_with("a.csv")).count();
        let gz: Vec<_> = splits.iter().filter(|s| s.path.ends_with(".gz")).collect();
        assert!(a > 1, "a plain file is cut");
        assert_eq!(gz.len(), 1, "a gzip file is one split");
        assert_eq!((gz[0].start, gz[0].end), (0, 50_000));
        assert!(!splits.iter().any(|s| s.path.ends_with("c.csv")));
        let whole = plan(&[root], 10, 1 << 20, true, &SplitLimits::default()).unwrap();
        assert_eq!(whole.len(), 2, "multi-line CSV: one split per file");
    }
}
