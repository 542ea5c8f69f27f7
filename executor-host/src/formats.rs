//! File formats on the host: reading splits of CSV, JSON lines, Parquet and Arrow IPC
//! files into Arrow batches for the guest, and writing rendered batches as files.
//!
//! Parsing runs natively on the executor; the guest only sees Arrow batches whose
//! columns it maps onto its row type.

use crate::input::{InputError, RawLines, SplitReader};
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, Schema, SchemaRef};
use flint_protocol::plan::{Malformed, ReadFormat, WriteFormat};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FormatError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{path}:{line}: malformed {format} record: {message}")]
    Malformed {
        path: PathBuf,
        line: u64,
        format: &'static str,
        message: String,
    },
    #[error("{path}, row group {group}: {message}")]
    RowGroup {
        path: PathBuf,
        group: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the plan's schema for {path} is not an Arrow IPC schema: {message}")]
    Schema { path: PathBuf, message: String },
}

/// One batch read from a split, encoded for the guest.
pub struct SourceBatch {
    pub ipc: Vec<u8>,
    pub rows: u64,
    pub bytes: u64,
    /// Malformed records dropped to make this batch.
    pub dropped: u64,
}

/// Decodes a schema that travels as an Arrow IPC stream with no batches.
pub fn schema_from_ipc(bytes: &[u8]) -> Result<SchemaRef, ArrowError> {
    let r = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(r.schema())
}

fn ipc_of(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    w.into_inner()
}

enum Kind {
    Text(SplitReader),
    /// CSV or JSON lines: whole lines parsed by an Arrow decoder.
    Lines {
        lines: SplitReader,
        parser: LineParser,
        malformed: Malformed,
        /// The split starts at byte 0 and the file has a header line to skip.
        skip_header: bool,
    },
    Parquet {
        reader: ParquetRecordBatchReader,
        /// Row counts of the split's row groups, to name the group a failure is in.
        groups: Vec<(usize, u64)>,
        read: u64,
    },
    Arrow {
        reader: arrow_ipc::reader::FileReader<File>,
        left: u64,
    },
}

#[derive(Clone)]
enum LineParser {
    Csv { schema: SchemaRef, delimiter: u8 },
    Json { schema: SchemaRef },
}

impl LineParser {
    fn name(&self) -> &'static str {
        match self {
            LineParser::Csv { .. } => "CSV",
            LineParser::Json { .. } => "JSON",
        }
    }

    /// Parses whole lines into one batch.
    fn parse(&self, bytes: &[u8], lines: usize) -> Result<RecordBatch, ArrowError> {
        let cap = lines.max(1);
        let batch = match self {
            LineParser::Csv { schema, delimiter } => {
                let mut d = arrow_csv::ReaderBuilder::new(schema.clone())
                    .with_header(false)
                    .with_delimiter(*delimiter)
                    .with_batch_size(cap)
                    .build_decoder();
                feed(bytes, |b| d.decode(b))?;
                d.flush()?
            }
            LineParser::Json { schema } => {
                let mut d = arrow_json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(cap)
                    .build_decoder()?;
                feed(bytes, |b| d.decode(b))?;
                d.flush()?
            }
        };
        Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema())))
    }

    fn schema(&self) -> SchemaRef {
        match self {
            LineParser::Csv { schema, .. } | LineParser::Json { schema } => schema.clone(),
        }
    }
}

