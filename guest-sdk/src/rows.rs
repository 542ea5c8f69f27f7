//! Rows ↔ Arrow, and the type-erased function table that names functions on the wire.

use crate::{Error, Result, Str};
use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::sync::Arc;

/// Rows of some `T` whose type only the monomorphized functions know: a `Vec<T>`.
pub(crate) struct Rows {
    pub len: usize,
    data: Box<dyn Any>,
}

impl Rows {
    pub fn new<T: 'static>(v: Vec<T>) -> Rows {
        Rows {
            len: v.len(),
            data: Box::new(v),
        }
    }

    pub fn take<T: 'static>(self) -> Result<Vec<T>> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        self.data.downcast::<Vec<T>>().map(|b| *b).map_err(|_| {
            Error::msg(format!(
                "internal: rows are not of type {} (a plan from another component?)",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// Rows per Arrow batch the SDK emits.
pub(crate) const BATCH_ROWS: usize = 8192;

pub(crate) fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    Ok(w.into_inner()?)
}

/// The batches of one Arrow IPC stream. The batches' buffers are slices of `bytes`
/// (taken over, not copied) wherever the stream keeps them aligned.
pub(crate) fn read_ipc(bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = arrow_buffer::Buffer::from_vec(bytes);
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut out = Vec::new();
    // `decode` returns `None` only once it has taken every byte.
    while let Some(b) = decoder.decode(&mut buf)? {
        out.push(b);
    }
    decoder.finish()?;
    Ok(out)
}

/// [`read_ipc`] of batches the host made itself from a task's input (a split of a file,
/// which the host's reader validated as it parsed it: UTF-8, offsets) or that came from
/// the application's own `main` (`parallelize`): their arrays are not validated again.
/// Only batches that crossed from another executor (shuffle segments) are, as there the
/// guest is the first to look inside them. (Validating a Parquet text column's strings
/// again took 6% of a group-by by category.)
///
/// Arrow's `StreamDecoder` does not pass its skip-validation flag on to record batches,
/// so the stream's messages are framed here and decoded by a `FileDecoder`, which does.
pub(crate) fn read_host_ipc(bytes: Vec<u8>) -> Result<Vec<RecordBatch>> {
    use arrow_ipc::MessageHeader;
    use arrow_ipc::reader::FileDecoder;
    let bad = |what: &str| {
        Error::msg(format!(
            "a malformed Arrow IPC stream from the host: {what}"
        ))
    };
    let buf = arrow_buffer::Buffer::from_vec(bytes);
    let b = buf.as_slice();
    let word = |at: usize| -> Result<u32> {
        b.get(at..at + 4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
            .ok_or_else(|| bad("it ends inside a message header"))
    };
    let (mut at, mut decoder, mut out) = (0usize, None::<FileDecoder>, Vec::new());
    while at < b.len() {
        // A message: [0xFFFFFFFF] length, metadata (a flatbuffer), body.
        let prefix = if word(at)? == u32::MAX { 8 } else { 4 };
        let meta = word(at + prefix - 4)? as usize;
        if meta == 0 {
            break; // end of stream
        }
        // Lengths from the stream: every sum checked (a usize is 32 bits in the guest).
        let header = (meta.checked_add(prefix))
            .and_then(|h| i32::try_from(h).ok())
            .ok_or_else(|| bad("a metadata length"))?;
        let meta_end = (at + prefix)
            .checked_add(meta)
            .ok_or_else(|| bad("a metadata length"))?;
        let message = b
            .get(at + prefix..meta_end)
            .and_then(|m| arrow_ipc::root_as_message(m).ok())
            .ok_or_else(|| bad("a message's metadata"))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| bad("a body length"))?;
        let end = meta_end.checked_add(body).filter(|e| *e <= b.len());
        let end = end.ok_or_else(|| bad("a message's body runs past its end"))?;
        let block = arrow_ipc::Block::new(at as i64, header, body as i64);
        let message_buf = buf.slice_with_length(at, end - at);
        match message.header_type() {
            MessageHeader::Schema => {
                let schema = message.header_as_schema().ok_or_else(|| bad("a schema"))?;
                let schema = arrow_ipc::convert::try_fb_to_schema(schema)?;
                // SAFETY: the host made these arrays (see above); a malformed one could
                // at worst misbehave inside this instance, the sandbox's memory.
                decoder = Some(unsafe {
                    FileDecoder::new(std::sync::Arc::new(schema), message.version())
                        .with_skip_validation(true)
                });
            }
            MessageHeader::DictionaryBatch => decoder
                .as_mut()
                .ok_or_else(|| bad("a dictionary before the schema"))?
                .read_dictionary(&block, &message_buf)?,
            MessageHeader::RecordBatch => {
                let d = decoder
                    .as_ref()
                    .ok_or_else(|| bad("a batch before the schema"))?;
                out.extend(d.read_record_batch(&block, &message_buf)?);
            }
            other => return Err(bad(&format!("a {other:?} message"))),
        }
        at = end;
    }
    Ok(out)
}

fn binary_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a BinaryArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
        .ok_or_else(|| Error::msg(format!("batch has no binary column `{name}`")))
}

