//! Arrow columns → rows of a flat struct, without an intermediate representation.
//!
//! `serde_arrow` reads any shape (nested structs, lists, unions, dates) through a general
//! random-access deserializer; on the flat rows that CSV, JSON lines and most Parquet
//! files hold, that generality was most of a job's guest time. Here each column is
//! downcast once per batch, and each row is handed to the row type's `Deserialize` as a
//! map of (column name, cell) with a direct call per cell: no per-value dispatch on the
//! Arrow type, no second UTF-8 validation (Arrow validated the strings when the batch
//! was made). A batch with a column of another type returns `None`, and the caller uses
//! `serde_arrow`.

use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, BooleanArray, DictionaryArray, LargeStringArray, PrimitiveArray, RecordBatch,
    StringArray,
};
use arrow_buffer::NullBuffer;
use arrow_schema::DataType;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use std::fmt;

/// Why a row did not deserialize. One pointer: every cell's `Result` carries it, and a
/// smaller error keeps those results (moved through serde's layers per cell) small.
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub(crate) struct DeError(Box<String>);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        DeError(Box::new(msg.to_string()))
    }
}

/// The values of one column, downcast.
enum Values<'a> {
    Bool(&'a BooleanArray),
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    /// Text as indexes into a dictionary (how Parquet stores most text columns).
    Dict(&'a [i32], &'a StringArray),
}

impl<'a> Values<'a> {
    /// Row `i`'s text, for a text column.
    #[inline(always)]
    fn text(&self, i: usize) -> Option<Result<&'a str, DeError>> {
        match self {
            Values::Utf8(a) => Some(Ok(a.value(i))),
            Values::LargeUtf8(a) => Some(Ok(a.value(i))),
            Values::Dict(keys, values) => Some(dictionary_value(keys, values, i)),
            _ => None,
        }
    }
}

/// The dictionary's value at row `i`'s index, checked: a dictionary the host made is not
/// validated again in the guest (see `rows::read_host_ipc`).
#[inline(always)]
pub(crate) fn dictionary_value<'a>(
    keys: &[i32],
    values: &'a StringArray,
    i: usize,
) -> Result<&'a str, DeError> {
    let k = keys[i] as u32 as usize;
    if k < values.len() {
        Ok(values.value(k))
    } else {
        Err(DeError(Box::new(format!(
            "dictionary index {} of a dictionary of {} values",
            keys[i],
            values.len()
        ))))
    }
}

/// A column the row type has a field for.
struct Column<'a> {
    name: &'a str,
    /// Null cells (for a dictionary, null indexes and indexes of null values).
    nulls: Option<NullBuffer>,
    values: Values<'a>,
}

impl<'a> Column<'a> {
    /// `None` for an Arrow type this path does not read.
    fn of(name: &'a str, array: &'a dyn Array) -> Option<Self> {
        let a = array.as_any();
        let values = match array.data_type() {
            DataType::Boolean => Values::Bool(a.downcast_ref()?),
            DataType::Int8 => Values::I8(a.downcast_ref()?),
            DataType::Int16 => Values::I16(a.downcast_ref()?),
            DataType::Int32 => Values::I32(a.downcast_ref()?),
            DataType::Int64 => Values::I64(a.downcast_ref()?),
            DataType::UInt8 => Values::U8(a.downcast_ref()?),
            DataType::UInt16 => Values::U16(a.downcast_ref()?),
            DataType::UInt32 => Values::U32(a.downcast_ref()?),
            DataType::UInt64 => Values::U64(a.downcast_ref()?),
            DataType::Float32 => Values::F32(a.downcast_ref()?),
            DataType::Float64 => Values::F64(a.downcast_ref()?),
            DataType::Utf8 => Values::Utf8(a.downcast_ref()?),
            DataType::LargeUtf8 => Values::LargeUtf8(a.downcast_ref()?),
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let d: &DictionaryArray<Int32Type> = a.downcast_ref()?;
                Values::Dict(d.keys().values(), d.values().as_any().downcast_ref()?)
            }
            _ => return None,
        };
        Some(Column {
            name,
            nulls: array.logical_nulls(),
            values,
        })
    }
}

