//! Input listing and Hadoop-style splits by byte range.

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

/// Splits: about `total / min_partitions` bytes each, at most `max_split`; empty files
/// give none.
pub fn plan(
    paths: &[String],
    min_partitions: u32,
    max_split: u64,
) -> Result<Vec<Split>, SplitError> {
    let mut files = Vec::new();
    for p in paths {
        files.extend(list_files(Path::new(p))?);
    }
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let goal = total / min_partitions.max(1) as u64;
    let size = goal.clamp(4096, max_split.max(4096));
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
    fn missing_path_is_named() {
        let e = plan(&["/no/such/input".into()], 1, 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "input path /no/such/input does not exist");
    }
}