/// Hands all of `bytes` to a push decoder, which takes what it can each call.
fn feed(
    bytes: &[u8],
    mut decode: impl FnMut(&[u8]) -> Result<usize, ArrowError>,
) -> Result<(), ArrowError> {
    let mut at = 0;
    while at < bytes.len() {
        let n = decode(&bytes[at..])?;
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(())
}

impl SourceBatch {
    /// A batch read whole from a columnar file.
    fn columnar(batch: &RecordBatch) -> Result<SourceBatch, FormatError> {
        Ok(SourceBatch {
            rows: batch.num_rows() as u64,
            bytes: batch.get_array_memory_size() as u64,
            ipc: ipc_of(batch).map_err(InputError::Arrow)?,
            dropped: 0,
        })
    }
}

/// Reads one split of a file in its format.
pub struct SourceReader {
    path: PathBuf,
    kind: Kind,
}

impl SourceReader {
    pub fn open(
        path: &Path,
        format: &ReadFormat,
        malformed: Malformed,
        start: u64,
        end: u64,
    ) -> Result<SourceReader, FormatError> {
        let file_err = |message: String| FormatError::File {
            path: path.to_path_buf(),
            message,
        };
        let schema_err = |e: ArrowError| FormatError::Schema {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let kind = match format {
            ReadFormat::Text => Kind::Text(SplitReader::open(path, start, end)?),
            ReadFormat::Csv {
                header,
                delimiter,
                schema,
            } => {
                let Some(schema) = schema else {
                    return Err(file_err(
                        "CSV schema missing (the driver infers it before tasks run)".into(),
                    ));
                };
                Kind::Lines {
                    lines: SplitReader::open(path, start, end)?,
                    parser: LineParser::Csv {
                        schema: schema_from_ipc(schema).map_err(schema_err)?,
                        delimiter: *delimiter,
                    },
                    malformed,
                    skip_header: *header && start == 0,
                }
            }
            ReadFormat::JsonLines { schema } => Kind::Lines {
                lines: SplitReader::open(path, start, end)?,
                parser: LineParser::Json {
                    schema: schema_from_ipc(schema).map_err(schema_err)?,
                },
                malformed,
                skip_header: false,
            },
            ReadFormat::Parquet { columns } => {
                let file = File::open(path).map_err(|e| file_err(e.to_string()))?;
                let b = ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
                let md = b.metadata().clone();
                let n = md.num_row_groups();
                let groups: Vec<usize> = (start as usize..(end as usize).min(n)).collect();
                let mut b = b.with_row_groups(groups.clone()).with_batch_size(8192);
                if let Some(cols) = columns {
                    let mask = ProjectionMask::columns(
                        b.parquet_schema(),
                        cols.iter().map(String::as_str),
                    );
                    b = b.with_projection(mask);
                }
                let reader = b.build().map_err(|e| file_err(e.to_string()))?;
                Kind::Parquet {
                    reader,
                    groups: groups
                        .iter()
                        .map(|g| (*g, md.row_group(*g).num_rows().max(0) as u64))
                        .collect(),
                    read: 0,
                }
            }
            ReadFormat::ArrowIpc => {
                let file = File::open(path).map_err(|e| file_err(e.to_string()))?;
                let mut reader = arrow_ipc::reader::FileReader::try_new(file, None)
                    .map_err(|e| file_err(format!("not an Arrow IPC file: {e}")))?;
                let n = reader.num_batches() as u64;
                let start = start.min(n);
                reader
                    .set_index(start as usize)
                    .map_err(|e| file_err(e.to_string()))?;
                Kind::Arrow {
                    reader,
                    left: end.min(n).saturating_sub(start),
                }
            }
        };
        Ok(SourceReader {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// The next batch, or `None` when the split is done.
    pub fn next_batch(&mut self) -> Result<Option<SourceBatch>, FormatError> {
        let path = &self.path;
        match &mut self.kind {
            Kind::Text(r) => Ok(r.next_batch()?.map(|b| SourceBatch {
                ipc: b.ipc,
                rows: b.rows,
                bytes: b.bytes,
                dropped: 0,
            })),
            Kind::Lines {
                lines,
                parser,
                malformed,
                skip_header,
            } => loop {
                let Some(mut raw) = lines.next_lines()? else {
                    return Ok(None);
                };
                if std::mem::take(skip_header) {
                    raw = drop_first(raw);
                    if raw.starts.is_empty() {
                        continue;
                    }
                }
                let bytes = raw.bytes.len() as u64;
                let (batch, dropped) = parse_lines(path, parser, *malformed, &raw)?;
                if batch.num_rows() == 0 && dropped == 0 {
                    continue;
                }
                return Ok(Some(SourceBatch {
                    ipc: ipc_of(&batch).map_err(InputError::Arrow)?,
                    rows: batch.num_rows() as u64,
                    bytes,
                    dropped,
                }));
            },
            Kind::Parquet {
                reader,
                groups,
                read,
            } => match reader.next() {
                None => Ok(None),
                Some(Err(e)) => {
                    // Name the row group the reader was in.
                    let mut at = 0;
                    let mut group = groups.first().map_or(0, |g| g.0);
                    for (g, rows) in groups.iter() {
                        group = *g;
                        if *read < at + rows {
                            break;
                        }
                        at += rows;
                    }
                    Err(FormatError::RowGroup {
                        path: path.clone(),
                        group,
                        message: e.to_string(),
                    })
                }
                Some(Ok(batch)) => {
                    *read += batch.num_rows() as u64;
                    SourceBatch::columnar(&batch).map(Some)
                }
            },
            Kind::Arrow { reader, left } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                match reader.next() {
                    None => Ok(None),
                    Some(Err(e)) => Err(FormatError::File {
                        path: path.clone(),
                        message: e.to_string(),
                    }),
                    Some(Ok(batch)) => SourceBatch::columnar(&batch).map(Some),
                }
            }
        }
    }
}

fn drop_first(raw: RawLines) -> RawLines {
    if raw.starts.len() <= 1 {
        return RawLines::default();
    }
    let cut = raw.starts[1].1;
    RawLines {
        bytes: raw.bytes[cut..].to_vec(),
        starts: raw.starts[1..].iter().map(|(o, b)| (*o, b - cut)).collect(),
    }
}

/// Parses a run of lines; on a failure finds the bad lines one by one, then fails
/// naming the first or drops them all, as the policy says.
fn parse_lines(
    path: &Path,
    parser: &LineParser,
    malformed: Malformed,
    raw: &RawLines,
) -> Result<(RecordBatch, u64), FormatError> {
    if let Ok(b) = parser.parse(&raw.bytes, raw.starts.len()) {
        return Ok((b, 0));
    }
    let mut good = Vec::new();
    let mut dropped = 0;
    for i in 0..raw.starts.len() {
        match parser.parse(raw.line(i), 1) {
            Ok(b) => good.push(b),
            Err(e) => match malformed {
                Malformed::Drop => dropped += 1,
                Malformed::Fail => {
                    return Err(FormatError::Malformed {
                        path: path.to_path_buf(),
                        line: line_number(path, raw.starts[i].0),
                        format: parser.name(),
                        message: e.to_string(),
                    });
                }
            },
        }
    }
    let schema = parser.schema();
    let batch = arrow_select::concat::concat_batches(&schema, &good).map_err(InputError::Arrow)?;
    Ok((batch, dropped))
}

/// The 1-based line number of the line starting at `offset`: counted only when a record
/// fails, so the common path never scans before its split.
fn line_number(path: &Path, offset: u64) -> u64 {
    use std::io::Read;
    let Ok(f) = File::open(path) else { return 0 };
    let mut r = std::io::BufReader::new(f).take(offset);
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 1;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return lines,
            Ok(n) => lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64,
        }
    }
}

/// Writes a task's rendered batches to its part file in a format.
pub enum FileWriter {
    Text(BufWriter<File>),
    Csv(arrow_csv::Writer<BufWriter<File>>),
    Json(arrow_json::LineDelimitedWriter<BufWriter<File>>),
    Parquet(parquet::arrow::ArrowWriter<BufWriter<File>>),
    Arrow(arrow_ipc::writer::FileWriter<BufWriter<File>>),
}

impl FileWriter {
    /// A writer for `file` whose first batch has `schema`.
    pub fn create(path: &Path, format: WriteFormat, schema: &Schema) -> Result<FileWriter, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let f = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let out = BufWriter::with_capacity(1 << 20, f);
        let schema = Arc::new(schema.clone());
        Ok(match format {
            WriteFormat::Text => FileWriter::Text(out),
            WriteFormat::Csv => FileWriter::Csv(arrow_csv::Writer::new(out)),
            WriteFormat::JsonLines => FileWriter::Json(arrow_json::LineDelimitedWriter::new(out)),
            WriteFormat::Parquet => FileWriter::Parquet(
                parquet::arrow::ArrowWriter::try_new(out, schema, None)
                    .map_err(|e| e.to_string())?,
            ),
            WriteFormat::ArrowIpc => FileWriter::Arrow(
                arrow_ipc::writer::FileWriter::try_new(out, &schema).map_err(|e| e.to_string())?,
            ),
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        match self {
            FileWriter::Text(out) => {
                let col = batch
                    .column_by_name("line")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or("guest text output has no utf8 column `line`")?;
                for i in 0..col.len() {
                    out.write_all(col.value(i).as_bytes())
                        .and_then(|_| out.write_all(b"\n"))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            FileWriter::Csv(w) => w.write(batch).map_err(|e| e.to_string()),
            FileWriter::Json(w) => w.write(batch).map_err(|e| e.to_string()),
            FileWriter::Parquet(w) => w.write(batch).map_err(|e| e.to_string()),
            FileWriter::Arrow(w) => w.write(batch).map_err(|e| e.to_string()),
        }
    }

    /// Flushes and syncs the file.
    pub fn close(self) -> Result<(), String> {
        let out = match self {
            FileWriter::Text(out) => out,
            FileWriter::Csv(w) => w.into_inner(),
            FileWriter::Json(mut w) => {
                w.finish().map_err(|e| e.to_string())?;
                w.into_inner()
            }
            FileWriter::Parquet(w) => w.into_inner().map_err(|e| e.to_string())?,
            FileWriter::Arrow(mut w) => {
                w.finish().map_err(|e| e.to_string())?;
                w.into_inner().map_err(|e| e.to_string())?
            }
        };
        let f = out.into_inner().map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())
    }
}