/// The rows of `batch` as `T`, reading the columns named in `fields` (the serialized
/// names of `T`'s fields; other columns are skipped). `None` when one of those columns
/// has a type this path does not read.
pub(crate) fn decode<T: DeserializeOwned>(
    batch: &RecordBatch,
    fields: &[String],
) -> Option<Result<Vec<T>, DeError>> {
    let schema = batch.schema_ref();
    let mut columns = Vec::with_capacity(fields.len());
    let mut strings = Vec::new();
    for (field, array) in schema.fields().iter().zip(batch.columns()) {
        if fields.iter().any(|f| f == field.name()) {
            let column = Column::of(field.name(), array.as_ref())?;
            match &column.values {
                Values::Utf8(a) => strings.push(a.values().clone()),
                Values::LargeUtf8(a) => strings.push(a.values().clone()),
                Values::Dict(_, a) => strings.push(a.values().clone()),
                _ => {}
            }
            columns.push(column);
        }
    }
    let order = std::cell::RefCell::new(None);
    // `Str` fields share the string columns' bytes instead of copying them.
    let rows = crate::text::sharing(strings, || {
        let mut rows = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            rows.push(T::deserialize(Row {
                columns: &columns,
                row,
                order: &order,
            })?);
        }
        Ok(rows)
    });
    Some(rows)
}

/// For a struct row type (keyed by its field list's address): the column of each field,
/// in the fields' order, or `None` when a field has no column (it then reads as a map,
/// so that `#[serde(default)]` applies).
type FieldOrder = std::cell::RefCell<Option<(usize, Option<Vec<usize>>)>>;

/// One row: a map from column name to cell, or the cells of a struct's fields in order.
struct Row<'c, 'a> {
    columns: &'c [Column<'a>],
    row: usize,
    order: &'c FieldOrder,
}

impl<'de> de::Deserializer<'de> for Row<'_, 'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(Cells {
            columns: self.columns.iter(),
            current: None,
            row: self.row,
        })
    }

    /// A struct whose every field has a column reads its cells in field order, without
    /// matching field names per cell.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let key = fields.as_ptr() as usize;
        let mut order = self.order.borrow_mut();
        if order.as_ref().is_none_or(|(k, _)| *k != key) {
            let columns: Option<Vec<usize>> = fields
                .iter()
                .map(|f| self.columns.iter().position(|c| c.name == *f))
                .collect();
            *order = Some((key, columns));
        }
        match order.as_ref().and_then(|(_, o)| o.as_deref()) {
            Some(columns) => visitor.visit_seq(InOrder {
                columns: self.columns,
                order: columns.iter(),
                row: self.row,
            }),
            None => {
                drop(order);
                self.deserialize_any(visitor)
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}

/// What went wrong reading `column` at `row`, naming both (and the text, for a string).
fn cell_error(column: &Column<'_>, row: usize, e: DeError) -> DeError {
    if e.0.starts_with("column `") {
        return e;
    }
    let null = column.nulls.as_ref().is_some_and(|n| n.is_null(row));
    let value = match column.values.text(row) {
        Some(Ok(text)) if !null => format!(" {text:?}"),
        _ => String::new(),
    };
    DeError(Box::new(format!(
        "column `{}`{value} (row {row} of the batch): {}",
        column.name, e.0
    )))
}

/// A struct's cells in field order.
struct InOrder<'c, 'a> {
    columns: &'c [Column<'a>],
    order: std::slice::Iter<'c, usize>,
    row: usize,
}

impl<'c, 'de> InOrder<'c, 'de> {
    /// The next field's cell, read by `read`, or `None` past the last field.
    #[inline(always)]
    fn next_cell<R>(
        &mut self,
        read: impl FnOnce(Cell<'c, 'de>) -> Result<R, DeError>,
    ) -> Result<Option<R>, DeError> {
        let Some(&i) = self.order.next() else {
            return Ok(None);
        };
        let column = &self.columns[i];
        let row = self.row;
        read(Cell { column, row })
            .map(Some)
            .map_err(|e| cell_error(column, row, e))
    }
}

impl<'de> de::SeqAccess<'de> for InOrder<'_, 'de> {
    type Error = DeError;

    #[inline(always)]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.next_cell(|cell| seed.deserialize(cell))
    }

    /// What the row type's `visit_seq` calls per field. Serde's provided one goes through
    /// `PhantomData`'s seed, which LLVM kept out of line: each cell then cost a call, a
    /// frame and its result moved through memory (a quarter of an aggregation's
    /// samples). Calling the field type's `deserialize` here lets it inline.
    #[inline(always)]
    fn next_element<T: de::Deserialize<'de>>(&mut self) -> Result<Option<T>, DeError> {
        self.next_cell(T::deserialize)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.order.len())
    }
}

struct Cells<'c, 'a> {
    columns: std::slice::Iter<'c, Column<'a>>,
    current: Option<&'c Column<'a>>,
    row: usize,
}

