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
/// anything else mixed is text). A column with only nulls is text.
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
