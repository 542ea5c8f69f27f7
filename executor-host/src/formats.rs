//! File formats on the host: reading splits of CSV, JSON lines, Parquet and Arrow IPC
//! files into Arrow batches for the guest, and writing rendered batches as files.
//!
//! Parsing runs natively on the executor; the guest only sees Arrow batches whose
//! columns it maps onto its row type.

use crate::input::{InputError, RawLines, SplitReader};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use flint_protocol::plan::{Codec, ColumnPredicate, CsvFormat, Malformed, ReadFormat, WriteFormat};
use flint_protocol::wire::PartitionValue;
use flint_storage::codec::Encoder;
use flint_storage::csv::{CsvError, TimeFormat};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use regex::Regex;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
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
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the plan's schema for {path} is not an Arrow IPC schema: {message}")]
    Schema { path: PathBuf, message: String },
    #[error(
        "{path}: the row type's column `{column}` is not in the file's header (its columns: {header})"
    )]
    MissingColumn {
        path: PathBuf,
        column: String,
        header: String,
    },
    #[error(transparent)]
    Csv(#[from] CsvError),
}

impl FormatError {
    /// Whether the bytes themselves are at fault, so that reading them again fails the
    /// same way: every error but one of the file system.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            FormatError::Input(InputError::Io { .. } | InputError::Arrow(_))
                | FormatError::Open { .. }
                | FormatError::Csv(CsvError::Io { .. })
        )
    }
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

/// At least the size of `batch` as an IPC stream: the columns' buffers (each padded to
/// 64 bytes in the stream), the schema and batch messages (a few hundred bytes, and some
/// per column).
fn ipc_size_bound(batch: &RecordBatch) -> usize {
    batch.get_array_memory_size() + 1024 + 512 * batch.num_columns()
}

/// `batch` as an Arrow IPC stream of its own. The buffer is sized for the batch up front:
/// grown as the writer appends, it was copied twice per batch (a realloc for the body and
/// another for the end marker), 7% of a Parquet aggregation's samples.
fn ipc_of(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let buffer = Vec::with_capacity(ipc_size_bound(batch));
    let mut w = arrow_ipc::writer::StreamWriter::try_new(buffer, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    w.into_inner()
}

/// The file's Arrow schema with each top-level text column that every read row group
/// stores dictionary-encoded as a dictionary of that text, or `None` when there is none:
/// the reader then hands the column on as indexes into the row group's dictionary,
/// instead of copying each row's text out of it (and the guest reads fewer bytes). A
/// column without a dictionary is left alone: the reader would have to build one.
fn dictionary_hint(
    md: &parquet::file::metadata::ParquetMetaData,
    file: &SchemaRef,
    groups: &[usize],
    mask: &ProjectionMask,
) -> Option<SchemaRef> {
    use parquet::basic::Encoding;
    let leaves = md.file_metadata().schema_descr();
    let mut changed = false;
    let fields: Vec<Field> = file
        .fields()
        .iter()
        .map(|f| {
            // (Large text stays as it is: the guest reads dictionaries of `Utf8`.)
            let text = f.data_type() == &DataType::Utf8;
            // A top-level text field is one leaf, found by its name.
            let leaf = (0..leaves.num_columns()).find(|&c| {
                let column = leaves.column(c);
                let path = column.path().parts();
                path.len() == 1 && path[0] == *f.name()
            });
            let dictionary = text
                && !groups.is_empty()
                && leaf.is_some_and(|c| {
                    mask.leaf_included(c)
                        && groups.iter().all(|&g| {
                            let chunk = md.row_group(g).column(c);
                            // A writer whose dictionary filled up falls back to plain
                            // pages, which the data pages' encodings show where written.
                            chunk.dictionary_page_offset().is_some()
                                && chunk.page_encoding_stats_mask().is_none_or(|m| {
                                    m.is_only(Encoding::RLE_DICTIONARY)
                                        || m.is_only(Encoding::PLAIN_DICTIONARY)
                                })
                        })
                });
            if !dictionary {
                return f.as_ref().clone();
            }
            changed = true;
            let ty =
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(f.data_type().clone()));
            f.as_ref().clone().with_data_type(ty)
        })
        .collect();
    changed.then(|| Arc::new(Schema::new_with_metadata(fields, file.metadata().clone())))
}

/// Decoded bytes a Parquet batch aims at. Each batch costs a hand-over between the
/// reading thread and the task's, an IPC encoding and a call into the guest (some 30 µs
/// together): at 8,192 rows of a narrow table (12 bytes a row) that was a fifth of a
/// Parquet aggregation's time. Past a few hundred KiB a batch no longer stays in cache
/// through its copies, and a larger one is slower again (measured: 32 k and 64 k rows of
/// 12 bytes fastest, 256 k slower than 64 k).
const PARQUET_BATCH_BYTES: u64 = 512 << 10;
/// Fewest and most rows a Parquet batch holds, however narrow or wide the rows.
const PARQUET_BATCH_ROWS: (u64, u64) = (1024, 65536);

/// Rows per batch for reading `groups` through `mask`: about [`PARQUET_BATCH_BYTES`] of
/// decoded columns, each column's width estimated from its physical type and its
/// uncompressed size in those row groups (a text column: offsets or dictionary indexes
/// and its bytes), made to divide the row groups evenly.
fn parquet_batch_rows(
    md: &parquet::file::metadata::ParquetMetaData,
    groups: &[usize],
    mask: &ProjectionMask,
) -> usize {
    use parquet::basic::Type;
    let leaves = md.file_metadata().schema_descr().num_columns();
    // (Counts from the file's metadata, which may be anything: saturating arithmetic.)
    let (mut rows, mut bytes) = (0u64, 0u64);
    for &g in groups {
        let rg = md.row_group(g);
        let n = rg.num_rows().max(0) as u64;
        rows = rows.saturating_add(n);
        for c in (0..leaves).filter(|&c| mask.leaf_included(c)) {
            let chunk = rg.column(c);
            let stored = chunk.uncompressed_size().max(0) as u64;
            let fixed = |width: u64| n.saturating_mul(width).max(stored);
            bytes = bytes.saturating_add(match chunk.column_type() {
                Type::BYTE_ARRAY => n.saturating_mul(4).saturating_add(stored),
                Type::BOOLEAN => (n / 8).max(stored),
                Type::INT32 | Type::FLOAT => fixed(4),
                Type::INT64 | Type::DOUBLE => fixed(8),
                Type::INT96 => fixed(12),
                Type::FIXED_LEN_BYTE_ARRAY => {
                    fixed(chunk.column_descr().type_length().max(0) as u64)
                }
            });
        }
    }
    let width = bytes.div_ceil(rows.max(1)).max(1);
    let (fewest, most) = PARQUET_BATCH_ROWS;
    let want = (PARQUET_BATCH_BYTES / width).clamp(fewest, most);
    // Batches that divide a row group (the first one's size; writers make them alike),
    // down to half the size wanted: a batch across two groups' dictionaries makes the
    // reader re-encode its text into one dictionary, hashing every row's value. (At most
    // a thousand candidates: a group of a million rows needs 977 to 1,954 batches.)
    let group = groups
        .first()
        .map_or(0, |&g| md.row_group(g).num_rows().max(0) as u64);
    let fewest_batches = group.div_ceil(want);
    (fewest_batches..=fewest_batches.saturating_mul(2))
        .take(1024)
        .find(|&k| group > want && group.is_multiple_of(k) && group / k >= fewest)
        .map_or(want, |k| group / k) as usize
}

