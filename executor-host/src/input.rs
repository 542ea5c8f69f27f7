//! Text input: Hadoop-style splits of a file into Arrow batches of lines.
//!
//! A split `[start, end)` owns every line whose first byte lies in it: a split that does
//! not start at 0 skips the line in progress (the previous split reads it to its end,
//! past its own `end`). Lines lose their `\n` or `\r\n`.

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Lines per batch handed to a guest.
pub const BATCH_ROWS: usize = 8192;
/// Bytes of text per batch (a batch closes at whichever limit comes first).
pub const BATCH_BYTES: usize = 4 << 20;

#[derive(Debug, Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid UTF-8 at byte offset {offset}")]
    Utf8 { path: PathBuf, offset: u64 },
    #[error("encoding a batch: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// One batch of lines, encoded for the guest.
pub struct LineBatch {
    pub ipc: Vec<u8>,
    pub rows: u64,
    pub bytes: u64,
}

/// Whole lines of a split as raw bytes.
#[derive(Default)]
pub struct RawLines {
    pub bytes: Vec<u8>,
    /// Per line: (file offset of its first byte, offset in `bytes`).
    pub starts: Vec<(u64, usize)>,
}

impl RawLines {
    /// Line `i`'s bytes (with its `\n`).
    pub fn line(&self, i: usize) -> &[u8] {
        let from = self.starts[i].1;
        let to = self.starts.get(i + 1).map_or(self.bytes.len(), |s| s.1);
        &self.bytes[from..to]
    }
}

pub struct SplitReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// Offset of the next unread byte.
    pos: u64,
    end: u64,
    line: Vec<u8>,
    schema: Arc<Schema>,
}

impl SplitReader {
    pub fn open(path: &Path, start: u64, end: u64) -> Result<SplitReader, InputError> {
        let io = |source| InputError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut pos = start;
        if start > 0 {
            // Skip the line in progress at `start`: it belongs to the previous split.
            reader.seek(SeekFrom::Start(start - 1)).map_err(io)?;
            let mut skipped = Vec::new();
            let n = reader.read_until(b'\n', &mut skipped).map_err(io)?;
            pos = start - 1 + n as u64;
        }
        Ok(SplitReader {
            path: path.to_path_buf(),
            reader,
            pos,
            end,
            line: Vec::new(),
            schema: Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)])),
        })
    }

    /// The next run of whole lines (with their line ends) as raw bytes, with the file
    /// offset of each line's first byte, or `None` when the split is done.
    pub fn next_lines(&mut self) -> Result<Option<RawLines>, InputError> {
        let mut out = RawLines::default();
        while self.pos < self.end && out.starts.len() < BATCH_ROWS && out.bytes.len() < BATCH_BYTES
        {
            let line_start = self.pos;
            let before = out.bytes.len();
            let n = self
                .reader
                .read_until(b'\n', &mut out.bytes)
                .map_err(|source| InputError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                self.end = self.pos;
                break;
            }
            self.pos += n as u64;
            if out.bytes[before..].iter().all(|b| b.is_ascii_whitespace()) {
                out.bytes.truncate(before); // blank lines are not records
                continue;
            }
            if !out.bytes.ends_with(b"\n") {
                out.bytes.push(b'\n');
            }
            out.starts.push((line_start, before));
        }
        Ok((!out.starts.is_empty()).then_some(out))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next batch, or `None` when the split is done.
    pub fn next_batch(&mut self) -> Result<Option<LineBatch>, InputError> {
        let mut b = StringBuilder::with_capacity(BATCH_ROWS, BATCH_BYTES);
        let (mut rows, mut bytes) = (0u64, 0u64);
        while self.pos < self.end && (rows as usize) < BATCH_ROWS && (bytes as usize) < BATCH_BYTES
        {
            self.line.clear();
            let line_start = self.pos;
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|source| InputError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                self.end = self.pos; // EOF before `end`: the file shrank; stop.
                break;
            }
            self.pos += n as u64;
            let mut l = &self.line[..];
            if let [rest @ .., b'\n'] = l {
                l = rest;
            }
            if let [rest @ .., b'\r'] = l {
                l = rest;
            }
            let s = std::str::from_utf8(l).map_err(|e| InputError::Utf8 {
                path: self.path.clone(),
                offset: line_start + e.valid_up_to() as u64,
            })?;
            b.append_value(s);
            rows += 1;
            bytes += n as u64;
        }
        if rows == 0 {
            return Ok(None);
        }
        let batch =
            RecordBatch::try_new(self.schema.clone(), vec![Arc::new(b.finish()) as ArrayRef])?;
        let mut w = arrow_ipc::writer::StreamWriter::try_new(
            Vec::with_capacity(bytes as usize + 1024),
            &self.schema,
        )?;
        w.write(&batch)?;
        w.finish()?;
        Ok(Some(LineBatch {
            ipc: w.into_inner()?,
            rows,
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, StringArray};

    fn lines_of(path: &Path, start: u64, end: u64) -> Vec<String> {
        let mut r = SplitReader::open(path, start, end).unwrap();
        let mut out = Vec::new();
        while let Some(b) = r.next_batch().unwrap() {
            let reader =
                arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(b.ipc), None)
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                out.extend((0..col.len()).map(|i| col.value(i).to_string()));
            }
        }
        out
    }

    #[test]
    fn every_split_boundary_yields_each_line_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        let text = "alpha\r\nbeta\n\ngamma delta\nlast-without-newline";
        std::fs::write(&path, text).unwrap();
        let all = lines_of(&path, 0, text.len() as u64);
        assert_eq!(
            all,
            vec!["alpha", "beta", "", "gamma delta", "last-without-newline"]
        );
        for cut in 0..=text.len() as u64 {
            let mut two = lines_of(&path, 0, cut);
            two.extend(lines_of(&path, cut, text.len() as u64));
            assert_eq!(two, all, "cut at {cut}");
        }
    }

    #[test]
    fn invalid_utf8_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        std::fs::write(&path, b"ok\nab\xffcd\n").unwrap();
        let mut r = SplitReader::open(&path, 0, 10).unwrap();
        let err = r.next_batch().err().unwrap().to_string();
        assert!(
            err.contains("bad.txt") && err.contains("byte offset 5"),
            "{err}"
        );
    }
}
