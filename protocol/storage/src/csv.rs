//! How CSV files are read, the same on the driver (inferring a schema) and on the
//! executors (matching a file's header to the row type): the dialect of a
//! [`CsvFormat`], which cells are nulls, and a file's header.

use crate::codec::open_decoded;
use arrow_csv::reader::Format;
use arrow_schema::{DataType, Field, Schema};
use flint_protocol::plan::CsvFormat;
use regex::Regex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CsvError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not CSV as the source describes it.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("the csv null values {values:?} do not make a pattern: {message}")]
    NullValues {
        values: Vec<String>,
        message: String,
    },
    #[error("the csv date format {format:?} of column `{column}` {problem}")]
    DateFormat {
        column: String,
        format: String,
        problem: String,
    },
}

/// What a date format reads, and so the ISO 8601 text a cell becomes: the text chrono's
/// types read (through serde) into a row type's field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeKind {
    /// `2013-01-31`: a `NaiveDate`.
    Date,
    /// `05:40:00`: a `NaiveTime`.
    Time,
    /// `2013-01-31T05:40:00`: a `NaiveDateTime`.
    DateTime,
    /// `2013-01-31T05:40:00+01:00`: a `DateTime<FixedOffset>` (or `<Utc>`).
    Zoned,
}

/// A column's date or timestamp format (strftime, as chrono reads it), compiled once.
#[derive(Clone, Debug)]
pub struct TimeFormat {
    pub column: String,
    pub format: String,
    pub kind: TimeKind,
    items: Vec<chrono::format::Item<'static>>,
}

impl TimeFormat {
    /// Compiles `format`; refuses one chrono cannot read, or one with no date or time
    /// field in it.
    pub fn new(column: &str, format: &str) -> Result<TimeFormat, CsvError> {
        use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
        let refuse = |problem: &str| CsvError::DateFormat {
            column: column.to_string(),
            format: format.to_string(),
            problem: problem.to_string(),
        };
        let items = StrftimeItems::new(format)
            .parse_to_owned()
            .map_err(|_| refuse("is not a strftime format chrono reads"))?;
        let (mut date, mut time, mut offset) = (false, false, false);
        for item in &items {
            match item {
                Item::Numeric(n, _) => match n {
                    Numeric::Hour
                    | Numeric::Hour12
                    | Numeric::Minute
                    | Numeric::Second
                    | Numeric::Nanosecond => time = true,
                    Numeric::Timestamp => (date, time) = (true, true),
                    _ => date = true,
                },
                Item::Fixed(f) => match f {
                    Fixed::ShortMonthName
                    | Fixed::LongMonthName
                    | Fixed::ShortWeekdayName
                    | Fixed::LongWeekdayName => date = true,
                    Fixed::RFC2822 | Fixed::RFC3339 => (date, time, offset) = (true, true, true),
                    Fixed::TimezoneOffsetColon
                    | Fixed::TimezoneOffsetDoubleColon
                    | Fixed::TimezoneOffsetTripleColon
                    | Fixed::TimezoneOffsetColonZ
                    | Fixed::TimezoneOffset
                    | Fixed::TimezoneOffsetZ => offset = true,
                    _ => {}
                },
                Item::Error => return Err(refuse("is not a strftime format chrono reads")),
                _ => {}
            }
        }
        let kind = match (date, time, offset) {
            (true, true, true) => TimeKind::Zoned,
            (true, true, false) => TimeKind::DateTime,
            (true, false, false) => TimeKind::Date,
            (false, true, false) => TimeKind::Time,
            (_, _, true) => return Err(refuse("has an offset but no full date and time")),
            (false, false, false) => return Err(refuse("has no date or time field")),
        };
        Ok(TimeFormat {
            column: column.to_string(),
            format: format.to_string(),
            kind,
            items,
        })
    }