/// `batch` with each dictionary column whose dictionary holds more values than half its
/// rows expanded to plain values: a dictionary travels with every batch, and one that
/// most rows do not share costs more than it saves.
fn expand_large_dictionaries(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    use arrow_array::cast::AsArray;
    let large = |a: &ArrayRef| {
        a.as_any_dictionary_opt()
            .is_some_and(|d| d.values().len().saturating_mul(2) > a.len())
    };
    if !batch.columns().iter().any(large) {
        return Ok(batch);
    }
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        match c.data_type() {
            DataType::Dictionary(_, value) if large(c) => {
                columns.push(arrow_cast::cast(c, value)?);
                fields.push(f.as_ref().clone().with_data_type(value.as_ref().clone()));
            }
            _ => {
                columns.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
    )
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
        reader: arrow_ipc::reader::FileReader<flint_storage::object::Input>,
        left: u64,
    },
}

enum LineParser {
    Csv(CsvParser),
    Json { schema: SchemaRef },
}

/// A CSV file's columns as the decoder reads them: every column of the file (named by
/// its header, or the plan's schema by position without one), of which `projection`
/// picks those the plan asks for.
#[derive(Clone)]
struct CsvParser {
    file_schema: SchemaRef,
    projection: Vec<usize>,
    output: SchemaRef,
    format: CsvFormat,
    nulls: Regex,
    /// Output columns with a date format, rewritten to ISO text after decoding.
    times: Vec<(usize, TimeFormat)>,
}

impl CsvParser {
    /// Matches the header of `path` to the plan's schema by name (any subset, any
    /// order); `partition` columns come from the file's directories instead.
    fn open(
        path: &Path,
        c: &CsvFormat,
        plan: SchemaRef,
        partition: &[PartitionValue],
    ) -> Result<CsvParser, FormatError> {
        let nulls = flint_storage::csv::null_regex(&c.null_values)?;
        let from_dirs = |name: &str| partition.iter().any(|p| p.column == name);
        let wanted: Vec<&Field> = plan
            .fields()
            .iter()
            .filter(|f| !from_dirs(f.name()))
            .map(|f| f.as_ref())
            .collect();
        if !c.header {
            let file_schema = Arc::new(Schema::new(
                wanted.iter().map(|f| (*f).clone()).collect::<Vec<_>>(),
            ));
            let times = Self::times(path, c, &file_schema)?;
            return Ok(CsvParser {
                projection: (0..file_schema.fields().len()).collect(),
                output: file_schema.clone(),
                file_schema,
                format: c.clone(),
                nulls,
                times,
            });
        }
        let header = flint_storage::csv::header(path, c)?;
        let mut fields = Vec::with_capacity(header.len());
        let mut projection = Vec::new();
        for (i, name) in header.iter().enumerate() {
            let first = header[..i].iter().all(|h| h != name);
            match wanted.iter().find(|f| f.name() == name) {
                Some(f) if first => {
                    fields.push((*f).clone());
                    projection.push(i);
                }
                _ => fields.push(Field::new(format!("_c{i}"), DataType::Utf8, true)),
            }
        }
        if !c.inferred
            && let Some(missing) = wanted.iter().find(|f| !header.contains(f.name()))
        {
            return Err(FormatError::MissingColumn {
                path: path.to_path_buf(),
                column: missing.name().clone(),
                header: header.join(", "),
            });
        }
        let file_schema = Arc::new(Schema::new(fields));
        let output = Arc::new(
            file_schema
                .project(&projection)
                .map_err(InputError::Arrow)?,
        );
        let times = Self::times(path, c, &output)?;
        Ok(CsvParser {
            file_schema,
            projection,
            output,
            format: c.clone(),
            nulls,
            times,
        })
    }

    /// The date formats of the columns `output` reads, each of which must be text for
    /// the row type (chrono's types read text).
    fn times(
        path: &Path,
        c: &CsvFormat,
        output: &Schema,
    ) -> Result<Vec<(usize, TimeFormat)>, FormatError> {
        let mut times = Vec::new();
        for t in flint_storage::csv::time_formats(c)? {
            let Ok(j) = output.index_of(&t.column) else {
                continue;
            };
            let ty = output.field(j).data_type();
            if ty != &DataType::Utf8 {
                return Err(FormatError::File {
                    path: path.to_path_buf(),
                    message: format!(
                        "column `{}` has a date format, so its field must read text (a chrono type or a String), not {ty}",
                        t.column
                    ),
                });
            }
            times.push((j, t));
        }
        Ok(times)
    }

    /// `batch` (of `output`) with its dated columns rewritten to ISO 8601 text.
    fn reformat(&self, batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
        if self.times.is_empty() {
            return Ok(batch);
        }
        let mut columns = batch.columns().to_vec();
        let mut cell = String::new();
        for (j, t) in &self.times {
            let Some(text) = columns[*j].as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            let mut out =
                arrow_array::builder::StringBuilder::with_capacity(text.len(), text.len() * 20);
            for v in text.iter() {
                match v {
                    None => out.append_null(),
                    Some(v) => {
                        cell.clear();
                        t.to_iso(v, &mut cell)
                            .map_err(|e| ArrowError::ParseError(time_mismatch(t, v, &e)))?;
                        out.append_value(&cell);
                    }
                }
            }
            columns[*j] = Arc::new(out.finish());
        }
        RecordBatch::try_new(batch.schema(), columns)
    }