impl<'de> MapAccess<'de> for Cells<'_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(column) = self.columns.next() else {
            return Ok(None);
        };
        self.current = Some(column);
        seed.deserialize(column.name.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let column = self
            .current
            .take()
            .ok_or_else(|| DeError(Box::new("a value asked for before its key".into())))?;
        let row = self.row;
        seed.deserialize(Cell { column, row })
            .map_err(|e| cell_error(column, row, e))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.columns.len())
    }
}

/// A field's typed `deserialize_*`: a non-null cell of the column type the field asks for
/// is read straight away (one comparison, small enough to inline into the row type's
/// `Deserialize`); anything else goes through `deserialize_any`, which converts or
/// explains.
macro_rules! typed_cells {
    ($($method:ident: $variant:ident => $visit:ident,)*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            if let Values::$variant(a) = &self.column.values
                && !self.is_null()
            {
                return visitor.$visit(a.value(self.row));
            }
            self.other(visitor)
        }
    )*};
}

/// One value of one column.
struct Cell<'c, 'a> {
    column: &'c Column<'a>,
    row: usize,
}

impl<'de> Cell<'_, 'de> {
    #[inline]
    fn is_null(&self) -> bool {
        self.column
            .nulls
            .as_ref()
            .is_some_and(|n| n.is_null(self.row))
    }

    /// A cell that is not of the type its field asks for (or null): `deserialize_any`,
    /// out of line. It holds a visit of every type (with the visitor's conversions and
    /// errors); kept apart, a field's typed read is a few instructions that inline into
    /// the row type's `Deserialize`.
    #[cold]
    #[inline(never)]
    fn other<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(self, visitor)
    }
}

