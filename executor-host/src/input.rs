//! Text input: Hadoop-style splits of a file into Arrow batches of lines.
//!
//! A split `[start, end)` owns every line whose first byte lies in it: a split that does
//! not start at 0 skips the line in progress (the previous split reads it to its end,
//! past its own `end`). Lines lose their `\n` or `\r\n`. A compressed file (`.gz`,
//! `.zst`, `.bz2`) is one split, read through its decoder; offsets are then offsets in
//! the decoded text.

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Lines per batch handed to a guest.
pub const BATCH_ROWS: usize = 8192;
/// Bytes of text per batch (a batch closes at whichever limit comes first).
pub const BATCH_BYTES: usize = 4 << 20;
/// Longest line (or CSV record) a source may hold: a file with no line breaks, or a
/// quote left open, must not be read into memory whole.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid UTF-8 at byte offset {offset}")]
    Utf8 { path: PathBuf, offset: u64 },
    #[error("{path}: {what} at byte offset {offset} is longer than {MAX_RECORD_BYTES} bytes{hint}")]
    TooLong {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        hint: &'static str,
    },
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
    reader: Box<dyn BufRead + Send>,
    /// Offset of the next unread byte.
    pos: u64,
    end: u64,
    line: Vec<u8>,
    schema: Arc<Schema>,
    /// CSV records whose quoted fields may hold line breaks: (quote, escape).
    quotes: Option<(u8, Option<u8>)>,
}

impl SplitReader {
    pub fn open(path: &Path, start: u64, end: u64) -> Result<SplitReader, InputError> {
        let io = |source| InputError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = flint_storage::object::open(path).map_err(io)?;
        if !flint_storage::codec::splittable(path) {
            // One split of the whole decoded stream.
            return Ok(SplitReader {
                path: path.to_path_buf(),
                reader: flint_storage::codec::decoded(path, file).map_err(io)?,
                pos: 0,
                end: if start == 0 { u64::MAX } else { 0 },
                line: Vec::new(),
                schema: Self::line_schema(),
                quotes: None,
            });
        }
        // Sized to the split (a tiny file must not cost a 1 MiB buffer zeroed on its
        // first fill); the line running past `end` refills it.
        let span = end
            .saturating_sub(start.saturating_sub(1))
            .saturating_add(1);
        let mut reader = BufReader::with_capacity(span.clamp(8 << 10, 1 << 20) as usize, file);
        let mut pos = start;
        if start > 0 {
            // Skip the line in progress at `start`: it belongs to the previous split.
            reader.seek(SeekFrom::Start(start - 1)).map_err(io)?;
            let mut skipped = Vec::new();
            let n = read_line(&mut reader, &mut skipped, MAX_RECORD_BYTES).map_err(io)?;
            pos = start - 1 + n as u64;
        }
        Ok(SplitReader {
            path: path.to_path_buf(),
            reader: Box::new(reader),
            pos,
            end,
            line: Vec::new(),
            schema: Self::line_schema(),
            quotes: None,
        })
    }

