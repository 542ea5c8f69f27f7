//! A source's column filter on the host: the rows of a batch that pass it, and the
//! Parquet row groups whose statistics say no row can.
//!
//! One rule compares everywhere, rows and statistics alike: the value is cast to the
//! column's type, except that a number column compared with a float is cast to floats;
//! a null cell, or a null value, passes only `IsNull`.

use arrow_array::{
    Array, ArrayRef, BooleanArray, Datum, Float64Array, Int64Array, RecordBatch, Scalar,
    StringArray,
};
use arrow_buffer::BooleanBuffer;
use arrow_schema::{DataType, Schema};
use flint_protocol::plan::{ColumnPredicate, CompareOp, Literal};
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::ParquetMetaData;

/// The value as a one-element array of the type it is compared in, and `array` cast to
/// that type too when need be; `None` for a null value (nothing passes).
fn coerce(
    array: &ArrayRef,
    value: &Literal,
    column: &str,
) -> Result<Option<(ArrayRef, Scalar<ArrayRef>)>, String> {
    let literal: ArrayRef = match value {
        Literal::Null => return Ok(None),
        Literal::Bool(b) => std::sync::Arc::new(BooleanArray::from(vec![*b])),
        Literal::Int(i) => std::sync::Arc::new(Int64Array::from(vec![*i])),
        Literal::Float(x) => std::sync::Arc::new(Float64Array::from(vec![*x])),
        Literal::Text(t) => std::sync::Arc::new(StringArray::from(vec![t.as_str()])),
    };
    let to = array.data_type();
    let strict = arrow_cast::CastOptions {
        safe: false,
        ..Default::default()
    };
    if matches!(value, Literal::Float(_)) && to.is_numeric() && !to.is_floating() {
        let array = arrow_cast::cast_with_options(array, &DataType::Float64, &strict)
            .map_err(|e| format!("column `{column}` as floats: {e}"))?;
        return Ok(Some((array, Scalar::new(literal))));
    }
    let literal = arrow_cast::cast_with_options(&literal, to, &strict).map_err(|_| {
        format!(
            "the filter's value {} is not a value of column `{column}`'s type {to}",
            describe(value)
        )
    })?;
    Ok(Some((array.clone(), Scalar::new(literal))))
}

fn describe(v: &Literal) -> String {
    match v {
        Literal::Null => "null".into(),
        Literal::Bool(b) => b.to_string(),
        Literal::Int(i) => i.to_string(),
        Literal::Float(x) => x.to_string(),
        Literal::Text(t) => format!("{t:?}"),
    }
}

/// `a op b`, element-wise; nulls where either side is null.
fn compare(op: CompareOp, a: &dyn Datum, b: &dyn Datum) -> Result<BooleanArray, String> {
    use arrow_ord::cmp;
    match op {
        CompareOp::Eq => cmp::eq(a, b),
        CompareOp::NotEq => cmp::neq(a, b),
        CompareOp::Lt => cmp::lt(a, b),
        CompareOp::LtEq => cmp::lt_eq(a, b),
        CompareOp::Gt => cmp::gt(a, b),
        CompareOp::GtEq => cmp::gt_eq(a, b),
        CompareOp::IsNull | CompareOp::IsNotNull => unreachable!("compared without a value"),
    }
    .map_err(|e| e.to_string())
}

/// The true, non-null elements of `b`.
fn truths(b: &BooleanArray) -> BooleanBuffer {
    match b.nulls() {
        Some(n) => b.values() & n.inner(),
        None => b.values().clone(),
    }
}

fn validity(a: &dyn Array) -> BooleanBuffer {
    match a.logical_nulls() {
        Some(n) => n.inner().clone(),
        None => BooleanBuffer::new_set(a.len()),
    }
}

/// Which cells of `array` pass `p`.
fn passes(array: &ArrayRef, p: &ColumnPredicate) -> Result<BooleanBuffer, String> {
    match p.op {
        CompareOp::IsNull => return Ok(!&validity(array.as_ref())),
        CompareOp::IsNotNull => return Ok(validity(array.as_ref())),
        _ => {}
    }
    let Some((array, value)) = coerce(array, &p.value, &p.column)? else {
        return Ok(BooleanBuffer::new_unset(array.len()));
    };
    Ok(truths(&compare(p.op, &array, &value)?))
}

