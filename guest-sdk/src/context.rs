//! The driver program's view: its arguments, settings, and the sources it can read.

use crate::bindings::flint::job::host;
use crate::bindings::flint::job::types as wit;
use crate::dataset::{LNode, decode_op};
use crate::formats;
use crate::rows;
use crate::task::DecodeFn;
use crate::{Data, Dataset, Error, Result};

/// What a source does with a record it cannot parse.
///
/// ```
/// assert_eq!(flint::Malformed::default(), flint::Malformed::Fail);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Malformed {
    /// Fail the task (and, after retries, the job) with the file and line, or row group.
    #[default]
    Fail,
    /// Drop the record; the task's `dropped_records` metric counts the drops.
    Drop,
}

impl Malformed {
    fn wit(self) -> wit::Malformed {
        match self {
            Malformed::Fail => wit::Malformed::Fail,
            Malformed::Drop => wit::Malformed::Drop,
        }
    }
}

/// How [`Context::csv_with`] reads CSV files (Spark's CSV options).
///
/// ```
/// let opts = flint::CsvOptions { delimiter: b';', ..Default::default() };
/// assert!(opts.header);
/// assert_eq!(opts.null_values, ["", "NA"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvOptions {
    /// The first record of each file names the columns, and the row type's fields are
    /// matched to them by name: any subset, in any order; a field whose column a file
    /// lacks fails the job naming both (default: true). Without a header, fields are
    /// the columns in order.
    pub header: bool,
    /// Field separator (default: `,`).
    pub delimiter: u8,
    /// Quote character (default: `"`).
    pub quote: u8,
    /// Escapes a quote inside quotes, as `\` does in `"a \" b"` (default: none, a quote
    /// inside quotes is doubled: `"a "" b"`).
    pub escape: Option<u8>,
    /// Lines starting with this byte are skipped (default: none).
    pub comment: Option<u8>,
    /// Cells that are nulls: an `Option` field reads them as `None` (default: the empty
    /// cell and `NA`, as pandas; Spark's `nullValue`).
    pub null_values: Vec<String>,
    /// Quoted fields may hold line breaks (Spark's `multiLine`): each file is then read
    /// whole by one task (default: false, a line break ends a record).
    pub multi_line: bool,
    /// Columns whose dates or timestamps are not ISO 8601, each with its strftime format
    /// as [chrono] reads it (Spark's `dateFormat` / `timestampFormat`, per column): the
    /// host reads each cell with the format and hands the row type ISO text, which
    /// chrono's types read through serde. What the format holds says what the cell
    /// becomes: a date (`%m/%d/%Y` → `2013-01-31`, a `NaiveDate`), a time of day
    /// (`NaiveTime`), a date and time (`%Y-%m-%d %H:%M` → `2013-01-31T05:40:00`, a
    /// `NaiveDateTime`) or one with an offset (`%d/%m/%Y %H:%M %z` →
    /// `2013-01-31T05:40:00+01:00`, a `DateTime<FixedOffset>` or `DateTime<Utc>`). A
    /// cell that does not match is a malformed record naming the file, line and column;
    /// a null value stays null. ISO columns need no format (default: none).
    ///
    /// [chrono]: https://docs.rs/chrono/latest/chrono/format/strftime/index.html
    pub date_formats: Vec<(String, String)>,
    /// Infer column types from a sample of the files (the first records of up to 32 of
    /// them) instead of taking them from the row type's fields (default: false). `flint
    /// run` prints the schema it inferred. Columns still match fields by name.
    pub infer_schema: bool,
    /// What to do with a record that does not parse (default: fail).
    pub malformed: Malformed,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: true,
            delimiter: b',',
            quote: b'"',
            escape: None,
            comment: None,
            null_values: vec![String::new(), "NA".into()],
            multi_line: false,
            date_formats: Vec::new(),
            infer_schema: false,
            malformed: Malformed::Fail,
        }
    }
}

impl CsvOptions {
    /// The options as the plan carries them, with the schema to read (`None`: inferred).
    fn wit(&self, schema: Option<Vec<u8>>) -> wit::CsvOptions {
        wit::CsvOptions {
            header: self.header,
            delimiter: self.delimiter,
            quote: self.quote,
            escape: self.escape,
            comment: self.comment,
            null_values: self.null_values.clone(),
            multi_line: self.multi_line,
            date_formats: self.date_formats.clone(),
            schema,
        }
    }
}

/// What the driver program sees: its arguments and the sources it can read.
pub struct Context {
    args: Vec<String>,
}

impl Context {
    pub(crate) fn new(args: Vec<String>) -> Self {
        Context { args }
    }

    /// Exactly `N` job arguments (what follows `--` on the command line), or an error
    /// that says how many were expected.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let [input, output] = ctx.args()?;
    /// # Ok(()) }
    /// ```
    pub fn args<const N: usize>(&self) -> Result<[String; N]> {
        <[String; N]>::try_from(self.args.clone()).map_err(|got| {
            Error::msg(format!(
                "this job takes {N} argument(s), got {}: {:?}",
                got.len(),
                got
            ))
        })
    }

