//! The task-side implementations behind `Dataset`'s operations: narrow operators, shuffle
//! writers and readers. Each is reached through a monomorphized constructor whose
//! function-table index names it on the wire, with its captured value as bytes.

use crate::rows::{self, BATCH_ROWS, Rows, conjure};
use crate::task::{Operator, ShuffleReader, ShuffleWriter};
use crate::{Data, Key, Result};
use arrow_array::RecordBatch;
use rustc_hash::{FxHashMap, FxHasher};
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// Decodes an op's captured value.
pub(crate) fn capture<C: Data>(arg: &[u8]) -> Result<C> {
    postcard::from_bytes(arg)
        .map_err(|e| crate::Error::from(e).context("decoding a captured value"))
}

/// Where a reduce side's `finish` hands its rows, batch by batch.
pub(crate) type Emit<'a> = dyn FnMut(Rows) -> Result<()> + 'a;

/// Hands rows on in batches of at most `BATCH_ROWS` as `rows` yields them, so a reduce
/// side's output is never held whole.
pub(crate) fn emit_batches<T: 'static>(
    rows: impl IntoIterator<Item = T>,
    emit: &mut Emit<'_>,
) -> Result<()> {
    let mut rows = rows.into_iter();
    loop {
        let chunk: Vec<T> = rows.by_ref().take(BATCH_ROWS).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        emit(Rows::new(chunk))?;
    }
}

/// Which reduce partition a key goes to; the same in every instance and on every side of
/// a join.
pub(crate) fn partition_of<K: Hash>(k: &K, partitions: u32) -> u32 {
    let mut h = FxHasher::default();
    k.hash(&mut h);
    // Fx is a weak, and on wasm32 a 32-bit, hash: small integer keys would all land in
    // one partition. Mix it fully (murmur3's finalizer), then map onto the partitions.
    let mut z = h.finish();
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^= z >> 33;
    ((z as u128 * partitions.max(1) as u128) >> 64) as u32
}

// ---------------------------------------------------------------- narrow operators

/// The one narrow operator: `P` maps each batch (with the captured value `C` and state
/// `S`), `F` emits what is left when the partition ends.
pub(crate) struct StreamOp<C, S, T, U, P, F> {
    c: C,
    s: S,
    _f: PhantomData<fn(T, P, F) -> U>,
}

impl<C, S, T, U, P, F> Operator for StreamOp<C, S, T, U, P, F>
where
    T: 'static,
    U: 'static,
    P: Fn(&C, &mut S, Vec<T>) -> Result<Vec<U>>,
    F: Fn(&C, &mut S) -> Result<Vec<U>>,
{
    fn push(&mut self, rows: Rows) -> Result<Rows> {
        let p: P = conjure();
        Ok(Rows::new(p(&self.c, &mut self.s, rows.take::<T>()?)?))
    }

    fn finish(&mut self) -> Result<Option<Rows>> {
        let f: F = conjure();
        let v = f(&self.c, &mut self.s)?;
        Ok((!v.is_empty()).then(|| Rows::new(v)))
    }
}

pub(crate) fn new_stream_op<C, S, T, U, P, F>(arg: &[u8]) -> Result<Box<dyn Operator>>
where
    C: Data,
    S: Default + 'static,
    T: 'static,
    U: 'static,
    P: Fn(&C, &mut S, Vec<T>) -> Result<Vec<U>> + 'static,
    F: Fn(&C, &mut S) -> Result<Vec<U>> + 'static,
{
    Ok(Box::new(StreamOp::<C, S, T, U, P, F> {
        c: capture(arg)?,
        s: S::default(),
        _f: PhantomData,
    }))
}

/// A small, fast, seedable generator (SplitMix64) for `sample`.
#[derive(Default)]
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------- combine by key

/// Map side of `combine_by_key`: merges values per key before the shuffle.
pub(crate) struct CombineWriter<C, K, V, U, Cr, Mv> {
    c: C,
    partitions: u32,
    map: FxHashMap<K, Option<U>>,
    _f: PhantomData<fn(V, Cr, Mv)>,
}