    /// The pattern of null cells for parsing `bytes`: `None` (Arrow's own test, a cell is
    /// null when empty) where that answers the same for every cell: the null values
    /// include the empty text and none of the others occurs in `bytes`, quotes aside. (A
    /// pattern costs ~10 ns a cell; looking for the values in the bytes, ~0.1 ns a byte.)
    fn nulls_for(&self, bytes: &[u8]) -> Option<Regex> {
        let c = &self.format;
        let others: Vec<&[u8]> = c
            .null_values
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| v.as_bytes())
            .collect();
        let plain = c.null_values.iter().any(String::is_empty)
            // Unescaped, a cell's text is its bytes less its quote marks, which a null
            // value without one can only match with them left out.
            && c.escape.is_none()
            && others.iter().all(|v| !v.contains(&c.quote));
        if !plain {
            return Some(self.nulls.clone());
        }
        let unquoted: Vec<u8>;
        let hay = if memchr::memchr(c.quote, bytes).is_some() && !others.is_empty() {
            unquoted = bytes.iter().copied().filter(|b| *b != c.quote).collect();
            &unquoted[..]
        } else {
            bytes
        };
        if others
            .iter()
            .any(|v| memchr::memmem::find(hay, v).is_some())
        {
            return Some(self.nulls.clone());
        }
        None
    }

    /// `bytes` decoded without the CSV state machine, where no record can need it: no
    /// quote, carriage return, escape or comment, a null is an empty cell (`nulls_for`
    /// said so), and the columns read are numbers, booleans or text. Records are cut at
    /// the delimiter and newline bytes (found by `memchr2`, 32 bytes at a time) and the
    /// cells parsed by the parsers Arrow's decoder uses. The decoder's tokenizer was a
    /// quarter of a CSV aggregation's samples. `None` where that does not apply or
    /// something does not parse (a cell, a record's field count): the decoder then reads
    /// the bytes and reports the problem as it does.
    fn decode_plain(&self, bytes: &[u8]) -> Option<RecordBatch> {
        let c = &self.format;
        let plain_bytes = c.delimiter.is_ascii()
            && ![b'\n', b'\r', c.quote].contains(&c.delimiter)
            && c.escape.is_none()
            && c.comment.is_none()
            && memchr::memchr2(c.quote, b'\r', bytes).is_none();
        let plain_types = self.output.fields().iter().all(|f| {
            matches!(
                f.data_type(),
                DataType::Boolean
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Utf8
            )
        });
        if !plain_bytes || !plain_types {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let width = self.file_schema.fields().len();
        // The output column of each of the file's columns read.
        let mut read_as = vec![None; width];
        for (o, &i) in self.projection.iter().enumerate() {
            *read_as.get_mut(i)? = Some(o);
        }
        let mut cells: Vec<Vec<&str>> = vec![Vec::new(); self.projection.len()];
        let (mut start, mut field, mut records) = (0, 0, 0);
        // A last record without its newline ends at the end.
        let ends = memchr::memchr2_iter(c.delimiter, b'\n', bytes)
            .chain((bytes.last() != Some(&b'\n')).then_some(bytes.len()));
        for at in ends {
            let newline = at == bytes.len() || bytes[at] == b'\n';
            // An empty line is no record (as the decoder skips it).
            if !(newline && field == 0 && start == at) {
                if let Some(o) = *read_as.get(field)? {
                    // Both ends are at ASCII bytes (or the end): char boundaries.
                    cells[o].push(&text[start..at]);
                }
                field += 1;
                if newline {
                    if field != width {
                        return None;
                    }
                    records += 1;
                }
            }
            if newline {
                field = 0;
            }
            start = at + 1;
        }
        let columns = self
            .output
            .fields()
            .iter()
            .zip(&cells)
            .map(|(f, cells)| plain_column(f.data_type(), cells))
            .collect::<Option<Vec<_>>>()?;
        // (The row count says it where no column is read.)
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(records));
        RecordBatch::try_new_with_options(self.output.clone(), columns, &options).ok()
    }

    fn decode(
        &self,
        schema: SchemaRef,
        nulls: Option<Regex>,
        bytes: &[u8],
        cap: usize,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let c = &self.format;
        let mut b = arrow_csv::ReaderBuilder::new(schema)
            .with_header(false)
            .with_delimiter(c.delimiter)
            .with_quote(c.quote)
            .with_projection(self.projection.clone())
            .with_batch_size(cap);
        if let Some(nulls) = nulls {
            b = b.with_null_regex(nulls);
        }
        if let Some(e) = c.escape {
            b = b.with_escape(e);
        }
        if let Some(m) = c.comment {
            b = b.with_comment(m);
        }
        let mut d = b.build_decoder();
        feed(bytes, |b| d.decode(b))?;
        d.flush()
    }

    /// Why one record does not parse, by column name: a cell that is no value of its
    /// column's type, or a null where the row type has no `Option`.
    fn diagnose(&self, record: &[u8], arrow: &ArrowError) -> String {
        let text = Arc::new(Schema::new(
            self.file_schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let never = flint_storage::csv::null_regex(&[]).expect("the empty pattern compiles");
        let cells = match self.decode(text, Some(never), record, 1) {
            Ok(Some(b)) if b.num_rows() == 1 => b,
            Ok(_) => return clean(arrow),
            Err(e) => return clean(&e),
        };
        for (j, field) in self.output.fields().iter().enumerate() {
            let Some(col) = cells.column(j).as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            let value = col.value(0);
            if self.nulls.is_match(value) {
                if !field.is_nullable() {
                    return format!(
                        "column `{}` is {value:?}, a null, but the row type's field for it is not an Option",
                        field.name()
                    );
                }
                continue;
            }
            if let Some((_, t)) = self.times.iter().find(|(i, _)| *i == j)
                && let Err(e) = t.to_iso(value, &mut String::new())
            {
                return time_mismatch(t, value, &e);
            }
            if field.data_type() == &DataType::Utf8 {
                continue;
            }
            let opts = arrow_cast::CastOptions {
                safe: false,
                ..Default::default()
            };
            if arrow_cast::cast_with_options(cells.column(j), field.data_type(), &opts).is_err() {
                return format!(
                    "column `{}`: {value:?} is not a value of type {}",
                    field.name(),
                    field.data_type()
                );
            }
        }
        clean(arrow)
    }
}

/// The cells of one column of a plain CSV record run ([`CsvParser::decode_plain`]) as
/// an array of type `t`, an empty cell null; `None` if a cell does not parse.
fn plain_column(t: &DataType, cells: &[&str]) -> Option<ArrayRef> {
    use arrow_array::types::*;
    use arrow_cast::parse::Parser;
    fn numbers<T: ArrowPrimitiveType + Parser>(cells: &[&str]) -> Option<ArrayRef> {
        let a: arrow_array::PrimitiveArray<T> = cells
            .iter()
            .map(|s| {
                if s.is_empty() {
                    Some(None)
                } else {
                    T::parse(s).map(Some)
                }
            })
            .collect::<Option<_>>()?;
        Some(Arc::new(a))
    }
    Some(match t {
        DataType::Boolean => {
            let a: arrow_array::BooleanArray = cells
                .iter()
                .map(|s| {
                    if s.is_empty() {
                        Some(None)
                    } else {
                        // (As Arrow's decoder reads booleans.)
                        match s {
                            _ if s.eq_ignore_ascii_case("true") => Some(Some(true)),
                            _ if s.eq_ignore_ascii_case("false") => Some(Some(false)),
                            _ => None,
                        }
                    }
                })
                .collect::<Option<_>>()?;
            Arc::new(a)
        }
        DataType::Int8 => numbers::<Int8Type>(cells)?,
        DataType::Int16 => numbers::<Int16Type>(cells)?,
        DataType::Int32 => numbers::<Int32Type>(cells)?,
        DataType::Int64 => numbers::<Int64Type>(cells)?,
        DataType::UInt8 => numbers::<UInt8Type>(cells)?,
        DataType::UInt16 => numbers::<UInt16Type>(cells)?,
        DataType::UInt32 => numbers::<UInt32Type>(cells)?,
        DataType::UInt64 => numbers::<UInt64Type>(cells)?,
        DataType::Float32 => numbers::<Float32Type>(cells)?,
        DataType::Float64 => numbers::<Float64Type>(cells)?,
        DataType::Utf8 => Arc::new(
            cells
                .iter()
                .map(|s| (!s.is_empty()).then_some(*s))
                .collect::<StringArray>(),
        ),
        _ => return None,
    })
}

fn time_mismatch(t: &TimeFormat, value: &str, why: &str) -> String {
    format!(
        "column `{}`: {value:?} does not match its date format {:?} ({why})",
        t.column, t.format
    )
}

/// An Arrow CSV error without its batch-relative line and 0-based column (Flint names
/// the file's line).
fn clean(e: &ArrowError) -> String {
    let s = e.to_string();
    let re = Regex::new(r" (?:for|at) line \d+").expect("a fixed pattern compiles");
    re.replace_all(&s, "").into_owned()
}

impl LineParser {
    fn name(&self) -> &'static str {
        match self {
            LineParser::Csv(_) => "CSV",
            LineParser::Json { .. } => "JSON",
        }
    }

    /// Parses whole lines into one batch.
    fn parse(&self, bytes: &[u8], lines: usize) -> Result<RecordBatch, ArrowError> {
        let cap = lines.max(1);
        let batch = match self {
            LineParser::Csv(c) => {
                let nulls = c.nulls_for(bytes);
                let plain = match nulls {
                    None => c.decode_plain(bytes),
                    Some(_) => None,
                };
                match plain {
                    Some(b) => Some(b),
                    None => c.decode(c.file_schema.clone(), nulls, bytes, cap)?,
                }
                .map(|b| c.reformat(b))
                .transpose()?
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

    /// Why one record does not parse.
    fn diagnose(&self, record: &[u8], e: &ArrowError) -> String {
        match self {
            LineParser::Csv(c) => c.diagnose(record, e),
            LineParser::Json { .. } => e.to_string(),
        }
    }

    fn schema(&self) -> SchemaRef {
        match self {
            LineParser::Csv(c) => c.output.clone(),
            LineParser::Json { schema } => schema.clone(),
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

/// Reads one split of a file in its format.
pub struct SourceReader {
    path: PathBuf,
    kind: Kind,
    /// Columns from the file's `column=value` directories, added to every batch.
    partition: Vec<PartitionValue>,
    /// The source's filter: only rows that pass it leave.
    filter: Arc<[ColumnPredicate]>,
    /// Columns read only for the filter (a Parquet projection lacks them), dropped after.
    filter_only: Vec<String>,
}

impl SourceReader {
    pub fn open(
        path: &Path,
        format: &ReadFormat,
        malformed: Malformed,
        start: u64,
        end: u64,
        partition: &[PartitionValue],
        filter: Arc<[ColumnPredicate]>,
    ) -> Result<SourceReader, FormatError> {
        let mut filter_only = Vec::new();
        let file_err = |message: String| FormatError::File {
            path: path.to_path_buf(),
            message,
        };
        let open = |path: &Path| {
            flint_storage::object::open(path).map_err(|source| FormatError::Open {
                path: path.to_path_buf(),
                source,
            })
        };
        let schema_err = |e: ArrowError| FormatError::Schema {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let kind = match format {
            ReadFormat::Text => Kind::Text(SplitReader::open(path, start, end)?),
            ReadFormat::Csv(c) => {
                let Some(schema) = &c.schema else {
                    return Err(file_err(
                        "CSV schema missing (the driver infers it before tasks run)".into(),
                    ));
                };
                let plan = schema_from_ipc(schema).map_err(schema_err)?;
                let mut lines = SplitReader::open(path, start, end)?;
                if c.multi_line {
                    lines = lines.quoted(c.quote, c.escape);
                }
                Kind::Lines {
                    lines,
                    parser: LineParser::Csv(CsvParser::open(path, c, plan, partition)?),
                    malformed,
                    skip_header: c.header && start == 0,
                }
            }
            ReadFormat::JsonLines { schema } => {
                let schema = schema_from_ipc(schema).map_err(schema_err)?;
                let keep: Vec<usize> = (0..schema.fields().len())
                    .filter(|i| {
                        let name = schema.field(*i).name();
                        !partition.iter().any(|p| &p.column == name)
                    })
                    .collect();
                Kind::Lines {
                    lines: SplitReader::open(path, start, end)?,
                    parser: LineParser::Json {
                        schema: Arc::new(schema.project(&keep).map_err(schema_err)?),
                    },
                    malformed,
                    skip_header: false,
                }
            }
            ReadFormat::Parquet { columns } => {
                let input = open(path)?;
                let meta = ArrowReaderMetadata::load(&input, Default::default())
                    .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
                let md = meta.metadata().clone();
                let file = meta.schema().clone();
                let n = md.num_row_groups();
                let groups: Vec<usize> = (start as usize..(end as usize).min(n)).collect();
                // Row groups whose statistics rule out every row are not read.
                let groups = crate::filter::row_groups(&md, &file, groups, &filter);
                let mask = match columns {
                    Some(cols) => {
                        filter_only = filter
                            .iter()
                            .map(|p| &p.column)
                            .filter(|c| {
                                !cols.contains(c)
                                    && file.field_with_name(c).is_ok()
                                    && !partition.iter().any(|v| &v.column == *c)
                            })
                            .cloned()
                            .collect();
                        filter_only.sort();
                        filter_only.dedup();
                        ProjectionMask::columns(
                            meta.parquet_schema(),
                            cols.iter().chain(&filter_only).map(String::as_str),
                        )
                    }
                    None => ProjectionMask::all(),
                };
                // An object fetches each row group's column chunks in one go.
                let leaves = md.file_metadata().schema_descr().num_columns();
                input.prefetch(
                    groups
                        .iter()
                        .flat_map(|&g| {
                            let rg = md.row_group(g);
                            let mask = &mask;
                            (0..leaves)
                                .filter(move |&c| mask.leaf_included(c))
                                .map(move |c| {
                                    let (at, len) = rg.column(c).byte_range();
                                    (g, at..at.saturating_add(len))
                                })
                        })
                        .collect(),
                );
                // Text columns stored with a dictionary arrive as dictionary arrays rather
                // than expanded per row (see `dictionary_hint`).
                let meta = match dictionary_hint(&md, &file, &groups, &mask) {
                    Some(schema) => ArrowReaderMetadata::try_new(
                        md.clone(),
                        ArrowReaderOptions::new().with_schema(schema),
                    )
                    .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?,
                    None => meta,
                };
                let rows = parquet_batch_rows(&md, &groups, &mask);
                let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(input, meta)
                    .with_row_groups(groups.clone())
                    .with_batch_size(rows)
                    .with_projection(mask)
                    .build()
                    .map_err(|e| file_err(e.to_string()))?;
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
                let mut reader = arrow_ipc::reader::FileReader::try_new(open(path)?, None)
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
            partition: partition.to_vec(),
            filter,
            filter_only,
        })
    }

    /// The next batch of rows that pass the filter, or `None` when the split is done.
    pub fn next_batch(&mut self) -> Result<Option<SourceBatch>, FormatError> {
        loop {
            let (batch, bytes, dropped) = match self.next_read()? {
                None => return Ok(None),
                Some(Read::Encoded(b)) => return Ok(Some(b)),
                Some(Read::Batch {
                    batch,
                    bytes,
                    dropped,
                }) => (batch, bytes, dropped),
            };
            let mut batch =
                crate::filter::apply(batch, &self.filter).map_err(|message| FormatError::File {
                    path: self.path.clone(),
                    message,
                })?;
            for c in &self.filter_only {
                if let Ok(i) = batch.schema().index_of(c) {
                    batch.remove_column(i);
                }
            }
            if batch.num_rows() == 0 && dropped == 0 {
                continue;
            }
            let batch = expand_large_dictionaries(batch).map_err(InputError::Arrow)?;
            return Ok(Some(SourceBatch {
                ipc: ipc_of(&batch).map_err(InputError::Arrow)?,
                rows: batch.num_rows() as u64,
                bytes: bytes.unwrap_or(batch.get_array_memory_size() as u64),
                dropped,
            }));
        }
    }

    /// The next batch as read, before the filter.
    fn next_read(&mut self) -> Result<Option<Read>, FormatError> {
        let path = &self.path;
        let batch = match &mut self.kind {
            Kind::Text(r) => {
                return Ok(r.next_batch()?.map(|b| {
                    Read::Encoded(SourceBatch {
                        ipc: b.ipc,
                        rows: b.rows,
                        bytes: b.bytes,
                        dropped: 0,
                    })
                }));
            }
            Kind::Lines {
                lines,
                parser,
                malformed,
                skip_header,
            } => loop {
                let Some(mut raw) = lines.next_lines()? else {
                    return Ok(None);
                };
                if *skip_header {
                    // The header is the first record that is not a comment.
                    let comment = match parser {
                        LineParser::Csv(c) => c.format.comment,
                        LineParser::Json { .. } => None,
                    };
                    while let Some(m) = comment
                        && raw
                            .starts
                            .first()
                            .is_some_and(|_| raw.line(0).first() == Some(&m))
                    {
                        raw = drop_first(raw);
                    }
                    if !raw.starts.is_empty() {
                        *skip_header = false;
                        raw = drop_first(raw);
                    }
                    if raw.starts.is_empty() {
                        continue;
                    }
                }
                let bytes = raw.bytes.len() as u64;
                let (batch, dropped) = parse_lines(path, parser, *malformed, &raw)?;
                if batch.num_rows() == 0 && dropped == 0 {
                    continue;
                }
                let batch = with_partition(batch, &self.partition).map_err(InputError::Arrow)?;
                return Ok(Some(Read::Batch {
                    batch,
                    bytes: Some(bytes),
                    dropped,
                }));
            },
            Kind::Parquet {
                reader,
                groups,
                read,
            } => match reader.next() {
                None => return Ok(None),
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
                    return Err(FormatError::RowGroup {
                        path: path.clone(),
                        group,
                        message: e.to_string(),
                    });
                }
                Some(Ok(batch)) => {
                    *read += batch.num_rows() as u64;
                    batch
                }
            },
            Kind::Arrow { reader, left } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                match reader.next() {
                    None => return Ok(None),
                    Some(Err(e)) => {
                        return Err(FormatError::File {
                            path: path.clone(),
                            message: e.to_string(),
                        });
                    }
                    Some(Ok(batch)) => batch,
                }
            }
        };
        let batch = with_partition(batch, &self.partition).map_err(InputError::Arrow)?;
        Ok(Some(Read::Batch {
            batch,
            bytes: None,
            dropped: 0,
        }))
    }
}

/// A batch as a split's reader made it.
enum Read {
    /// Lines of text, encoded as they were read.
    Encoded(SourceBatch),
    /// With the bytes of the file it came from (for line formats) and the records
    /// dropped to make it.
    Batch {
        batch: RecordBatch,
        bytes: Option<u64>,
        dropped: u64,
    },
}

/// `batch` with a constant column per partition value (replacing a column of the same
/// name).
fn with_partition(
    batch: RecordBatch,
    values: &[PartitionValue],
) -> Result<RecordBatch, ArrowError> {
    if values.is_empty() {
        return Ok(batch);
    }
    let n = batch.num_rows();
    let schema = batch.schema();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if !values.iter().any(|v| &v.column == f.name()) {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    for v in values {
        let (t, column): (DataType, ArrayRef) = if v.integer {
            let x = v.value.as_deref().and_then(|s| s.parse::<i64>().ok());
            (DataType::Int64, Arc::new(Int64Array::from(vec![x; n])))
        } else {
            (
                DataType::Utf8,
                Arc::new(StringArray::from(vec![v.value.as_deref(); n])),
            )
        };
        fields.push(Field::new(&v.column, t, true));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
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
                        message: parser.diagnose(raw.line(i), &e),
                    });
                }
            },
        }
    }
    let schema = parser.schema();
    let batch = arrow_select::concat::concat_batches(&schema, &good).map_err(InputError::Arrow)?;
    Ok((batch, dropped))
}

/// The 1-based line number of the line starting at `offset` (of the decoded text):
/// counted only when a record fails, so the common path never scans before its split.
fn line_number(path: &Path, offset: u64) -> u64 {
    use std::io::Read;
    let Ok(f) = flint_storage::codec::open_decoded(path) else {
        return 0;
    };
    let mut r = f.take(offset);
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 1;
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return lines,
            Ok(n) => lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64,
        }
    }
}