    /// All job arguments.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) {
    /// let verbose = ctx.all_args().iter().any(|a| a == "-v");
    /// # }
    /// ```
    pub fn all_args(&self) -> &[String] {
        &self.args
    }

    /// The application's setting `key` as given with `--conf key=value`, if set.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) {
    /// let partitions = ctx.setting("shuffle.partitions");
    /// # }
    /// ```
    pub fn setting(&self, key: &str) -> Option<String> {
        host::setting(key)
    }

    /// Shares `value` with every task: it is sent to each executor once and read there
    /// with [`Broadcast::value`](crate::Broadcast::value).
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let centroids = ctx.broadcast(&vec![(0.0f64, 0.0f64), (5.0, 5.0)])?;
    /// # Ok(()) }
    /// ```
    pub fn broadcast<T: Data>(&mut self, value: &T) -> Result<crate::Broadcast<T>> {
        crate::Broadcast::register(value)
    }

    /// A new accumulator of `A`, zero at first.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) {
    /// let errors = ctx.accumulator::<u64>();
    /// let by_kind = ctx.accumulator::<std::collections::HashMap<String, u64>>();
    /// # }
    /// ```
    pub fn accumulator<A: crate::Mergeable>(&mut self) -> crate::Accumulator<A> {
        crate::Accumulator::new()
    }

    fn files<T: Data>(
        &self,
        path: &str,
        format: wit::ReadFormat,
        malformed: Malformed,
        decode: DecodeFn,
    ) -> Dataset<T> {
        Dataset::from_node(LNode::Files {
            paths: vec![path.to_string()],
            format,
            malformed: malformed.wit(),
            filter: Vec::new(),
            decode: decode_op(decode),
        })
    }

    /// Lines of a text file, or of every file in a directory, without their `\n` or
    /// `\r\n`. Large files are split into several partitions on line boundaries. Nothing
    /// is read until an action runs; a missing path is reported then.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let lines = ctx.text_file("logs/")?;
    /// println!("{} lines", lines.count()?);
    /// # Ok(()) }
    /// ```
    pub fn text_file(&mut self, path: &str) -> Result<Dataset<String>> {
        Ok(self.files(
            path,
            wit::ReadFormat::Text,
            Malformed::Fail,
            rows::decode_lines,
        ))
    }

    /// The lines of text files as [`Str`](crate::Str)s, which share the bytes the host
    /// read: the same rows as [`text_file`](Self::text_file) without a copy of each
    /// line, and words cut from them with [`Str::split_ascii_whitespace`] copy nothing
    /// either. The fast way to tokenize text:
    ///
    /// [`Str::split_ascii_whitespace`]: crate::Str::split_ascii_whitespace
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// use flint::Str;
    /// let counts = ctx
    ///     .lines("corpus/")?
    ///     .flat_map(|line: Str| line.split_ascii_whitespace())
    ///     .map(|word: Str| (word, 1u64))
    ///     .reduce_by_key(|a, b| a + b);
    /// # Ok(()) }
    /// ```
    pub fn lines(&mut self, path: &str) -> Result<Dataset<crate::Str>> {
        Ok(self.files(
            path,
            wit::ReadFormat::Text,
            Malformed::Fail,
            rows::decode_shared_lines,
        ))
    }

    /// Rows of CSV files with a header line, one row of `T` per record: `T` is a struct
    /// whose fields name the columns to read (by the header's names) and give their
    /// types; an `Option` field reads an empty cell or `NA` as `None`.
    ///
    /// ```no_run
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Sale { region: String, amount: f64 }
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let sales = ctx.csv::<Sale>("sales/")?;
    /// # Ok(()) }
    /// ```
    pub fn csv<T: Data>(&mut self, path: &str) -> Result<Dataset<T>> {
        self.csv_with(path, CsvOptions::default())
    }

    /// CSV files read as `options` say: header or not, dialect, null values, types from
    /// `T` or inferred from a sample, and whether malformed records fail the job or are
    /// dropped and counted. Files named `*.gz`, `*.zst` or `*.bz2` are decompressed (and
    /// read whole, by one task each). Files under `column=value/` directories get those
    /// columns.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Sale { region: String, amount: f64 }
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// use flint::{CsvOptions, Malformed};
    /// let opts = CsvOptions { delimiter: b';', malformed: Malformed::Drop, ..Default::default() };
    /// let sales = ctx.csv_with::<Sale>("sales.csv", opts)?;
    /// # Ok(()) }
    /// ```
    pub fn csv_with<T: Data>(&mut self, path: &str, options: CsvOptions) -> Result<Dataset<T>> {
        let schema = if options.infer_schema {
            None
        } else {
            Some(formats::schema_ipc::<T>()?)
        };
        Ok(self.files(
            path,
            wit::ReadFormat::Csv(options.wit(schema)),
            options.malformed,
            formats::decode_typed::<T>,
        ))
    }

