//! Typed rows ↔ Arrow columns (for CSV, JSON lines, Parquet and Arrow IPC), through
//! `serde_arrow`: a struct's fields become columns of the matching Arrow types.

use crate::rows::Rows;
use crate::{Data, Error, Result};
use arrow_array::RecordBatch;
use arrow_schema::{FieldRef, Schema};
use serde_arrow::schema::{SchemaLike, TracingOptions};
use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

thread_local! {
    static FIELDS: RefCell<HashMap<TypeId, Vec<FieldRef>>> = RefCell::new(HashMap::new());
}

/// The Arrow fields of row type `T` (a struct: one column per field), traced once.
pub(crate) fn fields_of<T: Data>() -> Result<Vec<FieldRef>> {
    let id = TypeId::of::<T>();
    if let Some(f) = FIELDS.with(|m| m.borrow().get(&id).cloned()) {
        return Ok(f);
    }
    let opts = TracingOptions::default()
        .strings_as_large_utf8(false)
        .allow_null_fields(true);
    // Through `Probe`, so that fields parsed from text (chrono's types) trace as text.
    let fields =
        crate::trace::trace(|| Vec::<FieldRef>::from_type::<crate::trace::Probe<T>>(opts.clone()))
            .map_err(|e| {
                Error::from(e).context(format!(
                    "{} cannot be a row of a columnar format (it must be a struct of plain fields)",
                    std::any::type_name::<T>()
                ))
            })?;
    FIELDS.with(|m| m.borrow_mut().insert(id, fields.clone()));
    Ok(fields)
}

/// `T`'s schema as an Arrow IPC stream with no batches: how a schema travels in a plan.
pub(crate) fn schema_ipc<T: Data>() -> Result<Vec<u8>> {
    let schema = Schema::new(fields_of::<T>()?);
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema)?;
    w.finish()?;
    Ok(w.into_inner()?)
}

/// The column names of `T`, for Parquet projection.
pub(crate) fn columns_of<T: Data>() -> Result<Vec<String>> {
    Ok(fields_of::<T>()?
        .iter()
        .map(|f| f.name().to_string())
        .collect())
}

/// A batch of a columnar source → rows of `T`, matching columns to fields by name.
/// Flat columns take the direct path of [`columns`](crate::columns); other shapes go
/// through `serde_arrow`.
pub(crate) fn decode_typed<T: Data>(_arg: &[u8], batch: &RecordBatch) -> Result<Rows> {
    let context = |e: Error| {
        e.context(format!(
            "reading columns {:?} as {}",
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect::<Vec<_>>(),
            std::any::type_name::<T>()
        ))
    };
    let v: Vec<T> = match crate::columns::decode(batch, &columns_of::<T>()?) {
        Some(rows) => rows.map_err(|e| context(e.into()).bad_input())?,
        None => serde_arrow::from_record_batch(batch).map_err(|e| context(e.into()).bad_input())?,
    };
    Ok(Rows::new(v))
}

/// Rows of `T` → a batch with one column per field, for the columnar `save_as_*`.
pub(crate) fn render_typed<T: Data>(_arg: &[u8], rows: Rows) -> Result<RecordBatch> {
    let v: Vec<T> = rows.take()?;
    let fields = fields_of::<T>()?;
    let batch = serde_arrow::to_record_batch(&fields, &v)?;
    // Keep the schema exactly as traced (nullability included).
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        batch.columns().to_vec(),
    )?)
}