/// Writes a task's rendered batches to one file in a format.
pub enum FileWriter {
    Text(Encoder),
    // Boxed: arrow_csv's writer carries its formatting options inline (~800 bytes).
    Csv(Box<arrow_csv::Writer<Encoder>>),
    Json(arrow_json::LineDelimitedWriter<Encoder>),
    Parquet(parquet::arrow::ArrowWriter<std::io::BufWriter<File>>),
    Arrow(arrow_ipc::writer::FileWriter<std::io::BufWriter<File>>),
}

/// Rows per Parquet row group written (DuckDB's size): the unit a later read splits on,
/// and what a writer buffers.
const PARQUET_ROW_GROUP: usize = 128 * 1024;

fn parquet_codec(codec: Codec) -> Result<parquet::basic::Compression, String> {
    use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
    Ok(match codec {
        Codec::Uncompressed => Compression::UNCOMPRESSED,
        Codec::Snappy => Compression::SNAPPY,
        Codec::Gzip => Compression::GZIP(GzipLevel::default()),
        Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::Brotli => Compression::BROTLI(BrotliLevel::default()),
        Codec::Bzip2 => return Err("Parquet has no bzip2 codec".into()),
    })
}

impl FileWriter {
    /// A writer for `file` whose first batch has `schema`.
    pub fn create(
        path: &Path,
        format: WriteFormat,
        codec: Codec,
        schema: &Schema,
    ) -> Result<FileWriter, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let f = File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let encoded = |f: File| Encoder::new(codec, f).map_err(|e| e.to_string());
        let schema = Arc::new(schema.clone());
        Ok(match format {
            WriteFormat::Text => FileWriter::Text(encoded(f)?),
            WriteFormat::Csv => FileWriter::Csv(Box::new(arrow_csv::Writer::new(encoded(f)?))),
            WriteFormat::JsonLines => {
                FileWriter::Json(arrow_json::LineDelimitedWriter::new(encoded(f)?))
            }
            WriteFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet_codec(codec)?)
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP))
                    .build();
                let out = std::io::BufWriter::with_capacity(1 << 20, f);
                FileWriter::Parquet(
                    parquet::arrow::ArrowWriter::try_new(out, schema, Some(props))
                        .map_err(|e| e.to_string())?,
                )
            }
            WriteFormat::ArrowIpc => {
                let out = std::io::BufWriter::with_capacity(1 << 20, f);
                FileWriter::Arrow(
                    arrow_ipc::writer::FileWriter::try_new(out, &schema)
                        .map_err(|e| e.to_string())?,
                )
            }
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
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let file = match self {
            FileWriter::Text(out) => return out.finish().map_err(|x| e(&x)),
            FileWriter::Csv(w) => return w.into_inner().finish().map_err(|x| e(&x)),
            FileWriter::Json(mut w) => {
                w.finish().map_err(|x| e(&x))?;
                return w.into_inner().finish().map_err(|x| e(&x));
            }
            FileWriter::Parquet(w) => w.into_inner().map_err(|x| e(&x))?,
            FileWriter::Arrow(mut w) => {
                w.finish().map_err(|x| e(&x))?;
                w.into_inner().map_err(|x| e(&x))?
            }
        };
        let f = file.into_inner().map_err(|x| e(&x))?;
        f.sync_all().map_err(|x| e(&x))
    }
}