    /// Rows of JSON-lines files (one object per line); `T`'s fields name the keys read.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Event { user: String, ms: u64 }
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let events = ctx.json_lines::<Event>("events.jsonl", flint::Malformed::Fail)?;
    /// # Ok(()) }
    /// ```
    pub fn json_lines<T: Data>(&mut self, path: &str, malformed: Malformed) -> Result<Dataset<T>> {
        Ok(self.files(
            path,
            wit::ReadFormat::JsonLines(formats::schema_ipc::<T>()?),
            malformed,
            formats::decode_typed::<T>,
        ))
    }

    /// Rows of Parquet files. Only the columns `T` names are read (projection), and each
    /// partition is a run of row groups.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Sale { region: String, amount: f64 }
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let sales = ctx.parquet::<Sale>("sales.parquet")?;
    /// # Ok(()) }
    /// ```
    pub fn parquet<T: Data>(&mut self, path: &str) -> Result<Dataset<T>> {
        Ok(self.files(
            path,
            wit::ReadFormat::Parquet(Some(formats::columns_of::<T>()?)),
            Malformed::Fail,
            formats::decode_typed::<T>,
        ))
    }

    /// The named columns of Parquet files as a [`Frame`](crate::Frame): Arrow batches
    /// for aggregations that run a column at a time (each partition a run of row groups,
    /// as [`parquet`](Self::parquet) reads them).
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let sales = ctx.parquet_frame("sales.parquet", &["region", "amount"])?;
    /// # Ok(()) }
    /// ```
    pub fn parquet_frame(&mut self, path: &str, columns: &[&str]) -> Result<crate::Frame> {
        Ok(crate::Frame::new(self.files(
            path,
            wit::ReadFormat::Parquet(Some(columns.iter().map(|c| c.to_string()).collect())),
            Malformed::Fail,
            crate::frame::decode_batch,
        )))
    }

    /// CSV files as a [`Frame`](crate::Frame), read as `options` say; the columns' types
    /// are inferred from a sample of the data (as `infer_schema` does for rows).
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let sales = ctx.csv_frame("sales.csv", flint::CsvOptions::default())?;
    /// # Ok(()) }
    /// ```
    pub fn csv_frame(&mut self, path: &str, options: CsvOptions) -> Result<crate::Frame> {
        let options = CsvOptions {
            infer_schema: true,
            ..options
        };
        Ok(crate::Frame::new(self.files(
            path,
            wit::ReadFormat::Csv(options.wit(None)),
            options.malformed,
            crate::frame::decode_batch,
        )))
    }

    /// Rows of Arrow IPC files (the file format); each partition is a run of record
    /// batches.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Sale { region: String, amount: f64 }
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let sales = ctx.arrow_ipc::<Sale>("sales.arrow")?;
    /// # Ok(()) }
    /// ```
    pub fn arrow_ipc<T: Data>(&mut self, path: &str) -> Result<Dataset<T>> {
        formats::fields_of::<T>()?;
        Ok(self.files(
            path,
            wit::ReadFormat::ArrowIpc,
            Malformed::Fail,
            formats::decode_typed::<T>,
        ))
    }

    /// A dataset of the driver program's own rows, in `partitions` partitions of
    /// consecutive rows. The rows travel inside the plan: keep this for small data.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let xs = ctx.parallelize(vec![1u64, 2, 3, 4], 2)?;
    /// assert_eq!(xs.count()?, 4);
    /// # Ok(()) }
    /// ```
    pub fn parallelize<T: Data>(&mut self, rows: Vec<T>, partitions: u32) -> Result<Dataset<T>> {
        let n = partitions.max(1) as usize;
        let len = rows.len();
        let mut parts = Vec::with_capacity(n);
        let mut it = rows.into_iter();
        for i in 0..n {
            let size = (i + 1) * len / n - i * len / n;
            let chunk: Vec<T> = it.by_ref().take(size).collect();
            parts.push(rows::ipc_bytes(&rows::encode_slice(&chunk)?)?);
        }
        Ok(Dataset::from_node(LNode::Inline {
            partitions: parts,
            decode: decode_op(rows::decode_rows_op::<T>),
        }))
    }

    /// The integers `start..end` in `partitions` partitions; generated in the tasks, so
    /// the range can be large.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let squares = ctx.range(0, 1_000_000, 8)?.map(|x: i64| x * x);
    /// # Ok(()) }
    /// ```
    pub fn range(&mut self, start: i64, end: i64, partitions: u32) -> Result<Dataset<i64>> {
        let n = partitions.max(1) as i64;
        let len = (end - start).max(0);
        let bounds: Vec<(i64, i64)> = (0..n)
            .map(|i| (start + i * len / n, start + (i + 1) * len / n))
            .collect();
        Ok(self
            .parallelize(bounds, partitions)?
            .flat_map(|(lo, hi): (i64, i64)| lo..hi))
    }
}