impl<'de> de::Deserializer<'de> for Cell<'_, 'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            return Err(DeError(Box::new(format!(
                "column `{}` is null in row {} of the batch, but its field is not an Option",
                self.column.name, self.row
            ))));
        }
        let i = self.row;
        match &self.column.values {
            Values::Bool(a) => visitor.visit_bool(a.value(i)),
            Values::I8(a) => visitor.visit_i8(a.value(i)),
            Values::I16(a) => visitor.visit_i16(a.value(i)),
            Values::I32(a) => visitor.visit_i32(a.value(i)),
            Values::I64(a) => visitor.visit_i64(a.value(i)),
            Values::U8(a) => visitor.visit_u8(a.value(i)),
            Values::U16(a) => visitor.visit_u16(a.value(i)),
            Values::U32(a) => visitor.visit_u32(a.value(i)),
            Values::U64(a) => visitor.visit_u64(a.value(i)),
            Values::F32(a) => visitor.visit_f32(a.value(i)),
            Values::F64(a) => visitor.visit_f64(a.value(i)),
            Values::Utf8(a) => visitor.visit_borrowed_str(a.value(i)),
            Values::LargeUtf8(a) => visitor.visit_borrowed_str(a.value(i)),
            Values::Dict(keys, values) => {
                visitor.visit_borrowed_str(dictionary_value(keys, values, i)?)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    /// A string column holds the names of unit variants.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.column.values.text(self.row) {
            Some(text) if !self.is_null() => visitor.visit_enum(text?.into_deserializer()),
            _ => self.other(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    typed_cells! {
        deserialize_bool: Bool => visit_bool,
        deserialize_i8: I8 => visit_i8,
        deserialize_i16: I16 => visit_i16,
        deserialize_i32: I32 => visit_i32,
        deserialize_i64: I64 => visit_i64,
        deserialize_u8: U8 => visit_u8,
        deserialize_u16: U16 => visit_u16,
        deserialize_u32: U32 => visit_u32,
        deserialize_u64: U64 => visit_u64,
        deserialize_f32: F32 => visit_f32,
        deserialize_f64: F64 => visit_f64,
    }

    #[inline(always)]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.column.values.text(self.row) {
            Some(text) if !self.is_null() => visitor.visit_borrowed_str(text?),
            _ => self.other(visitor),
        }
    }

    #[inline(always)]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Float64Array, Int32Array, Int64Array, UInt64Array};
    use arrow_schema::{Field, Schema};
    use serde::{Deserialize, Serialize};
    use std::sync::Arc;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Id(u64);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Retail,
        Online,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sale {
        #[serde(rename = "sale_id")]
        id: Id,
        region: String,
        kind: Kind,
        quantity: i64,
        price: f64,
        note: Option<String>,
        discount: Option<i32>,
        paid: bool,
        #[serde(default)]
        missing: u32,
    }

    fn batch() -> RecordBatch {
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("extra", Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5]))),
            ("sale_id", Arc::new(UInt64Array::from(vec![7, 8, 9]))),
            (
                "region",
                Arc::new(StringArray::from(vec!["north", "", "söuth"])),
            ),
            (
                "kind",
                Arc::new(StringArray::from(vec!["Retail", "Online", "Retail"])),
            ),
            ("quantity", Arc::new(Int64Array::from(vec![1, -2, 3]))),
            ("price", Arc::new(Float64Array::from(vec![1.25, 2.0, 0.0]))),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            ),
            (
                "discount",
                Arc::new(Int32Array::from(vec![None, Some(5), None])),
            ),
            (
                "paid",
                Arc::new(BooleanArray::from(vec![true, false, true])),
            ),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    fn names() -> Vec<String> {
        [
            "sale_id", "region", "kind", "quantity", "price", "note", "discount", "paid", "missing",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn reads_what_serde_arrow_reads() {
        let b = batch();
        let fast: Vec<Sale> = decode(&b, &names()).expect("flat columns").unwrap();
        let general: Vec<Sale> =
            serde_arrow::from_record_batch(&b.project(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap()).unwrap();
        assert_eq!(fast, general);
        assert_eq!(fast[2].region, "söuth");
        assert_eq!(fast[1].kind, Kind::Online);
        assert_eq!(fast[1].note, None);
        assert_eq!(fast[1].discount, Some(5));
    }

    #[test]
    fn a_null_in_a_required_field_names_the_column_and_row() {
        #[derive(Debug, Deserialize)]
        struct Strict {
            #[allow(dead_code)]
            note: String,
        }
        let err = decode::<Strict>(&batch(), &["note".to_string()])
            .expect("flat columns")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "column `note` is null in row 1 of the batch, but its field is not an Option"
        );
    }

    #[test]
    fn a_missing_field_without_default_is_an_error() {
        #[derive(Debug, Deserialize)]
        struct Wants {
            #[allow(dead_code)]
            absent: u32,
        }
        let err = decode::<Wants>(&batch(), &["absent".to_string()])
            .expect("flat columns")
            .unwrap_err();
        assert!(err.to_string().contains("missing field `absent`"), "{err}");
    }

    /// `batch()` with its text columns as dictionaries (as the host hands on Parquet text
    /// stored with one).
    fn dictionary_batch() -> RecordBatch {
        let b = batch();
        let columns: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.as_any().downcast_ref::<StringArray>() {
                Some(text) => {
                    Arc::new(text.iter().collect::<DictionaryArray<Int32Type>>()) as ArrayRef
                }
                None => c.clone(),
            })
            .collect();
        RecordBatch::try_from_iter(
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .zip(columns),
        )
        .unwrap()
    }

    #[test]
    fn dictionary_text_reads_as_its_values() {
        let b = dictionary_batch();
        assert!(matches!(
            b.schema().field_with_name("note").unwrap().data_type(),
            DataType::Dictionary(..)
        ));
        let from_dictionary: Vec<Sale> = decode(&b, &names()).expect("flat columns").unwrap();
        let plain: Vec<Sale> = decode(&batch(), &names()).expect("flat columns").unwrap();
        assert_eq!(from_dictionary, plain);
        assert_eq!(from_dictionary[1].note, None);
        assert_eq!(from_dictionary[1].kind, Kind::Online);
        #[derive(Debug, PartialEq, Deserialize)]
        struct Shared {
            region: crate::Str,
        }
        let shared: Vec<Shared> = decode(&b, &["region".into()])
            .expect("flat columns")
            .unwrap();
        assert_eq!(shared[2].region, "söuth");
    }

    #[test]
    fn a_dictionary_index_out_of_range_is_an_error_naming_the_column() {
        let keys = arrow_array::Int32Array::from(vec![0, 5]);
        let values = Arc::new(StringArray::from(vec!["north"]));
        // SAFETY: deliberately invalid; `decode` must check the index, not trust it.
        let d = unsafe { DictionaryArray::<Int32Type>::new_unchecked(keys, values) };
        let b = RecordBatch::try_from_iter(vec![("region", Arc::new(d) as ArrayRef)]).unwrap();
        #[derive(Debug, Deserialize)]
        struct Region {
            #[allow(dead_code)]
            region: String,
        }
        let err = decode::<Region>(&b, &["region".into()])
            .expect("flat columns")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "column `region` (row 1 of the batch): dictionary index 5 of a dictionary of 1 values"
        );
    }

    #[test]
    fn other_column_types_fall_back() {
        let list = arrow_array::ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(
            vec![Some(1)],
        )]);
        let b = RecordBatch::try_from_iter(vec![("xs", Arc::new(list) as ArrayRef)]).unwrap();
        assert!(decode::<Vec<i32>>(&b, &["xs".to_string()]).is_none());
        // A column the row type does not name does not matter.
        assert!(decode::<Vec<i32>>(&b, &[]).is_some());
    }
}