/// Files a partitioned writer keeps open at once; past it the oldest is closed and its
/// directory's next rows go to a new file beside it (`c001`, …).
const MAX_OPEN_PARTITIONS: usize = 32;

/// A task's output: one file, or with partition columns one file per `column=value/…`
/// directory under the attempt's directory, without those columns. An output on object
/// storage is written to a local spool file first, and uploaded when it is closed (by
/// parts, as object stores take large objects): memory holds a few parts, not the file.
pub struct PartWriter {
    path: PathBuf,
    format: WriteFormat,
    codec: Codec,
    partition_by: Vec<String>,
    /// Local files of the objects being written: `{spool}-{n}`.
    spool: PathBuf,
    /// Open files by directory (`a=1/b=x`), with the order they were opened in.
    open: HashMap<String, (u64, OpenFile)>,
    /// Files made so far per directory.
    made: HashMap<String, u32>,
    opened: u64,
    pub rows: u64,
}

/// A file being written, and the object it becomes when it is written to a spool.
pub struct OpenFile {
    writer: FileWriter,
    upload: Option<(Spool, String)>,
}

/// A local file that stands for an object until it is uploaded; removed when dropped,
/// uploaded or not (a failed task leaves no spool behind, and no object).
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl OpenFile {
    fn close(self) -> Result<(), String> {
        self.writer.close()?;
        if let Some((spool, url)) = self.upload {
            flint_storage::object::upload_file(&spool.0, &url)
                .map_err(|e| format!("uploading {url}: {e}"))?;
        }
        Ok(())
    }
}