/// The rows of `batch` that pass every predicate, or an error naming a column the rows
/// lack or a value that cannot be compared with one.
pub fn apply(batch: RecordBatch, filter: &[ColumnPredicate]) -> Result<RecordBatch, String> {
    if filter.is_empty() || batch.num_rows() == 0 {
        return Ok(batch);
    }
    let mut keep = BooleanBuffer::new_set(batch.num_rows());
    for p in filter {
        let column = batch.column_by_name(&p.column).ok_or_else(|| {
            format!(
                "the filter names column `{}`, which the rows do not have (their columns: {})",
                p.column,
                names(&batch.schema())
            )
        })?;
        keep = &keep & &passes(column, p)?;
    }
    if keep.count_set_bits() == batch.num_rows() {
        return Ok(batch);
    }
    arrow_select::filter::filter_record_batch(&batch, &BooleanArray::new(keep, None))
        .map_err(|e| e.to_string())
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Of the row groups `groups`, those whose statistics do not rule out every row. A
/// group without statistics for a column, or a comparison the statistics cannot
/// answer, is kept: the rows are filtered anyway.
pub fn row_groups(
    md: &ParquetMetaData,
    schema: &Schema,
    groups: Vec<usize>,
    filter: &[ColumnPredicate],
) -> Vec<usize> {
    let mut pruned = vec![false; md.num_row_groups()];
    for p in filter {
        if let Some(out) = ruled_out(md, schema, p) {
            for (g, out) in out.iter().enumerate() {
                pruned[g] |= out;
            }
        }
    }
    groups
        .into_iter()
        .filter(|g| !pruned.get(*g).copied().unwrap_or(false))
        .collect()
}

/// Per row group, whether its statistics prove no row passes `p`.
fn ruled_out(md: &ParquetMetaData, schema: &Schema, p: &ColumnPredicate) -> Option<BooleanBuffer> {
    let parquet = md.file_metadata().schema_descr();
    let conv = StatisticsConverter::try_new(&p.column, schema, parquet)
        .ok()?
        .with_missing_null_counts_as_zero(false);
    let groups = md.row_groups();
    let n = groups.len();
    let all = |b: bool| {
        if b {
            BooleanBuffer::new_set(n)
        } else {
            BooleanBuffer::new_unset(n)
        }
    };
    match p.op {
        CompareOp::IsNull => {
            let nulls = conv.row_group_null_counts(groups).ok()?;
            let none = arrow_ord::cmp::eq(
                &nulls,
                &Scalar::new(arrow_array::UInt64Array::from(vec![0])),
            )
            .ok()?;
            return Some(truths(&none));
        }
        CompareOp::IsNotNull => {
            let nulls = conv.row_group_null_counts(groups).ok()?;
            let rows = conv.row_group_row_counts(groups).ok()??;
            return Some(truths(&arrow_ord::cmp::eq(&nulls, &rows).ok()?));
        }
        _ => {}
    }
    if matches!(p.value, Literal::Null) {
        return Some(all(true)); // nothing compares with null
    }
    let floats = conv.arrow_field().data_type().is_floating();
    // NaN orders above every number in Arrow's comparisons, and statistics leave it
    // out: a group's max says nothing of its NaN rows for `>`, `>=` and `!=`.
    if floats && matches!(p.op, CompareOp::Gt | CompareOp::GtEq | CompareOp::NotEq) {
        return None;
    }
    let mins = conv.row_group_mins(groups).ok()?;
    let maxes = conv.row_group_maxes(groups).ok()?;
    let (mins, v) = coerce(&mins, &p.value, &p.column).ok()??;
    let (maxes, _) = coerce(&maxes, &p.value, &p.column).ok()??;
    let c = |op, a: &ArrayRef| compare(op, a, &v).ok().map(|b| truths(&b));
    Some(match p.op {
        CompareOp::Eq => &c(CompareOp::Lt, &maxes)? | &c(CompareOp::Gt, &mins)?,
        CompareOp::NotEq => &c(CompareOp::Eq, &mins)? & &c(CompareOp::Eq, &maxes)?,
        CompareOp::Lt => c(CompareOp::GtEq, &mins)?,
        CompareOp::LtEq => c(CompareOp::Gt, &mins)?,
        CompareOp::Gt => c(CompareOp::LtEq, &maxes)?,
        CompareOp::GtEq => c(CompareOp::Lt, &maxes)?,
        CompareOp::IsNull | CompareOp::IsNotNull => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;
    use std::sync::Arc;

    fn p(column: &str, op: CompareOp, value: Literal) -> ColumnPredicate {
        ColumnPredicate {
            column: column.into(),
            op,
            value,
        }
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("year", DataType::Int64, true),
                Field::new("carrier", DataType::Utf8, true),
                Field::new("delay", DataType::Float64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![
                    Some(2013),
                    Some(2014),
                    None,
                    Some(2013),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("UA"),
                    Some("AA"),
                    Some("UA"),
                    None,
                ])),
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    None,
                    Some(f64::NAN),
                    Some(-3.0),
                ])),
            ],
        )
        .unwrap()
    }

    fn years(b: &RecordBatch) -> Vec<Option<i64>> {
        let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        a.iter().collect()
    }

    #[test]
    fn rows_pass_every_comparison_and_nulls_pass_only_is_null() {
        let year = |op, v| apply(batch(), &[p("year", op, v)]).unwrap();
        assert_eq!(
            years(&year(CompareOp::Eq, Literal::Int(2013))),
            [Some(2013), Some(2013)]
        );
        assert_eq!(
            years(&year(CompareOp::NotEq, Literal::Int(2013))),
            [Some(2014)]
        );
        assert_eq!(
            years(&year(CompareOp::Gt, Literal::Float(2013.5))),
            [Some(2014)]
        );
        assert_eq!(
            years(&year(CompareOp::LtEq, Literal::Text("2013".into()))).len(),
            2
        );
        assert_eq!(years(&year(CompareOp::IsNull, Literal::Null)), [None]);
        assert!(years(&year(CompareOp::Eq, Literal::Null)).is_empty());
        let both = apply(
            batch(),
            &[
                p("year", CompareOp::Eq, Literal::Int(2013)),
                p("carrier", CompareOp::IsNotNull, Literal::Null),
            ],
        )
        .unwrap();
        assert_eq!(both.num_rows(), 1);
        // A number compared with a text column is compared as text.
        let t = apply(
            batch(),
            &[p("carrier", CompareOp::Eq, Literal::Text("UA".into()))],
        )
        .unwrap();
        assert_eq!(t.num_rows(), 2);
        let e = apply(batch(), &[p("month", CompareOp::Eq, Literal::Int(1))]).unwrap_err();
        assert!(
            e.contains("`month`") && e.contains("year, carrier, delay"),
            "{e}"
        );
        let e = apply(
            batch(),
            &[p("year", CompareOp::Eq, Literal::Text("soon".into()))],
        )
        .unwrap_err();
        assert!(e.contains("\"soon\"") && e.contains("Int64"), "{e}");
    }

    #[test]
    fn row_groups_are_pruned_by_their_statistics_only_when_no_row_can_pass() {
        // Three row groups: years 2010-2012, 2013 only, 2014-2015 with a null.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("year", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(3))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema.clone(),
            Some(props),
        )
        .unwrap();
        let years = vec![
            Some(2010),
            Some(2011),
            Some(2012),
            Some(2013),
            Some(2013),
            Some(2013),
            Some(2014),
            None,
            Some(2015),
        ];
        let xs: Vec<Option<f64>> = (0..9).map(|i| Some(i as f64)).collect();
        w.write(
            &RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(years)),
                    Arc::new(Float64Array::from(xs)),
                ],
            )
            .unwrap(),
        )
        .unwrap();
        w.close().unwrap();
        let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&path).unwrap(),
        )
        .unwrap();
        let md = b.metadata().clone();
        assert_eq!(md.num_row_groups(), 3);
        let kept = |f: &[ColumnPredicate]| row_groups(&md, b.schema(), vec![0, 1, 2], f);
        let year = |op, v: i64| p("year", op, Literal::Int(v));
        assert_eq!(kept(&[year(CompareOp::Eq, 2013)]), [1]);
        assert_eq!(kept(&[year(CompareOp::NotEq, 2013)]), [0, 2]);
        assert_eq!(kept(&[year(CompareOp::Lt, 2013)]), [0]);
        assert_eq!(kept(&[year(CompareOp::LtEq, 2013)]), [0, 1]);
        assert_eq!(kept(&[year(CompareOp::Gt, 2013)]), [2]);
        assert_eq!(kept(&[year(CompareOp::GtEq, 2011)]), [0, 1, 2]);
        assert_eq!(kept(&[p("year", CompareOp::IsNull, Literal::Null)]), [2]);
        assert_eq!(
            kept(&[p("year", CompareOp::IsNotNull, Literal::Null)]),
            [0, 1, 2]
        );
        assert_eq!(
            kept(&[year(CompareOp::Gt, 2012), year(CompareOp::Lt, 2014)]),
            [1]
        );
        assert!(kept(&[p("year", CompareOp::Eq, Literal::Null)]).is_empty());
        // Floats: `<` prunes, `>` keeps (NaN is not in the statistics).
        assert_eq!(kept(&[p("x", CompareOp::Lt, Literal::Float(2.5))]), [0]);
        assert_eq!(
            kept(&[p("x", CompareOp::Gt, Literal::Float(7.5))]),
            [0, 1, 2]
        );
        // A column the file lacks (a partition column) prunes nothing.
        assert_eq!(
            kept(&[p("carrier", CompareOp::Eq, Literal::Text("UA".into()))]),
            [0, 1, 2]
        );
    }
}