    /// `cell` as ISO 8601 text of the format's kind, appended to `out`; why not when it
    /// does not match.
    pub fn to_iso(&self, cell: &str, out: &mut String) -> Result<(), String> {
        use std::fmt::Write;
        let mut p = chrono::format::Parsed::new();
        chrono::format::parse(&mut p, cell, self.items.iter()).map_err(|e| e.to_string())?;
        let written = match self.kind {
            TimeKind::Date => {
                let d = p.to_naive_date().map_err(|e| e.to_string())?;
                write!(out, "{}", d.format("%Y-%m-%d"))
            }
            TimeKind::Time => {
                let t = p.to_naive_time().map_err(|e| e.to_string())?;
                write!(out, "{}", t.format("%H:%M:%S%.f"))
            }
            TimeKind::DateTime => {
                let t = p
                    .to_naive_datetime_with_offset(0)
                    .map_err(|e| e.to_string())?;
                write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.f"))
            }
            TimeKind::Zoned => {
                let t = p.to_datetime().map_err(|e| e.to_string())?;
                write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.f%:z"))
            }
        };
        written.map_err(|e| e.to_string())
    }
}

/// The compiled date formats of `c`.
pub fn time_formats(c: &CsvFormat) -> Result<Vec<TimeFormat>, CsvError> {
    c.date_formats
        .iter()
        .map(|d| TimeFormat::new(&d.column, &d.format))
        .collect()
}

/// Cells equal to one of `values` (whole) are null; none are when `values` is empty.
pub fn null_regex(values: &[String]) -> Result<Regex, CsvError> {
    let pattern = if values.is_empty() {
        // Matches nothing: `\z` then a character.
        r"\z.".to_string()
    } else {
        let alts: Vec<String> = values.iter().map(|v| regex::escape(v)).collect();
        format!("^(?:{})$", alts.join("|"))
    };
    regex::RegexBuilder::new(&pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| CsvError::NullValues {
            values: values.to_vec(),
            message: e.to_string(),
        })
}

/// The dialect of `c` for Arrow's CSV reader and inference.
pub fn format(c: &CsvFormat) -> Result<Format, CsvError> {
    let mut f = Format::default()
        .with_header(c.header)
        .with_delimiter(c.delimiter)
        .with_quote(c.quote)
        .with_null_regex(null_regex(&c.null_values)?);
    if let Some(e) = c.escape {
        f = f.with_escape(e);
    }
    if let Some(m) = c.comment {
        f = f.with_comment(m);
    }
    Ok(f)
}

/// The column names of `path`'s header (its first record that is not a comment).
pub fn header(path: &Path, c: &CsvFormat) -> Result<Vec<String>, CsvError> {
    let io = |source| CsvError::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = open_decoded(path).map_err(io)?;
    let format = format(&CsvFormat {
        header: true,
        ..c.clone()
    })?;
    let (schema, _) = format
        .infer_schema(reader, Some(0))
        .map_err(|e| CsvError::Format {
            path: path.to_path_buf(),
            message: format!("reading the header: {e}"),
        })?;
    Ok(schema.fields().iter().map(|f| f.name().clone()).collect())
}

/// Most files a schema is inferred from, spread over the source's files.
pub const INFER_FILES: usize = 32;
/// Records read from each of them.
pub const INFER_RECORDS: usize = 2000;