/// `Vec<T>` → batch with one binary column `row`.
pub(crate) fn encode_rows<T: Serialize + 'static>(rows: Rows) -> Result<RecordBatch> {
    encode_slice::<T>(&rows.take::<T>()?)
}

/// [`encode_rows`] as the `collect` op.
pub(crate) fn encode_rows_op<T: Serialize + 'static>(
    _arg: &[u8],
    rows: Rows,
) -> Result<RecordBatch> {
    encode_rows::<T>(rows)
}

/// The decoder of `parallelize`d rows.
pub(crate) fn decode_rows_op<T: DeserializeOwned + 'static>(
    _arg: &[u8],
    batch: &RecordBatch,
) -> Result<Rows> {
    Ok(Rows::new(decode_rows::<T>(batch)?))
}

/// Rows → batch with one binary column `row`.
pub(crate) fn encode_slice<T: Serialize>(v: &[T]) -> Result<RecordBatch> {
    let mut b = BinaryBuilder::with_capacity(v.len(), v.len() * 16);
    let mut buf = Vec::new();
    for r in v {
        buf.clear();
        buf = postcard::to_extend(r, buf)?;
        b.append_value(&buf);
    }
    let schema = Schema::new(vec![Field::new("row", DataType::Binary, false)]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(b.finish()) as ArrayRef],
    )?)
}

/// Inverse of [`encode_rows`], for `collect` on the driver.
pub(crate) fn decode_rows<T: DeserializeOwned>(batch: &RecordBatch) -> Result<Vec<T>> {
    let col = binary_column(batch, "row")?;
    (0..col.len())
        .map(|i| {
            postcard::from_bytes(col.value(i))
                .map_err(|e| Error::from(e).context(format!("decoding row {i}")))
        })
        .collect()
}

/// Key/value rows → batch with binary columns `key` and `value` (a shuffle segment).
pub(crate) fn encode_pairs<K: Serialize, V: Serialize>(pairs: &[(K, V)]) -> Result<RecordBatch> {
    let mut kb = BinaryBuilder::with_capacity(pairs.len(), pairs.len() * 16);
    let mut vb = BinaryBuilder::with_capacity(pairs.len(), pairs.len() * 8);
    let mut buf = Vec::new();
    for (k, v) in pairs {
        buf.clear();
        buf = postcard::to_extend(k, buf)?;
        kb.append_value(&buf);
        buf.clear();
        buf = postcard::to_extend(v, buf)?;
        vb.append_value(&buf);
    }
    pairs_batch(kb, vb)
}

/// Encoded keys and values → a shuffle segment batch (binary columns `key`, `value`).
pub(crate) fn pairs_batch(mut kb: BinaryBuilder, mut vb: BinaryBuilder) -> Result<RecordBatch> {
    let schema = Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, false),
    ]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(kb.finish()) as ArrayRef, Arc::new(vb.finish())],
    )?)
}

/// Calls `each(key, value)` for every row of a shuffle segment batch.
pub(crate) fn for_each_pair<K: DeserializeOwned, V: DeserializeOwned>(
    batch: &RecordBatch,
    mut each: impl FnMut(K, V),
) -> Result<()> {
    let keys = binary_column(batch, "key")?;
    let values = binary_column(batch, "value")?;
    for i in 0..batch.num_rows() {
        let k = postcard::from_bytes(keys.value(i))?;
        let v = postcard::from_bytes(values.value(i))?;
        each(k, v);
    }
    Ok(())
}

/// Text lines → batch with one utf8 column `line`.
pub(crate) fn lines_batch(lines: StringBuilder) -> Result<RecordBatch> {
    let mut lines = lines;
    let schema = Schema::new(vec![Field::new("line", DataType::Utf8, false)]);
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(lines.finish()) as ArrayRef],
    )?)
}

/// The utf8 column `line` of a text batch.
fn line_column(batch: &RecordBatch) -> Result<&StringArray> {
    batch
        .column_by_name("line")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::msg("text batch has no utf8 column `line`"))
}

/// Batch with a utf8 column `line` → `Vec<String>` (what `text_file` reads).
pub(crate) fn decode_lines(_arg: &[u8], batch: &RecordBatch) -> Result<Rows> {
    let v: Vec<String> = line_column(batch)?
        .iter()
        .map(|s| s.unwrap_or_default().to_owned())
        .collect();
    Ok(Rows::new(v))
}