    fn line_schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
    }

    /// Reads records of CSV whose quoted fields may span lines: a record ends at a line
    /// break outside quotes. Only for a split that starts at a record, as a whole file.
    pub fn quoted(mut self, quote: u8, escape: Option<u8>) -> SplitReader {
        self.quotes = Some((quote, escape));
        self
    }

    /// Appends one line to `buf`, failing past [`MAX_RECORD_BYTES`] in all.
    fn read_line(&mut self, buf: &mut Vec<u8>, record_start: usize) -> Result<usize, InputError> {
        let room = (MAX_RECORD_BYTES + 1).saturating_sub(buf.len() - record_start);
        let n = read_line(&mut self.reader, buf, room).map_err(|source| InputError::Io {
            path: self.path.clone(),
            source,
        })?;
        if buf.len() - record_start > MAX_RECORD_BYTES {
            let quoted = self.quotes.is_some();
            return Err(InputError::TooLong {
                path: self.path.clone(),
                offset: self.pos,
                what: if quoted { "the CSV record" } else { "the line" },
                hint: if quoted {
                    " (is a quote left open?)"
                } else {
                    ""
                },
            });
        }
        Ok(n)
    }

    /// Hands `each` the whole lines (each with its `\n`, and its file offset) that the
    /// reader's buffer holds and that start in the split, taken where they lie, until
    /// `each` says stop; `false` when there was none (the buffer ends inside a line, or
    /// the file has ended): the caller then reads one line through [`Self::read_line`].
    /// Finding the line ends of a whole buffer at once is what makes this fast: a line
    /// at a time through `read_until` cost 10-15% of a CSV job.
    fn buffered_lines(
        &mut self,
        mut each: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<bool, InputError> {
        let data = self.reader.fill_buf().map_err(|source| InputError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut at = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let start = self.pos + at as u64;
            if start >= self.end {
                break;
            }
            let more = each(start, &data[at..=nl]);
            at = nl + 1;
            if !more {
                break;
            }
        }
        self.reader.consume(at);
        self.pos += at as u64;
        Ok(at > 0)
    }

    /// The next run of whole lines (with their line ends) as raw bytes, with the file
    /// offset of each line's first byte, or `None` when the split is done.
    pub fn next_lines(&mut self) -> Result<Option<RawLines>, InputError> {
        let mut out = RawLines::default();
        let room = |out: &RawLines| out.starts.len() < BATCH_ROWS && out.bytes.len() < BATCH_BYTES;
        while self.pos < self.end && room(&out) {
            // A record is a line unless quoted fields may hold line breaks.
            if self.quotes.is_none()
                && self.buffered_lines(|start, line| {
                    if !line.iter().all(|b| b.is_ascii_whitespace()) {
                        out.starts.push((start, out.bytes.len()));
                        out.bytes.extend_from_slice(line);
                    }
                    room(&out)
                })?
            {
                continue;
            }
            let line_start = self.pos;
            let before = out.bytes.len();
            let n = self.read_line(&mut out.bytes, before)?;
            if n == 0 {
                self.end = self.pos;
                break;
            }
            self.pos += n as u64;
            if let Some((quote, escape)) = self.quotes {
                // Go on while a quote is open.
                let mut open = quoting(false, &out.bytes[before..], quote, escape);
                while open {
                    let from = out.bytes.len();
                    let n = self.read_line(&mut out.bytes, before)?;
                    if n == 0 {
                        break;
                    }
                    self.pos += n as u64;
                    open = quoting(open, &out.bytes[from..], quote, escape);
                }
            }
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
        let left = self.end.saturating_sub(self.pos).min(BATCH_BYTES as u64) as usize;
        let mut b = StringBuilder::with_capacity(BATCH_ROWS.min(left), left);
        let (mut rows, mut bytes) = (0u64, 0u64);
        let room =
            |rows: u64, bytes: u64| (rows as usize) < BATCH_ROWS && (bytes as usize) < BATCH_BYTES;
        let path = self.path.clone();
        while self.pos < self.end && room(rows, bytes) {
            let mut bad = None;
            let found = self.buffered_lines(|start, line| match line_text(&path, start, line) {
                Ok(s) => {
                    b.append_value(s);
                    rows += 1;
                    bytes += line.len() as u64;
                    room(rows, bytes)
                }
                Err(e) => {
                    bad = Some(e);
                    false
                }
            })?;
            if let Some(e) = bad {
                return Err(e);
            }
            if found {
                continue;
            }
            self.line.clear();
            let line_start = self.pos;
            let mut line = std::mem::take(&mut self.line);
            let n = self.read_line(&mut line, 0);
            self.line = line;
            let n = n?;
            if n == 0 {
                self.end = self.pos; // EOF before `end`: the file shrank; stop.
                break;
            }
            self.pos += n as u64;
            b.append_value(line_text(&self.path, line_start, &self.line)?);
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

/// A line's text without its `\n` or `\r\n`, or an error naming where it is not UTF-8.
fn line_text<'a>(path: &Path, line_start: u64, mut l: &'a [u8]) -> Result<&'a str, InputError> {
    if let [rest @ .., b'\n'] = l {
        l = rest;
    }
    if let [rest @ .., b'\r'] = l {
        l = rest;
    }
    std::str::from_utf8(l).map_err(|e| InputError::Utf8 {
        path: path.to_path_buf(),
        offset: line_start + e.valid_up_to() as u64,
    })
}

/// Reads up to and including the next `\n`, at most `max` bytes.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
    r.take(max as u64).read_until(b'\n', buf)
}

/// Whether a quote is open after `bytes`, given whether one was open before them. An
/// escape other than the quote makes the next byte literal; a doubled quote closes and
/// reopens, which leaves the state as it was.
fn quoting(mut open: bool, bytes: &[u8], quote: u8, escape: Option<u8>) -> bool {
    let escape = escape.filter(|e| *e != quote);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if open && Some(b) == escape {
            i += 2;
            continue;
        }
        if b == quote {
            open = !open;
        }
        i += 1;
    }
    open
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

    /// Every record of `[start, end)` through `next_lines`: (file offset, text).
    fn records_of(path: &Path, start: u64, end: u64) -> Vec<(u64, String)> {
        let mut r = SplitReader::open(path, start, end).unwrap();
        let mut out = Vec::new();
        while let Some(raw) = r.next_lines().unwrap() {
            for i in 0..raw.starts.len() {
                let text = std::str::from_utf8(raw.line(i)).unwrap().to_string();
                out.push((raw.starts[i].0, text));
            }
        }
        out
    }

    #[test]
    fn records_are_found_across_buffer_refills_and_split_boundaries() {
        // ~90 KB of lines of many lengths: line ends fall everywhere in the reader's
        // buffer (8 KiB to 1 MiB), so lines are found in it and across its refills.
        let mut text = String::new();
        let mut want = Vec::new();
        for i in 0..4000 {
            let at = text.len() as u64;
            let line = match i % 50 {
                7 => "   \n".to_string(), // blank: not a record
                9 => format!("{}\r\n", "w".repeat(i % 300)),
                _ => format!("{i},{}\n", "x".repeat(i % 37)),
            };
            if !line.trim().is_empty() {
                want.push((at, line.clone()));
            }
            text.push_str(&line);
        }
        text.push_str("no-newline-at-end");
        want.push(((text.len() - 17) as u64, "no-newline-at-end\n".to_string()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, &text).unwrap();
        let len = text.len() as u64;
        assert_eq!(records_of(&path, 0, len), want);
        for cut in (0..=len).step_by(997).chain([1, 8191, 8192, 8193, len - 1]) {
            let mut two = records_of(&path, 0, cut);
            two.extend(records_of(&path, cut, len));
            assert_eq!(two, want, "cut at {cut}");
        }
    }

    #[test]
    fn quoted_records_span_lines_and_escapes_do_not_close_quotes() {
        assert!(quoting(false, b"a,\"b\n", b'"', None));
        assert!(!quoting(true, b"c\",d\n", b'"', None));
        assert!(!quoting(false, b"\"x\"\"y\"\n", b'"', None));
        assert!(quoting(false, b"\"x\\\"\n", b'"', Some(b'\\')));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.csv");
        let text = "a,b\n1,\"two\nlines\"\n2,\"x\"\"\n\"\n3,plain\n";
        std::fs::write(&path, text).unwrap();
        let mut r = SplitReader::open(&path, 0, text.len() as u64)
            .unwrap()
            .quoted(b'"', None);
        let raw = r.next_lines().unwrap().unwrap();
        let records: Vec<&str> = (0..raw.starts.len())
            .map(|i| std::str::from_utf8(raw.line(i)).unwrap())
            .collect();
        assert_eq!(
            records,
            [
                "a,b\n",
                "1,\"two\nlines\"\n",
                "2,\"x\"\"\n\"\n",
                "3,plain\n"
            ]
        );
    }

    #[test]
    fn a_line_without_end_fails_at_the_bound_instead_of_filling_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.txt");
        std::fs::write(&path, vec![b'x'; MAX_RECORD_BYTES + 10]).unwrap();
        let mut r = SplitReader::open(&path, 0, u64::MAX).unwrap();
        let err = r.next_batch().err().unwrap().to_string();
        assert!(err.contains("longer than"), "{err}");
        let path = dir.path().join("open.csv");
        let mut text = b"a\n\"".to_vec();
        text.extend((0..MAX_RECORD_BYTES / 8).flat_map(|_| *b"1234567\n"));
        std::fs::write(&path, text).unwrap();
        let mut r = SplitReader::open(&path, 0, u64::MAX)
            .unwrap()
            .quoted(b'"', None);
        let err = r.next_lines().err().unwrap().to_string();
        assert!(err.contains("quote left open"), "{err}");
    }

    #[test]
    fn a_compressed_file_is_read_whole_through_its_codec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt.gz");
        let mut e = flint_storage::codec::Encoder::new(
            flint_protocol::plan::Codec::Gzip,
            std::fs::File::create(&path).unwrap(),
        )
        .unwrap();
        std::io::Write::write_all(&mut e, b"one\ntwo\nthree\n").unwrap();
        e.finish().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(lines_of(&path, 0, len), ["one", "two", "three"]);
        // A split past the start of a compressed file (which the driver does not make)
        // reads nothing rather than garbage.
        assert!(lines_of(&path, 4, len).is_empty());
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