/// The schema of a source's files (Spark's `inferSchema`) from the first
/// [`INFER_RECORDS`] records of up to [`INFER_FILES`] of them, spread from the first to
/// the last: columns by name in the order first seen, each of the narrowest type that
/// holds every sampled cell that is not a null (integers and floats widen to floats,
/// anything else mixed is text). A column with only nulls is text, and so is one with a
/// date format (the executors rewrite its cells to ISO text).
pub fn infer(files: &[PathBuf], c: &CsvFormat) -> Result<Schema, CsvError> {
    let format = format(c)?;
    let step = files.len().div_ceil(INFER_FILES).max(1);
    let mut order: Vec<String> = Vec::new();
    let mut types: HashMap<String, DataType> = HashMap::new();
    for path in files.iter().step_by(step) {
        let reader = open_decoded(path).map_err(|source| CsvError::Io {
            path: path.clone(),
            source,
        })?;
        let (schema, _) = format
            .infer_schema(reader, Some(INFER_RECORDS))
            .map_err(|e| CsvError::Format {
                path: path.clone(),
                message: format!("inferring its schema: {e}"),
            })?;
        for f in schema.fields() {
            if c.date_formats.iter().any(|d| &d.column == f.name()) {
                // Read as text and rewritten to ISO by the executors.
                types.entry(f.name().clone()).or_insert_with(|| {
                    order.push(f.name().clone());
                    DataType::Utf8
                });
                continue;
            }
            match types.get_mut(f.name()) {
                Some(t) => *t = widen(t, f.data_type()),
                None => {
                    order.push(f.name().clone());
                    types.insert(f.name().clone(), f.data_type().clone());
                }
            }
        }
    }
    Ok(Schema::new(
        order
            .into_iter()
            .map(|name| {
                let t = match types.remove(&name) {
                    Some(DataType::Null) | None => DataType::Utf8,
                    Some(t) => t,
                };
                Field::new(name, t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// The type that holds values of both `a` and `b`.
fn widen(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    match (a, b) {
        (a, b) if a == b => a.clone(),
        (Null, t) | (t, Null) => t.clone(),
        (Int64, Float64) | (Float64, Int64) => Float64,
        _ => Utf8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv() -> CsvFormat {
        CsvFormat {
            header: true,
            delimiter: b',',
            quote: b'"',
            escape: None,
            comment: None,
            null_values: vec![String::new(), "NA".into()],
            multi_line: false,
            date_formats: Vec::new(),
            schema: None,
            inferred: false,
        }
    }

    #[test]
    fn null_values_match_whole_cells_only() {
        let r = null_regex(&["NA".into(), String::new(), "n/a.".into()]).unwrap();
        for v in ["NA", "", "n/a."] {
            assert!(r.is_match(v), "{v:?}");
        }
        for v in ["NAN", "xNA", "n/ab", " "] {
            assert!(!r.is_match(v), "{v:?}");
        }
        let none = null_regex(&[]).unwrap();
        assert!(!none.is_match("") && !none.is_match("NA"));
    }

    #[test]
    fn the_header_is_read_through_quotes_comments_and_compression() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.csv");
        std::fs::write(&path, "# a comment\n\"a,b\",c\n1,2\n").unwrap();
        let c = CsvFormat {
            comment: Some(b'#'),
            ..csv()
        };
        assert_eq!(header(&path, &c).unwrap(), ["a,b", "c"]);
    }

    #[test]
    fn inference_spans_files_and_ignores_null_values() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(&a, "x,y,z,w\n1,NA,a,\n2,3,b,\n").unwrap();
        std::fs::write(&b, "x,y,v,w\n1.5,4,7,\nNA,,9,\n").unwrap();
        let s = infer(&[a, b], &csv()).unwrap();
        let got: Vec<(String, DataType)> = s
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("x".into(), DataType::Float64),
                ("y".into(), DataType::Int64),
                ("z".into(), DataType::Utf8),
                ("w".into(), DataType::Utf8),
                ("v".into(), DataType::Int64),
            ]
        );
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    fn iso(format: &str, cell: &str) -> Result<String, String> {
        let f = TimeFormat::new("c", format).map_err(|e| e.to_string())?;
        let mut out = String::new();
        f.to_iso(cell, &mut out)?;
        Ok(out)
    }

    #[test]
    fn formats_read_cells_into_the_iso_text_of_their_kind() {
        assert_eq!(iso("%m/%d/%Y", "01/31/2013").unwrap(), "2013-01-31");
        assert_eq!(iso("%d %b %Y", "5 Feb 2013").unwrap(), "2013-02-05");
        assert_eq!(iso("%H.%M", "05.40").unwrap(), "05:40:00");
        assert_eq!(
            iso("%Y-%m-%d %H:%M", "2013-01-31 05:40").unwrap(),
            "2013-01-31T05:40:00"
        );
        assert_eq!(
            iso("%Y-%m-%d %H:%M:%S%.f", "2013-01-31 05:40:01.250").unwrap(),
            "2013-01-31T05:40:01.250"
        );
        assert_eq!(iso("%s", "86400").unwrap(), "1970-01-02T00:00:00");
        assert_eq!(
            iso("%d/%m/%Y %H:%M %z", "31/01/2013 05:40 +0100").unwrap(),
            "2013-01-31T05:40:00+01:00"
        );
        // The kind is the format's, whatever the cell: a date format reads no time.
        assert!(iso("%m/%d/%Y", "2013-01-31").is_err());
        assert!(iso("%m/%d/%Y", "02/30/2013").is_err());
        assert!(iso("%m/%d/%Y", "01/31/2013 extra").is_err());
    }

    #[test]
    fn formats_that_read_nothing_are_refused() {
        for bad in ["%Q", "plain text", "%z", "%"] {
            let e = TimeFormat::new("when", bad).unwrap_err().to_string();
            assert!(e.contains("`when`") && e.contains(bad), "{bad}: {e}");
        }
    }
}