impl PartWriter {
    /// A writer of `path` (a file, or an `s3://` URL spooled to files named `{spool}-N`).
    pub fn new(
        path: PathBuf,
        format: WriteFormat,
        codec: Codec,
        partition_by: Vec<String>,
        spool: PathBuf,
    ) -> Self {
        PartWriter {
            path,
            format,
            codec,
            partition_by,
            spool,
            open: HashMap::new(),
            made: HashMap::new(),
            opened: 0,
            rows: 0,
        }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        self.rows += batch.num_rows() as u64;
        if self.partition_by.is_empty() {
            return self.file("", &batch.schema())?.write(batch);
        }
        let schema = batch.schema();
        let mut keys = Vec::with_capacity(self.partition_by.len());
        for c in &self.partition_by {
            let i = schema
                .index_of(c)
                .map_err(|_| format!("the rows have no column `{c}` to partition by"))?;
            keys.push((c.as_str(), i));
        }
        let formatters: Vec<_> = keys
            .iter()
            .map(|(_, i)| {
                arrow_cast::display::ArrayFormatter::try_new(
                    batch.column(*i).as_ref(),
                    &arrow_cast::display::FormatOptions::default(),
                )
                .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        // Rows by directory, in order of first appearance.
        let mut dirs: Vec<(String, Vec<u32>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        // Reused across rows: a row allocates only when it opens a new directory.
        use std::fmt::Write as _;
        let (mut dir, mut value) = (String::new(), String::new());
        for row in 0..batch.num_rows() {
            dir.clear();
            for ((name, i), f) in keys.iter().zip(&formatters) {
                if !dir.is_empty() {
                    dir.push('/');
                }
                dir.push_str(name);
                dir.push('=');
                if batch.column(*i).is_null(row) {
                    dir.push_str(flint_storage::hive::NULL);
                } else {
                    value.clear();
                    write!(value, "{}", f.value(row)).map_err(|e| e.to_string())?;
                    flint_storage::hive::escape_into(&mut dir, &value);
                }
            }
            let at = match index.get(&dir) {
                Some(at) => *at,
                None => {
                    index.insert(dir.clone(), dirs.len());
                    dirs.push((dir.clone(), Vec::new()));
                    dirs.len() - 1
                }
            };
            dirs[at].1.push(row as u32);
        }
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !keys.iter().any(|(_, k)| k == i))
            .collect();
        let data = batch.project(&keep).map_err(|e| e.to_string())?;
        for (dir, rows) in dirs {
            let part =
                arrow_select::take::take_record_batch(&data, &arrow_array::UInt32Array::from(rows))
                    .map_err(|e| e.to_string())?;
            self.file(&dir, &part.schema())?.write(&part)?;
        }
        Ok(())
    }

    /// The open file of `dir`, opening it (and closing the oldest) if need be.
    fn file(&mut self, dir: &str, schema: &Schema) -> Result<&mut FileWriter, String> {
        if !self.open.contains_key(dir) {
            if self.open.len() >= MAX_OPEN_PARTITIONS
                && let Some(oldest) = self
                    .open
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(d, _)| d.clone())
                && let Some((_, w)) = self.open.remove(&oldest)
            {
                w.close()?;
            }
            let path = if self.partition_by.is_empty() {
                self.path.clone()
            } else {
                let n = self.made.entry(dir.to_string()).or_default();
                let p = self.path.join(dir).join(format!("c{:03}", *n));
                *n += 1;
                p
            };
            self.opened += 1;
            let (local, upload) = match path.to_str() {
                Some(url) if flint_storage::object::is_url(url) => {
                    let mut local = self.spool.clone().into_os_string();
                    local.push(format!("-{}", self.opened));
                    let local = PathBuf::from(local);
                    (local.clone(), Some((Spool(local), url.to_string())))
                }
                _ => (path, None),
            };
            let file = OpenFile {
                writer: FileWriter::create(&local, self.format, self.codec, schema)?,
                upload,
            };
            self.open.insert(dir.to_string(), (self.opened, file));
        }
        Ok(&mut self.open.get_mut(dir).expect("opened above").1.writer)
    }

    /// Closes every file. An empty partition of unpartitioned text is an empty file, as
    /// in Hadoop; the columnar formats write no file for it (they have no schema yet).
    pub fn close(mut self) -> Result<(), String> {
        if self.made.is_empty()
            && self.open.is_empty()
            && self.partition_by.is_empty()
            && self.format == WriteFormat::Text
        {
            self.file("", &Schema::empty())?;
        }
        for (_, (_, w)) in self.open.drain() {
            w.close()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use flint_protocol::plan::{CompareOp, Literal};
    use parquet::file::properties::WriterProperties;

    /// A Parquet file of one row group: `few` (4 values, stored with a dictionary),
    /// `unique` (a value per row, with a dictionary too) and `plain` (no dictionary).
    fn three_text_columns(path: &Path, rows: usize) -> RecordBatch {
        let text = |f: &dyn Fn(usize) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values((0..rows).map(f)))
        };
        let batch = RecordBatch::try_from_iter([
            ("few", text(&|i| format!("region-{}", i % 4))),
            ("unique", text(&|i| format!("id-{i}"))),
            ("plain", text(&|i| format!("p{}", i % 3))),
        ])
        .unwrap();
        let props = WriterProperties::builder()
            .set_column_dictionary_enabled("plain".into(), false)
            .set_dictionary_page_size_limit(1 << 20)
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            File::create(path).unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        batch
    }

    fn read_all(path: &Path) -> Vec<RecordBatch> {
        let format = ReadFormat::Parquet { columns: None };
        let mut r =
            SourceReader::open(path, &format, Malformed::Fail, 0, 1, &[], Arc::from([])).unwrap();
        let mut out = Vec::new();
        while let Some(b) = r.next_batch().unwrap() {
            let reader =
                arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(b.ipc), None)
                    .unwrap();
            out.extend(reader.map(Result::unwrap));
        }
        out
    }

