//! Input listing and splits: Hadoop-style byte ranges for line-based formats, runs of
//! row groups for Parquet, runs of record batches for Arrow IPC files.

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub path: String,
    pub start: u64,
    pub end: u64,
}

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
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` any one.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Files of `path`, where the last component may be a glob (`data/part-*.csv`).
pub fn list_matching(path: &Path) -> Result<Vec<(PathBuf, u64)>, SplitError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return list_files(path);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let out: Vec<_> = list_files(dir)?
        .into_iter()
        .filter(|(p, _)| {
            p.file_name()
                .is_some_and(|n| glob_match(name.as_bytes(), n.to_string_lossy().as_bytes()))
        })
        .collect();
    if out.is_empty() {
        return Err(SplitError::NoMatch(path.to_path_buf()));
    }
    Ok(out)
}

/// Files of `path`: the file itself, or the visible files of a directory (names starting
/// with `.` or `_` are skipped, as Hadoop does), in name order.
pub fn list_files(path: &Path) -> Result<Vec<(PathBuf, u64)>, SplitError> {
    let io = |source| SplitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SplitError::Missing(path.to_path_buf()));
        }
        Err(e) => return Err(io(e)),
    };
    if meta.is_file() {
        return Ok(vec![(path.to_path_buf(), meta.len())]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let m = entry.metadata().map_err(io)?;
        if m.is_file() {
            out.push((entry.path(), m.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// The files of every path, with their sizes, and the split size that gives about
/// `min_partitions` splits in all, between `floor` and `max_split` bytes.
fn files_and_split_size(
    paths: &[String],
    min_partitions: u32,
    floor: u64,
    max_split: u64,
) -> Result<(Vec<(PathBuf, u64)>, u64), SplitError> {
    let mut files = Vec::new();
    for p in paths {
        files.extend(list_matching(Path::new(p))?);
    }
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let size = (total / min_partitions.max(1) as u64).clamp(floor, max_split.max(floor));
    Ok((files, size))
}

/// Splits: about `total / min_partitions` bytes each, at most `max_split`; empty files
/// give none.
pub fn plan(
    paths: &[String],
    min_partitions: u32,
    max_split: u64,
) -> Result<Vec<Split>, SplitError> {
    let (files, size) = files_and_split_size(paths, min_partitions, 4096, max_split)?;
    let mut out = Vec::new();
    for (path, len) in files {
        let mut start = 0;
        while start < len {
            // Avoid a sliver at the end: the last split takes up to 10% extra.
            let end = if len - start <= size + size / 10 {
                len
            } else {
                start + size
            };
            out.push(Split {
                path: path.to_string_lossy().into_owned(),
                start,
                end,
            });
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
) -> Result<Vec<Split>, SplitError> {
    let (files, size) = files_and_split_size(paths, min_partitions, 1, max_split)?;
    let mut out = Vec::new();
    for (path, _) in files {
        let format = |message: String| SplitError::Format {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(&path).map_err(|source| SplitError::Io {
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
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
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
                out.push(Split {
                    path: name.clone(),
                    start,
                    end: i as u64 + 1,
                });
                start = i as u64 + 1;
                acc = 0;
            }
        }
        if start < units.len() as u64 {
            out.push(Split {
                path: name,
                start,
                end: units.len() as u64,
            });
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
        let splits = plan(&[dir.path().to_string_lossy().into()], 4, 1 << 20).unwrap();
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
    fn a_glob_selects_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.csv", "b.csv", "c.txt"] {
            std::fs::write(dir.path().join(f), b"x\n").unwrap();
        }
        let pattern = dir.path().join("*.csv");
        let splits = plan(&[pattern.to_string_lossy().into()], 1, 1 << 20).unwrap();
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
            plan(&[none.to_string_lossy().into()], 1, 1 << 20),
            Err(SplitError::NoMatch(_))
        ));
    }

    #[test]
    fn missing_path_is_named() {
        let e = plan(&["/no/such/input".into()], 1, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "input path /no/such/input does not exist");
    }
}