impl<C, K, V, U, Cr, Mv> ShuffleWriter for CombineWriter<C, K, V, U, Cr, Mv>
where
    K: Key,
    V: Data,
    U: Data,
    Cr: Fn(&C, V) -> U,
    Mv: Fn(U, V) -> U,
{
    fn push(&mut self, rows: Rows) -> Result<()> {
        let (create, merge): (Cr, Mv) = (conjure(), conjure());
        for (k, v) in rows.take::<(K, V)>()? {
            let slot = self.map.entry(k).or_insert(None);
            *slot = Some(match slot.take() {
                Some(u) => merge(u, v),
                None => create(&self.c, v),
            });
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<(u32, Vec<RecordBatch>)>> {
        let n = self.partitions.max(1);
        let mut parts: Vec<Vec<(K, U)>> = (0..n).map(|_| Vec::new()).collect();
        for (k, u) in self.map {
            if let Some(u) = u {
                parts[partition_of(&k, n) as usize].push((k, u));
            }
        }
        encode_parts(parts)
    }
}

/// Per-partition rows → the non-empty partitions' segments, `encode`d batch by batch.
fn encode_parts_with<T>(
    parts: impl IntoIterator<Item = (u32, Vec<T>)>,
    encode: fn(&[T]) -> Result<RecordBatch>,
) -> Result<Vec<(u32, Vec<RecordBatch>)>> {
    let mut out = Vec::new();
    for (p, rows) in parts {
        if rows.is_empty() {
            continue;
        }
        let batches = rows
            .chunks(BATCH_ROWS)
            .map(encode)
            .collect::<Result<Vec<_>>>()?;
        out.push((p, batches));
    }
    Ok(out)
}

/// Key/value rows per partition, as `key` and `value` columns.
fn encode_parts<K: Data, V: Data>(parts: Vec<Vec<(K, V)>>) -> Result<Vec<(u32, Vec<RecordBatch>)>> {
    encode_parts_with(
        (0u32..).zip(parts),
        rows::encode_pairs::<K, V> as fn(&[(K, V)]) -> Result<RecordBatch>,
    )
}

pub(crate) fn new_combine_writer<C, K, V, U, Cr, Mv>(
    arg: &[u8],
    partitions: u32,
) -> Result<Box<dyn ShuffleWriter>>
where
    C: Data,
    K: Key,
    V: Data,
    U: Data,
    Cr: Fn(&C, V) -> U + 'static,
    Mv: Fn(U, V) -> U + 'static,
{
    Ok(Box::new(CombineWriter::<C, K, V, U, Cr, Mv> {
        c: capture(arg)?,
        partitions,
        map: FxHashMap::default(),
        _f: PhantomData,
    }))
}

/// Reduce side of `combine_by_key`: merges the combiners of all map tasks.
pub(crate) struct CombineReader<K, U, Mc> {
    map: FxHashMap<K, Option<U>>,
    _f: PhantomData<Mc>,
}

impl<K: Key, U: Data, Mc: Fn(U, U) -> U> ShuffleReader for CombineReader<K, U, Mc> {
    fn push(&mut self, _side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        let merge: Mc = conjure();
        let map = &mut self.map;
        rows::for_each_pair::<K, U>(batch, |k, u| {
            let slot = map.entry(k).or_insert(None);
            *slot = Some(match slot.take() {
                Some(a) => merge(a, u),
                None => u,
            });
        })?;
        Ok(None)
    }

    fn finish(self: Box<Self>, emit: &mut Emit<'_>) -> Result<()> {
        emit_batches(
            self.map.into_iter().filter_map(|(k, u)| u.map(|u| (k, u))),
            emit,
        )
    }
}

pub(crate) fn new_combine_reader<K: Key, U: Data, Mc: Fn(U, U) -> U + 'static>(
    _arg: &[u8],
) -> Result<Box<dyn ShuffleReader>> {
    Ok(Box::new(CombineReader::<K, U, Mc> {
        map: FxHashMap::default(),
        _f: PhantomData,
    }))
}

// ---------------------------------------------------------------- plain partitioning

/// Map side that sends each `(key, value)` to its key's partition, uncombined (join and
/// cogroup sides, `partition_by`).
pub(crate) struct KeyWriter<K, V> {
    parts: Vec<Vec<(K, V)>>,
}

impl<K: Key, V: Data> ShuffleWriter for KeyWriter<K, V> {
    fn push(&mut self, rows: Rows) -> Result<()> {
        let n = self.parts.len() as u32;
        for (k, v) in rows.take::<(K, V)>()? {
            self.parts[partition_of(&k, n) as usize].push((k, v));
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<(u32, Vec<RecordBatch>)>> {
        encode_parts(self.parts)
    }
}

pub(crate) fn new_key_writer<K: Key, V: Data>(
    _arg: &[u8],
    partitions: u32,
) -> Result<Box<dyn ShuffleWriter>> {
    Ok(Box::new(KeyWriter::<K, V> {
        parts: (0..partitions.max(1)).map(|_| Vec::new()).collect(),
    }))
}

/// Map side that places whole rows by `place(captured, row, partitions, row index)`
/// (round robin for `repartition`, key ranges for `sort_by`).
pub(crate) struct RowWriter<C, T, Pl> {
    c: C,
    parts: Vec<Vec<T>>,
    next: u64,
    _f: PhantomData<Pl>,
}

impl<C, T: Data, Pl: Fn(&C, &T, u32, u64) -> u32> ShuffleWriter for RowWriter<C, T, Pl> {
    fn push(&mut self, rows: Rows) -> Result<()> {
        let place: Pl = conjure();
        let n = self.parts.len() as u32;
        for r in rows.take::<T>()? {
            let p = place(&self.c, &r, n, self.next).min(n - 1);
            self.next += 1;
            self.parts[p as usize].push(r);
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<(u32, Vec<RecordBatch>)>> {
        encode_parts_with((0u32..).zip(self.parts), rows::encode_slice::<T>)
    }
}

pub(crate) fn new_row_writer<C: Data, T: Data, Pl: Fn(&C, &T, u32, u64) -> u32 + 'static>(
    arg: &[u8],
    partitions: u32,
) -> Result<Box<dyn ShuffleWriter>> {
    // Start each map task at a different partition, as Spark's round robin does.
    let start = crate::task_context().map_or(0, |t| t.partition as u64 * 7919);
    Ok(Box::new(RowWriter::<C, T, Pl> {
        c: capture(arg)?,
        parts: (0..partitions.max(1)).map(|_| Vec::new()).collect(),
        next: start,
        _f: PhantomData,
    }))
}

/// Reduce side that passes `(key, value)` rows through as they arrive.
pub(crate) struct PairPassReader<K, V>(PhantomData<fn() -> (K, V)>);

impl<K: Data, V: Data> ShuffleReader for PairPassReader<K, V> {
    fn push(&mut self, _side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        let mut v = Vec::with_capacity(batch.num_rows());
        rows::for_each_pair::<K, V>(batch, |k, x| v.push((k, x)))?;
        Ok(Some(Rows::new(v)))
    }

    fn finish(self: Box<Self>, _emit: &mut Emit<'_>) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn new_pair_pass_reader<K: Data, V: Data>(
    _arg: &[u8],
) -> Result<Box<dyn ShuffleReader>> {
    Ok(Box::new(PairPassReader::<K, V>(PhantomData)))
}

/// Reduce side that passes whole rows through as they arrive.
pub(crate) struct RowPassReader<T>(PhantomData<fn() -> T>);

impl<T: Data> ShuffleReader for RowPassReader<T> {
    fn push(&mut self, _side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        Ok(Some(Rows::new(rows::decode_rows::<T>(batch)?)))
    }

    fn finish(self: Box<Self>, _emit: &mut Emit<'_>) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn new_row_pass_reader<T: Data>(_arg: &[u8]) -> Result<Box<dyn ShuffleReader>> {
    Ok(Box::new(RowPassReader::<T>(PhantomData)))
}

/// Reduce side of `sort_by`: holds the partition's rows and sorts them by key at the end.
pub(crate) struct SortReader<T, K, Kf> {
    ascending: bool,
    rows: Vec<T>,
    _f: PhantomData<fn(Kf) -> K>,
}

impl<T: Data, K: Ord, Kf: Fn(&T) -> K> ShuffleReader for SortReader<T, K, Kf> {
    fn push(&mut self, _side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        self.rows.extend(rows::decode_rows::<T>(batch)?);
        Ok(None)
    }

    fn finish(self: Box<Self>, emit: &mut Emit<'_>) -> Result<()> {
        let key: Kf = conjure();
        let mut keyed: Vec<(K, T)> = self.rows.into_iter().map(|r| (key(&r), r)).collect();
        if self.ascending {
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
        } else {
            keyed.sort_by(|a, b| b.0.cmp(&a.0));
        }
        emit_batches(keyed.into_iter().map(|(_, r)| r), emit)
    }
}

pub(crate) fn new_sort_reader<T: Data, K: Ord + 'static, Kf: Fn(&T) -> K + 'static>(
    arg: &[u8],
) -> Result<Box<dyn ShuffleReader>> {
    Ok(Box::new(SortReader::<T, K, Kf> {
        ascending: capture(arg)?,
        rows: Vec::new(),
        _f: PhantomData,
    }))
}

/// Reduce side of a cogroup of two sides: groups both sides' values per key, then `J`
/// turns each key's groups into output rows (cogroup itself, or a kind of join).
pub(crate) struct CoGroupReader<K, V, W, O, J> {
    groups: FxHashMap<K, (Vec<V>, Vec<W>)>,
    _f: PhantomData<fn(J) -> O>,
}

impl<K, V, W, O, J> ShuffleReader for CoGroupReader<K, V, W, O, J>
where
    K: Key,
    V: Data,
    W: Data,
    O: 'static,
    J: Fn(K, Vec<V>, Vec<W>, &mut Vec<O>),
{
    fn push(&mut self, side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        let groups = &mut self.groups;
        match side {
            0 => rows::for_each_pair::<K, V>(batch, |k, v| match groups.entry(k) {
                Entry::Occupied(mut e) => e.get_mut().0.push(v),
                Entry::Vacant(e) => {
                    e.insert((vec![v], Vec::new()));
                }
            })?,
            _ => rows::for_each_pair::<K, W>(batch, |k, w| match groups.entry(k) {
                Entry::Occupied(mut e) => e.get_mut().1.push(w),
                Entry::Vacant(e) => {
                    e.insert((Vec::new(), vec![w]));
                }
            })?,
        }
        Ok(None)
    }

    fn finish(self: Box<Self>, emit: &mut Emit<'_>) -> Result<()> {
        let j: J = conjure();
        let mut out = Vec::with_capacity(BATCH_ROWS);
        for (k, (vs, ws)) in self.groups {
            j(k, vs, ws, &mut out);
            if out.len() >= BATCH_ROWS {
                emit(Rows::new(std::mem::replace(
                    &mut out,
                    Vec::with_capacity(BATCH_ROWS),
                )))?;
            }
        }
        emit(Rows::new(out))
    }
}

pub(crate) fn new_cogroup_reader<K, V, W, O, J>(_arg: &[u8]) -> Result<Box<dyn ShuffleReader>>
where
    K: Key,
    V: Data,
    W: Data,
    O: 'static,
    J: Fn(K, Vec<V>, Vec<W>, &mut Vec<O>) + 'static,
{
    Ok(Box::new(CoGroupReader::<K, V, W, O, J> {
        groups: FxHashMap::default(),
        _f: PhantomData,
    }))
}

/// Map side of a cached dataset: the task's rows, whole, as the segment of its own
/// partition (the partition stays where it was computed).
pub(crate) struct KeepWriter<T> {
    partition: u32,
    partitions: u32,
    rows: Vec<T>,
}

impl<T: Data> ShuffleWriter for KeepWriter<T> {
    fn push(&mut self, rows: Rows) -> Result<()> {
        self.rows.extend(rows.take::<T>()?);
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<(u32, Vec<RecordBatch>)>> {
        if self.partition >= self.partitions {
            return Ok(Vec::new());
        }
        encode_parts_with([(self.partition, self.rows)], rows::encode_slice::<T>)
    }
}

pub(crate) fn new_keep_writer<T: Data>(
    _arg: &[u8],
    partitions: u32,
) -> Result<Box<dyn ShuffleWriter>> {
    Ok(Box::new(KeepWriter::<T> {
        partition: crate::task_context().map_or(0, |t| t.partition),
        partitions,
        rows: Vec::new(),
    }))
}