    #[test]
    fn a_batch_is_encoded_into_a_buffer_sized_for_it_at_once() {
        use arrow_array::{DictionaryArray, Float64Array, types::Int32Type};
        let n = 10_000;
        let dict: DictionaryArray<Int32Type> =
            (0..n).map(|i| ["north", "south", "east"][i % 3]).collect();
        let floats = Float64Array::from_iter((0..n).map(|i| (i % 7 != 0).then_some(i as f64)));
        let text = StringArray::from_iter_values((0..n).map(|i| format!("row {i}")));
        let batch = RecordBatch::try_from_iter([
            ("region", Arc::new(dict) as ArrayRef),
            ("amount", Arc::new(floats)),
            ("note", Arc::new(text)),
        ])
        .unwrap();
        for b in [batch.clone(), batch.slice(17, 3), batch.slice(0, 0)] {
            let ipc = ipc_of(&b).unwrap();
            // A buffer that had to grow would have more room than was asked for.
            assert_eq!(ipc.capacity(), ipc_size_bound(&b));
            let back = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(back, b);
        }
    }

    /// Narrow rows come in batches of many more rows than wide ones, each batch about
    /// `PARQUET_BATCH_BYTES` of columns, within `PARQUET_BATCH_ROWS`.
    #[test]
    fn parquet_batches_are_sized_by_bytes_not_by_rows() {
        use arrow_array::{Float64Array, Int32Array};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, batch: RecordBatch| {
            let path = dir.path().join(name);
            let mut w = parquet::arrow::ArrowWriter::try_new(
                File::create(&path).unwrap(),
                batch.schema(),
                None,
            )
            .unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            path
        };
        let n = 200_000;
        let narrow = write(
            "narrow.parquet",
            RecordBatch::try_from_iter([
                (
                    "k",
                    Arc::new(Int32Array::from_iter_values(0..n as i32)) as ArrayRef,
                ),
                (
                    "v",
                    Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
                ),
            ])
            .unwrap(),
        );
        let sizes: Vec<usize> = read_all(&narrow).iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), n);
        // 12 bytes a row in Arrow (a little more as stored): tens of thousands of rows,
        // in batches that divide the row group evenly.
        assert!(sizes[0] >= 16_384 && sizes[0] <= 65_536, "{sizes:?}");
        assert!(sizes.iter().all(|&s| s == sizes[0]), "{sizes:?}");
        let n = 5_000;
        let wide = write(
            "wide.parquet",
            RecordBatch::try_from_iter([(
                "t",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("{i:0>2000}")),
                )) as ArrayRef,
            )])
            .unwrap(),
        );
        let sizes: Vec<usize> = read_all(&wide).iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), n);
        // 2 KB a row would be 256 rows to the half mebibyte: the floor holds.
        assert_eq!(sizes[0], 1024, "{sizes:?}");
    }

    #[test]
    fn parquet_text_with_a_small_dictionary_reaches_the_guest_as_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let written = three_text_columns(&path, 20_000);
        let batches = read_all(&path);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 20_000);
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let mut at = 0;
        for b in &batches {
            let types: Vec<&DataType> = b
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.data_type())
                .collect();
            // A dictionary of as many values as rows is expanded; a column written
            // without one is not given one.
            assert_eq!(types, [&dictionary, &DataType::Utf8, &DataType::Utf8]);
            for (c, name) in ["few", "unique", "plain"].iter().enumerate() {
                let plain = arrow_cast::cast(b.column(c), &DataType::Utf8).unwrap();
                let want = written.column(c).slice(at, b.num_rows());
                assert_eq!(plain.as_string::<i32>(), want.as_string::<i32>(), "{name}");
            }
            at += b.num_rows();
        }
    }

    /// A parser of two text columns with these null values.
    fn csv_parser(null_values: &[&str], escape: Option<u8>) -> CsvParser {
        let format = CsvFormat {
            header: false,
            delimiter: b',',
            quote: b'"',
            escape,
            comment: None,
            null_values: null_values.iter().map(|v| v.to_string()).collect(),
            multi_line: false,
            date_formats: Vec::new(),
            schema: None,
            inferred: false,
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        CsvParser {
            file_schema: schema.clone(),
            projection: vec![0, 1],
            output: schema,
            nulls: flint_storage::csv::null_regex(&format.null_values).unwrap(),
            format,
            times: Vec::new(),
        }
    }

    #[test]
    fn plain_csv_decodes_as_the_csv_decoder_does_or_leaves_it_to_the_decoder() {
        // A file of five columns (`skip` not read), of which the plan reads four in
        // another order; every case is decoded both ways.
        let file = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("skip", DataType::Utf8, true),
            Field::new("qty", DataType::Int32, true),
            Field::new("price", DataType::Float64, true),
            Field::new("ok", DataType::Boolean, false),
        ]));
        let parser = CsvParser {
            file_schema: file.clone(),
            projection: vec![3, 0, 4, 2],
            output: Arc::new(file.project(&[3, 0, 4, 2]).unwrap()),
            format: CsvFormat {
                header: false,
                delimiter: b',',
                quote: b'"',
                escape: None,
                comment: None,
                null_values: vec![String::new()],
                multi_line: false,
                date_formats: Vec::new(),
                schema: None,
                inferred: false,
            },
            nulls: flint_storage::csv::null_regex(&[String::new()]).unwrap(),
            times: Vec::new(),
        };
        let decoder = |text: &str| {
            parser
                .decode(parser.file_schema.clone(), None, text.as_bytes(), 64)
                .map(|b| b.unwrap_or_else(|| RecordBatch::new_empty(parser.output.clone())))
        };
        // Plain: read without the decoder, and alike.
        for text in [
            "a,x,1,1.5,true\nb,,-2,,FALSE\n",
            "a,x,1,1.5,true\n\n\nb,y,2,2e3,True\n",
            ",,,,false\n",
            "ünï,ç,7,-0.0,true\n",
            "",
            "\n",
        ] {
            let plain = parser.decode_plain(text.as_bytes());
            let plain = plain.unwrap_or_else(|| panic!("{text:?} is plain"));
            assert_eq!(plain, decoder(text).unwrap(), "{text:?}");
        }
        // Not plain: quotes, a carriage return, a field too many or too few, a cell that
        // is no number, a null in a column without nulls. The decoder decides.
        for text in [
            "\"a\",x,1,1.5,true\n",
            "a,x,1,1.5,true\r\n",
            "a,x,1,1.5,true,extra\n",
            "a,x,1,1.5\n",
            "a,x,one,1.5,true\n",
            "a,x,1,1.5,yes\n",
            "a,x,1,1.5,\n",
            "a,x,99999999999,1.5,true\n",
        ] {
            assert!(parser.decode_plain(text.as_bytes()).is_none(), "{text:?}");
        }
        // Reading no column, the records are still counted.
        let none = CsvParser {
            projection: Vec::new(),
            output: Arc::new(Schema::empty()),
            ..parser.clone()
        };
        assert_eq!(
            none.decode_plain(b"a,x,1,1.5,true\n\nb,,2,,false\n")
                .map(|b| b.num_rows()),
            Some(2)
        );
        // (Lines reach the parser whole: a last one without its newline gets one.)
        let last = parser.decode_plain(b"a,x,1,1.5,true\nb,y,2,2.5,false");
        assert_eq!(
            last.unwrap(),
            decoder("a,x,1,1.5,true\nb,y,2,2.5,false\n").unwrap()
        );
        assert!(decoder("a,x,1,1.5,true,extra\n").is_err());
        assert!(decoder("a,x,one,1.5,true\n").is_err());
    }

    #[test]
    fn csv_nulls_without_a_pattern_are_the_nulls_with_it() {
        let cases: [(&[&str], Option<u8>, &str, bool); 8] = [
            (&["", "NA"], None, "x,\n,y\n", false),
            (&["", "NA"], None, "NA,x\n,y\n", true),
            (&["", "NA"], None, "NASA,x\n,y\n", true),
            (&["", "NA"], None, "\"N\"A,x\n,y\n", true),
            (&["", "NA"], None, "\"N,A\",x\n", false),
            (&["", "NA"], Some(b'\\'), "N\\A,x\n", true),
            (&["NA"], None, ",x\n", true),
            (&[], None, ",x\n", true),
        ];
        for (values, escape, text, pattern) in cases {
            let p = csv_parser(values, escape);
            let nulls = p.nulls_for(text.as_bytes());
            assert_eq!(nulls.is_some(), pattern, "{values:?} {text:?}");
            let fast = p
                .decode(p.file_schema.clone(), nulls, text.as_bytes(), 10)
                .unwrap();
            let exact = p
                .decode(
                    p.file_schema.clone(),
                    Some(p.nulls.clone()),
                    text.as_bytes(),
                    10,
                )
                .unwrap();
            assert_eq!(fast, exact, "{values:?} {text:?}");
        }
    }

    #[test]
    fn a_filter_compares_text_in_a_dictionary_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        three_text_columns(&path, 1_000);
        let filter: Arc<[ColumnPredicate]> = Arc::from([ColumnPredicate {
            column: "few".into(),
            op: CompareOp::Eq,
            value: Literal::Text("region-2".into()),
        }]);
        let format = ReadFormat::Parquet { columns: None };
        let mut r = SourceReader::open(&path, &format, Malformed::Fail, 0, 1, &[], filter).unwrap();
        let b = r.next_batch().unwrap().unwrap();
        assert_eq!(b.rows, 250);
        assert!(r.next_batch().unwrap().is_none());
    }
}