/// Batch with a utf8 column `line` → `Vec<Str>` sharing the column's bytes (what
/// `lines` reads).
pub(crate) fn decode_shared_lines(_arg: &[u8], batch: &RecordBatch) -> Result<Rows> {
    let col = line_column(batch)?;
    let (offsets, values) = (col.value_offsets(), col.values());
    let v: Vec<Str> = (0..col.len())
        .map(|i| {
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            let len = if col.is_null(i) { 0 } else { end - start };
            // SAFETY: the array is valid UTF-8 (checked when it was decoded) and its
            // offsets are char boundaries.
            unsafe { Str::from_utf8_buffer_unchecked(values, start, len) }
        })
        .collect();
    Ok(Rows::new(v))
}

/// Names a function on the wire.
///
/// In WebAssembly a function pointer *is* an index into the module's function table,
/// which every instance of the same component shares, so the index is the name. On other
/// targets (host-side unit tests) a process-local registry stands in.
pub(crate) fn fn_ref(ptr: usize) -> u32 {
    #[cfg(target_arch = "wasm32")]
    {
        ptr as u32
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = reg.iter().position(|p| *p == ptr) {
            return i as u32 + 1;
        }
        reg.push(ptr);
        reg.len() as u32
    }
}

/// Inverse of [`fn_ref`]. `0` is never a valid reference.
pub(crate) fn fn_ptr(r: u32) -> Result<usize> {
    if r == 0 {
        return Err(Error::msg("null function reference"));
    }
    #[cfg(target_arch = "wasm32")]
    {
        Ok(r as usize)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.get(r as usize - 1)
            .copied()
            .ok_or_else(|| Error::msg(format!("unknown function reference {r}")))
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn registry() -> &'static std::sync::Mutex<Vec<usize>> {
    static REG: std::sync::OnceLock<std::sync::Mutex<Vec<usize>>> = std::sync::OnceLock::new();
    REG.get_or_init(Default::default)
}

/// Produces the value of a capture-free closure type.
///
/// A closure that captures nothing is a zero-sized type with no state, so any instance is
/// *the* instance; this is how a task instance on an executor gets hold of the closure the
/// driver-side instance named by its function-table entry.
pub(crate) fn conjure<F>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "closures passed to Flint transformations must not capture variables: \
             a task runs in another instance where only the code exists"
        )
    };
    // SAFETY: F is zero-sized (checked at compile time above), so reading it from a
    // dangling, well-aligned pointer reads no memory; capture-free closures and fn items
    // have no validity invariants beyond their type.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, DictionaryArray, Int64Array, StringArray, types::Int32Type};
    use std::sync::Arc;

    /// A stream of two batches with a text column (with nulls), a number column and a
    /// dictionary column, as `StreamWriter` writes it.
    fn stream() -> (Vec<u8>, Vec<RecordBatch>) {
        let batch = |words: Vec<Option<&str>>, n: Vec<i64>, dict: Vec<&str>| {
            let d: DictionaryArray<Int32Type> = dict.into_iter().collect();
            RecordBatch::try_from_iter(vec![
                ("word", Arc::new(StringArray::from(words)) as ArrayRef),
                ("n", Arc::new(Int64Array::from(n)) as ArrayRef),
                ("tag", Arc::new(d) as ArrayRef),
            ])
            .unwrap()
        };
        let batches = vec![
            batch(
                vec![Some("a"), None, Some("grüße")],
                vec![1, 2, 3],
                vec!["x", "y", "x"],
            ),
            batch(
                vec![Some("long enough to matter"), Some("")],
                vec![-4, 5],
                vec!["z", "z"],
            ),
        ];
        let mut w =
            arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &batches[0].schema()).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        (w.into_inner().unwrap(), batches)
    }

    #[test]
    fn host_streams_read_as_the_stream_decoder_reads_them() {
        let (bytes, batches) = stream();
        let host = read_host_ipc(bytes.clone()).unwrap();
        assert_eq!(host, read_ipc(bytes).unwrap());
        assert_eq!(host.len(), batches.len());
        for (got, want) in host.iter().zip(&batches) {
            assert_eq!(got.columns(), want.columns());
        }
        assert!(read_host_ipc(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn a_cut_or_corrupt_host_stream_is_an_error() {
        let (bytes, _) = stream();
        for cut in [3, 7, 20, bytes.len() / 2, bytes.len() - 9] {
            let err = read_host_ipc(bytes[..cut].to_vec()).unwrap_err();
            assert!(err.to_string().contains("Arrow IPC"), "{cut}: {err}");
        }
        let mut flipped = bytes.clone();
        flipped[4] = 0xff; // a metadata length far past the end
        assert!(read_host_ipc(flipped).is_err());
    }
}
