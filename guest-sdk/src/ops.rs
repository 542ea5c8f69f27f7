//! The task-side implementations behind `Dataset`'s operations: narrow operators, shuffle
//! writers and readers. Each is reached through a monomorphized constructor whose
//! function-table index names it on the wire, with its captured value as bytes.

use crate::hash;
use crate::rows::{self, BATCH_ROWS, Rows, conjure};
use crate::task::{Operator, ShuffleReader, ShuffleWriter};
use crate::{Data, Key, Result};
use arrow_array::RecordBatch;
use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::marker::PhantomData;
use std::rc::Rc;

/// Decodes an op's captured value.
pub(crate) fn capture<C: Data>(arg: &[u8]) -> Result<C> {
    postcard::from_bytes(arg)
        .map_err(|e| crate::Error::from(e).context("decoding a captured value"))
}

/// Where a reduce side's `finish` hands its rows, batch by batch.
pub(crate) type Emit<'a> = dyn FnMut(Rows) -> Result<()> + 'a;

/// Hands `out` on through `emit` once it holds a batch, leaving it empty.
fn emit_full<T: 'static>(out: &mut Vec<T>, emit: &mut Emit<'_>) -> Result<()> {
    if out.len() >= BATCH_ROWS {
        emit(Rows::new(std::mem::replace(
            out,
            Vec::with_capacity(BATCH_ROWS),
        )))?;
    }
    Ok(())
}

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
    let z = hash::hash_of(k);
    ((z as u128 * partitions.max(1) as u128) >> 64) as u32
}

// ---------------------------------------------------------------- narrow operators

/// The one narrow operator: `P` maps each batch (with the captured value `C` and state
/// `S`), `F` emits what is left when the partition ends.
pub(crate) struct StreamOp<C, S, T, U, P, F> {
    c: C,
    s: S,
    tail: Option<Vec<U>>,
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

    fn finish(&mut self) -> Result<()> {
        let f: F = conjure();
        self.tail = Some(f(&self.c, &mut self.s)?);
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Rows>> {
        Ok(self.tail.take().map(Rows::new))
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
        tail: None,
        _f: PhantomData,
    }))
}

/// `flat_map`: each row becomes the rows `G` makes of it, handed on a batch at a time
/// (one row may make many).
pub(crate) struct FlatMapOp<C, T, I: IntoIterator, G> {
    c: C,
    input: std::vec::IntoIter<T>,
    inner: Option<I::IntoIter>,
    _f: PhantomData<G>,
}

impl<C, T: 'static, I, G> Operator for FlatMapOp<C, T, I, G>
where
    I: IntoIterator,
    I::Item: 'static,
    G: Fn(&C, T) -> I,
{
    fn push(&mut self, rows: Rows) -> Result<Rows> {
        self.input = rows.take::<T>()?.into_iter();
        Ok(self
            .next()?
            .unwrap_or_else(|| Rows::new(Vec::<I::Item>::new())))
    }

    fn next(&mut self) -> Result<Option<Rows>> {
        let g: G = conjure();
        // Room for a batch of small rows at once (growing a row at a time copies it all
        // several times over), never more than 1 MiB ahead of need.
        let room = (1 << 20) / std::mem::size_of::<I::Item>().max(1);
        let mut out = Vec::with_capacity(
            BATCH_ROWS
                .min(room)
                .min(self.input.len().saturating_mul(8))
                .max(1),
        );
        loop {
            if let Some(inner) = &mut self.inner {
                out.extend(inner.by_ref().take(BATCH_ROWS - out.len()));
                if out.len() >= BATCH_ROWS {
                    return Ok(Some(Rows::new(out)));
                }
                self.inner = None;
            }
            match self.input.next() {
                Some(row) => self.inner = Some(g(&self.c, row).into_iter()),
                None => return Ok((!out.is_empty()).then(|| Rows::new(out))),
            }
        }
    }
}

pub(crate) fn new_flat_map_op<C, T, I, G>(arg: &[u8]) -> Result<Box<dyn Operator>>
where
    C: Data,
    T: 'static,
    I: IntoIterator + 'static,
    I::IntoIter: 'static,
    I::Item: 'static,
    G: Fn(&C, T) -> I + 'static,
{
    Ok(Box::new(FlatMapOp::<C, T, I, G> {
        c: capture(arg)?,
        input: Vec::new().into_iter(),
        inner: None,
        _f: PhantomData,
    }))
}

/// `map_partitions`: holds the partition (spilling it to one run past the task's memory
/// budget), then hands `G`'s output over it on a batch at a time.
pub(crate) struct PartitionOp<T, I: IntoIterator, G> {
    held: Vec<T>,
    run: Option<crate::spill::RunWriter<T>>,
    count: u64,
    out: Option<(I::IntoIter, ReadError)>,
    _f: PhantomData<G>,
}

impl<T: Data, I, G> Operator for PartitionOp<T, I, G>
where
    I: IntoIterator,
    I::Item: 'static,
    G: Fn(Partition<T>) -> I,
{
    fn push(&mut self, rows: Rows) -> Result<Rows> {
        let rows = rows.take::<T>()?;
        self.count += rows.len() as u64;
        match &mut self.run {
            Some(run) => {
                for r in &rows {
                    run.push(r)?;
                }
            }
            None => {
                self.held.extend(rows);
                if self.held.len() >= MIN_HELD && crate::spill::over_budget(0) {
                    let mut run = crate::spill::RunWriter::new()?;
                    for r in &self.held {
                        run.push(r)?;
                    }
                    self.held = Vec::new();
                    self.run = Some(run);
                }
            }
        }
        Ok(Rows::new(Vec::<I::Item>::new()))
    }

    fn finish(&mut self) -> Result<()> {
        let error = Rc::new(Cell::new(None));
        let rows = match self.run.take() {
            Some(run) => Held::Spilled(run.finish()?),
            None => Held::Memory(std::mem::take(&mut self.held).into_iter()),
        };
        let g: G = conjure();
        let out = g(Partition {
            rows,
            left: self.count,
            error: error.clone(),
        });
        self.out = Some((out.into_iter(), error));
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Rows>> {
        let Some((out, error)) = &mut self.out else {
            return Ok(None);
        };
        let batch: Vec<I::Item> = out.by_ref().take(BATCH_ROWS).collect();
        if let Some(e) = error.take() {
            return Err(e.context("reading back a spilled partition of map_partitions"));
        }
        if batch.is_empty() {
            self.out = None;
            return Ok(None);
        }
        Ok(Some(Rows::new(batch)))
    }
}

pub(crate) fn new_partition_op<T, I, G>(_arg: &[u8]) -> Result<Box<dyn Operator>>
where
    T: Data,
    I: IntoIterator + 'static,
    I::IntoIter: 'static,
    I::Item: 'static,
    G: Fn(Partition<T>) -> I + 'static,
{
    Ok(Box::new(PartitionOp::<T, I, G> {
        held: Vec::new(),
        run: None,
        count: 0,
        out: None,
        _f: PhantomData,
    }))
}

/// Where a [`Partition`] leaves the error of a failed read, for the task to fail with.
type ReadError = Rc<Cell<Option<crate::Error>>>;

enum Held<T> {
    Memory(std::vec::IntoIter<T>),
    Spilled(crate::spill::RunReader<T>),
}

/// The rows of one partition, in order, for [`Dataset::map_partitions`] and
/// [`Dataset::foreach_partition`] (Spark's `Iterator[T]`). A partition larger than the
/// task's memory is read back from disk as the iterator goes.
///
/// [`Dataset::map_partitions`]: crate::Dataset::map_partitions
/// [`Dataset::foreach_partition`]: crate::Dataset::foreach_partition
pub struct Partition<T> {
    rows: Held<T>,
    left: u64,
    error: ReadError,
}

impl<T: Data> Iterator for Partition<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let row = match &mut self.rows {
            Held::Memory(rows) => rows.next(),
            // A failed read ends the iteration; the task then fails with the error.
            Held::Spilled(run) => run.next().unwrap_or_else(|e| {
                self.error.set(Some(e));
                self.left = 0;
                None
            }),
        };
        self.left = self.left.saturating_sub(row.is_some() as u64);
        row
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX);
        (n, Some(n))
    }
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

/// Rows an operator holds at least before it spills or flushes for memory: below this,
/// what fills the budget is not its state.
pub(crate) const MIN_HELD: usize = 1024;

/// Whether a hash map about to take a new key should give up its entries first: the
/// guest is over its budget, or the map is full and growing it (a second table beside
/// the first while it rehashes) would take the guest over.
fn map_must_yield<K, V>(map: &hash::Map<K, V>) -> bool {
    if map.len() < MIN_HELD {
        return false;
    }
    let growth = if map.len() == map.capacity() {
        (map.capacity() as u64 * 2) * (std::mem::size_of::<(K, V)>() as u64 + 1)
    } else {
        0
    };
    crate::spill::over_budget(growth)
}

/// `*slot = f(*slot, v)`, moving the old value out and the new one in, so that a map's
/// values need no placeholder (an `Option` slot makes an entry of a `u64` count twice
/// its size). Were `f` to unwind, the slot would be left moved-from: it aborts instead
/// (guests build with `panic = "abort"` anyway).
#[inline]
fn merge_in_place<U, V>(slot: &mut U, v: V, f: impl FnOnce(U, V) -> U) {
    struct AbortOnUnwind;
    impl Drop for AbortOnUnwind {
        fn drop(&mut self) {
            std::process::abort();
        }
    }
    let guard = AbortOnUnwind;
    // SAFETY: `slot` is valid for reads and writes; the value read is written back
    // (merged) before anything can observe the slot, and if `f` unwinds the guard
    // aborts before the moved-from slot could be dropped or read.
    unsafe {
        let old = std::ptr::read(slot);
        std::ptr::write(slot, f(old, v));
    }
    std::mem::forget(guard);
}

/// Map side of `combine_by_key`: merges values per key before the shuffle, in a hash map
/// bounded by the task's memory budget: when full it emits its partial aggregates (the
/// reduce side merges them) and starts again.
pub(crate) struct CombineWriter<C, K, V, U, Cr, Mv> {
    c: C,
    partitions: u32,
    map: hash::Map<K, U>,
    _f: PhantomData<fn(V, Cr, Mv)>,
}

impl<C, K: Key, V, U: Data, Cr, Mv> CombineWriter<C, K, V, U, Cr, Mv> {
    fn flush(&mut self) -> Result<()> {
        let n = self.partitions.max(1);
        let mut parts: Vec<Vec<(K, U)>> = (0..n).map(|_| Vec::new()).collect();
        for (k, u) in std::mem::take(&mut self.map) {
            parts[partition_of(&k, n) as usize].push((k, u));
        }
        emit_parts(parts)
    }
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
        if map_must_yield(&self.map) {
            self.flush()?;
        }
        for (k, v) in rows.take::<(K, V)>()? {
            // Most rows meet a key already there: a lookup alone (which inlines here)
            // serves them, and a new key pays for a second probe.
            match self.map.get_mut(&k) {
                Some(u) => merge_in_place(u, v, &merge),
                None => {
                    self.map.insert(k, create(&self.c, v));
                }
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.flush()
    }
}

/// Per-partition rows → emitted chunks, `encode`d batch by batch.
fn emit_parts_with<T>(
    parts: impl IntoIterator<Item = (u32, Vec<T>)>,
    encode: fn(&[T]) -> Result<RecordBatch>,
) -> Result<()> {
    for (p, rows) in parts {
        for chunk in rows.chunks(BATCH_ROWS) {
            crate::spill::emit_batch(p, &encode(chunk)?)?;
        }
    }
    Ok(())
}

/// Key/value rows per partition, as `key` and `value` columns.
pub(crate) fn emit_parts<K: Data, V: Data>(parts: Vec<Vec<(K, V)>>) -> Result<()> {
    emit_parts_with(
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
        map: hash::Map::default(),
        _f: PhantomData,
    }))
}

/// A hash map from keys to per-key state that spills: past the task's memory budget it
/// sorts its entries by key hash into a spill run; at the end the runs are merged by hash
/// (equal keys meet there, their states merged) as Spark's ExternalAppendOnlyMap does.
/// The reduce sides of the aggregations, `group_by_key`, the joins and `cogroup` keep
/// their state in one.
pub(crate) struct SpillMap<K, S> {
    pub map: hash::Map<K, S>,
    runs: Vec<crate::spill::RunReader<(u64, K, S)>>,
}

impl<K: Key, S: Data> SpillMap<K, S> {
    pub fn new() -> Self {
        SpillMap {
            map: hash::Map::default(),
            runs: Vec::new(),
        }
    }

    /// Spills the map if it should give up its entries before taking a batch more.
    pub fn make_room(&mut self) -> Result<()> {
        if map_must_yield(&self.map) {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        let mut v: Vec<(u64, K, S)> = std::mem::take(&mut self.map)
            .into_iter()
            .map(|(k, s)| (hash::hash_of(&k), k, s))
            .collect();
        v.sort_unstable_by_key(|e| e.0);
        let mut w = crate::spill::RunWriter::new()?;
        for e in &v {
            w.push(e)?;
        }
        drop(v);
        self.runs.push(w.finish()?);
        Ok(())
    }

    /// Hands each key with its whole state to `f`, merging the states of a key that was
    /// spilled with `merge`. One key's merged state must fit in the task's memory.
    pub fn finish(
        mut self,
        merge: impl Fn(S, S) -> S,
        mut f: impl FnMut(K, S) -> Result<()>,
    ) -> Result<()> {
        if self.runs.is_empty() {
            for (k, s) in self.map {
                f(k, s)?;
            }
            return Ok(());
        }
        self.spill()?;
        merge_by_hash(std::mem::take(&mut self.runs), |group: Vec<(K, S)>| {
            // Equal hashes, mostly one key: merge equal keys.
            let mut keys: Vec<(K, S)> = Vec::with_capacity(1);
            for (k, s) in group {
                match keys.iter().position(|(k2, _)| *k2 == k) {
                    Some(i) => {
                        let (k2, a) = keys.swap_remove(i);
                        keys.push((k2, merge(a, s)));
                    }
                    None => keys.push((k, s)),
                }
            }
            for (k, s) in keys {
                f(k, s)?;
            }
            Ok(())
        })
    }
}

/// Reduce side of `combine_by_key`: merges the combiners of all map tasks in a
/// [`SpillMap`].
pub(crate) struct CombineReader<K, U, Mc> {
    state: SpillMap<K, U>,
    _f: PhantomData<Mc>,
}

impl<K: Key, U: Data, Mc: Fn(U, U) -> U> ShuffleReader for CombineReader<K, U, Mc> {
    fn push(&mut self, _side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        self.state.make_room()?;
        let merge: Mc = conjure();
        let map = &mut self.state.map;
        rows::for_each_pair::<K, U>(batch, |k, u| match map.entry(k) {
            Entry::Occupied(mut e) => merge_in_place(e.get_mut(), u, &merge),
            Entry::Vacant(e) => {
                e.insert(u);
            }
        })?;
        Ok(None)
    }

    fn finish(self: Box<Self>, emit: &mut Emit<'_>) -> Result<()> {
        let merge: Mc = conjure();
        let mut out = Vec::with_capacity(BATCH_ROWS);
        self.state.finish(&merge, |k, u| {
            out.push((k, u));
            emit_full(&mut out, emit)
        })?;
        emit(Rows::new(out))
    }
}

/// Merges runs sorted by hash: `f` gets, per hash, every entry of every run with it.
///
/// The merge holds one entry per run besides the group it is collecting; a key whose
/// values are large has a large entry in each run, all held once the merge nears its
/// hash. Those must fit in the task's memory (as one key's values must in Spark): past
/// the budget, in encoded bytes, the merge fails naming the size, as a limit.
fn merge_by_hash<K: Data, X: Data>(
    mut runs: Vec<crate::spill::RunReader<(u64, K, X)>>,
    mut f: impl FnMut(Vec<(K, X)>) -> Result<()>,
) -> Result<()> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    type Head<K, X> = Option<((u64, K, X), usize)>;
    let (budget, n) = (crate::spill::budget(), runs.len());
    // Encoded bytes of the heads and of the group being collected.
    let mut held = 0usize;
    let next = |run: &mut crate::spill::RunReader<(u64, K, X)>,
                held: &mut usize|
     -> Result<Head<K, X>> {
        let h = run.next_sized()?;
        if let Some((_, size)) = &h {
            *held += size;
            if *held as u64 > budget {
                return Err(crate::Error::limit(
                    "task.memory",
                    format!(
                        "merging {n} spill runs holds {held} bytes of values (encoded) at once, over the task's memory budget of {budget} bytes (a quarter of task.memory), the entry read last {size} of them: the values of a single key must fit in memory, as in Spark"
                    ),
                ));
            }
        }
        Ok(h)
    };
    let mut heads: Vec<Head<K, X>> = Vec::with_capacity(runs.len());
    let mut heap = BinaryHeap::with_capacity(runs.len());
    for (i, r) in runs.iter_mut().enumerate() {
        let h = next(r, &mut held)?;
        if let Some((e, _)) = &h {
            heap.push(Reverse((e.0, i)));
        }
        heads.push(h);
    }
    while let Some(Reverse((hash, _))) = heap.peek().copied() {
        let mut group = Vec::new();
        let mut group_bytes = 0;
        while let Some(Reverse((h, i))) = heap.peek().copied() {
            if h != hash {
                break;
            }
            heap.pop();
            // Take every entry of run `i` with this hash.
            loop {
                match heads[i].take() {
                    Some((e, size)) if e.0 == hash => {
                        group.push((e.1, e.2));
                        group_bytes += size;
                        heads[i] = next(&mut runs[i], &mut held)?;
                    }
                    other => {
                        if let Some((e, _)) = &other {
                            heap.push(Reverse((e.0, i)));
                        }
                        heads[i] = other;
                        break;
                    }
                }
            }
        }
        f(group)?;
        held -= group_bytes;
    }
    Ok(())
}

pub(crate) fn new_combine_reader<K: Key, U: Data, Mc: Fn(U, U) -> U + 'static>(
    _arg: &[u8],
) -> Result<Box<dyn ShuffleReader>> {
    Ok(Box::new(CombineReader::<K, U, Mc> {
        state: SpillMap::new(),
        _f: PhantomData,
    }))
}

// ---------------------------------------------------------------- plain partitioning

/// Map side that sends each `(key, value)` to its key's partition, uncombined (join and
/// cogroup sides, `partition_by`, `group_by_key`). A partition's buffer is emitted when it
/// holds a batch, all of them when the task reaches its memory budget.
pub(crate) struct KeyWriter<K, V> {
    parts: Vec<Vec<(K, V)>>,
    held: usize,
}

impl<K: Key, V: Data> ShuffleWriter for KeyWriter<K, V> {
    fn push(&mut self, rows: Rows) -> Result<()> {
        let n = self.parts.len() as u32;
        for (k, v) in rows.take::<(K, V)>()? {
            let p = partition_of(&k, n) as usize;
            self.parts[p].push((k, v));
            if self.parts[p].len() >= BATCH_ROWS {
                let full = std::mem::take(&mut self.parts[p]);
                self.held -= full.len() - 1;
                emit_parts_with([(p as u32, full)], rows::encode_pairs::<K, V>)?;
            } else {
                self.held += 1;
            }
        }
        if self.held >= MIN_HELD && crate::spill::over_budget(0) {
            self.held = 0;
            emit_parts(std::mem::replace(
                &mut self.parts,
                (0..n).map(|_| Vec::new()).collect(),
            ))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        emit_parts(self.parts)
    }
}

pub(crate) fn new_key_writer<K: Key, V: Data>(
    _arg: &[u8],
    partitions: u32,
) -> Result<Box<dyn ShuffleWriter>> {
    Ok(Box::new(KeyWriter::<K, V> {
        parts: (0..partitions.max(1)).map(|_| Vec::new()).collect(),
        held: 0,
    }))
}

/// Map side that places whole rows by `place(captured, row, partitions, row index)`
/// (round robin for `repartition`, key ranges for `sort_by`); buffers as [`KeyWriter`].
pub(crate) struct RowWriter<C, T, Pl> {
    c: C,
    parts: Vec<Vec<T>>,
    held: usize,
    next: u64,
    _f: PhantomData<Pl>,
}

impl<C, T: Data, Pl: Fn(&C, &T, u32, u64) -> u32> ShuffleWriter for RowWriter<C, T, Pl> {
    fn push(&mut self, rows: Rows) -> Result<()> {
        let place: Pl = conjure();
        let n = self.parts.len() as u32;
        for r in rows.take::<T>()? {
            let p = place(&self.c, &r, n, self.next).min(n - 1) as usize;
            self.next += 1;
            self.parts[p].push(r);
            if self.parts[p].len() >= BATCH_ROWS {
                let full = std::mem::take(&mut self.parts[p]);
                self.held -= full.len() - 1;
                emit_parts_with([(p as u32, full)], rows::encode_slice::<T>)?;
            } else {
                self.held += 1;
            }
        }
        if self.held >= MIN_HELD && crate::spill::over_budget(0) {
            self.held = 0;
            let parts = std::mem::replace(&mut self.parts, (0..n).map(|_| Vec::new()).collect());
            emit_parts_with((0u32..).zip(parts), rows::encode_slice::<T>)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        emit_parts_with((0u32..).zip(self.parts), rows::encode_slice::<T>)
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
        held: 0,
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

/// Reduce side of `sort_by`: an external merge sort. Rows are held until the task's
/// memory budget, then sorted by key into a spill run; at the end the runs (and what is
/// held) are merged by key.
pub(crate) struct SortReader<T, K, Kf> {
    ascending: bool,
    rows: Vec<T>,
    runs: Vec<crate::spill::RunReader<T>>,
    _f: PhantomData<fn(Kf) -> K>,
}

impl<T: Data, K: Ord, Kf: Fn(&T) -> K> SortReader<T, K, Kf> {
    /// Sorts the held rows in place (stable: equal keys keep their arrival order).
    fn sort(&mut self) {
        let key: Kf = conjure();
        if self.ascending {
            self.rows.sort_by_cached_key(|r| key(r));
        } else {
            self.rows.sort_by_cached_key(|r| std::cmp::Reverse(key(r)));
        }
    }

    fn spill(&mut self) -> Result<()> {
        self.sort();
        let mut w = crate::spill::RunWriter::new()?;
        for r in &self.rows {
            w.push(r)?;
        }
        self.rows.clear();
        self.runs.push(w.finish()?);
        Ok(())
    }
}

/// A run's next row in a sort's merge, ordered so that the heap's top comes first.
struct Head<K> {
    key: K,
    run: usize,
    ascending: bool,
}

impl<K: Ord> PartialEq for Head<K> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl<K: Ord> Eq for Head<K> {}
impl<K: Ord> PartialOrd for Head<K> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<K: Ord> Ord for Head<K> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap pops the greatest: the smallest key (ascending) or the largest,
        // earlier runs first among equals (runs hold rows in arrival order).
        let by_key = if self.ascending {
            o.key.cmp(&self.key)
        } else {
            self.key.cmp(&o.key)
        };
        by_key.then(o.run.cmp(&self.run))
    }
}

impl<T: Data, K: Ord, Kf: Fn(&T) -> K> ShuffleReader for SortReader<T, K, Kf> {
    fn push(&mut self, _side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        let (len, cap) = (self.rows.len(), self.rows.capacity());
        // Growing the buffer holds the old one beside the new while it moves.
        let growth = if cap - len < batch.num_rows() {
            (cap.max(batch.num_rows()) * 2 * std::mem::size_of::<T>()) as u64
        } else {
            0
        };
        if len >= MIN_HELD && crate::spill::over_budget(growth) {
            self.spill()?;
        }
        self.rows.extend(rows::decode_rows::<T>(batch)?);
        Ok(None)
    }

    fn finish(mut self: Box<Self>, emit: &mut Emit<'_>) -> Result<()> {
        if self.runs.is_empty() {
            self.sort();
            return emit_batches(std::mem::take(&mut self.rows), emit);
        }
        self.spill()?;
        let key: Kf = conjure();
        let mut runs = std::mem::take(&mut self.runs);
        let mut heads: Vec<Option<T>> = Vec::with_capacity(runs.len());
        let mut heap = std::collections::BinaryHeap::with_capacity(runs.len());
        for (i, r) in runs.iter_mut().enumerate() {
            let h = r.next()?;
            if let Some(row) = &h {
                heap.push(Head {
                    key: key(row),
                    run: i,
                    ascending: self.ascending,
                });
            }
            heads.push(h);
        }
        let mut out = Vec::with_capacity(BATCH_ROWS);
        while let Some(Head { run, .. }) = heap.pop() {
            let row = heads[run].take().expect("a head in the heap has its row");
            out.push(row);
            if let Some(next) = runs[run].next()? {
                heap.push(Head {
                    key: key(&next),
                    run,
                    ascending: self.ascending,
                });
                heads[run] = Some(next);
            }
            emit_full(&mut out, emit)?;
        }
        emit(Rows::new(out))
    }
}

pub(crate) fn new_sort_reader<T: Data, K: Ord + 'static, Kf: Fn(&T) -> K + 'static>(
    arg: &[u8],
) -> Result<Box<dyn ShuffleReader>> {
    Ok(Box::new(SortReader::<T, K, Kf> {
        ascending: capture(arg)?,
        rows: Vec::new(),
        runs: Vec::new(),
        _f: PhantomData,
    }))
}

/// The values of one key on each side of a cogroup.
type Groups<V, W> = (Vec<V>, Vec<W>);

/// Where a join hands its output rows, one at a time.
pub(crate) type Out<'a, O> = dyn FnMut(O) -> Result<()> + 'a;

/// Reduce side of a cogroup of two sides: groups both sides' values per key in a
/// [`SpillMap`], then `J` turns each key's groups into output rows (cogroup itself, or a
/// kind of join), handed on in batches as it makes them.
pub(crate) struct CoGroupReader<K, V, W, O, J> {
    state: SpillMap<K, Groups<V, W>>,
    _f: PhantomData<fn(J) -> O>,
}

impl<K, V, W, O, J> ShuffleReader for CoGroupReader<K, V, W, O, J>
where
    K: Key,
    V: Data,
    W: Data,
    O: 'static,
    J: Fn(K, Vec<V>, Vec<W>, &mut Out<'_, O>) -> Result<()>,
{
    fn push(&mut self, side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        self.state.make_room()?;
        let groups = &mut self.state.map;
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
        self.state.finish(
            |mut a, b| {
                a.0.extend(b.0);
                a.1.extend(b.1);
                a
            },
            |k, (vs, ws)| {
                j(k, vs, ws, &mut |o| {
                    out.push(o);
                    emit_full(&mut out, emit)
                })
            },
        )?;
        emit(Rows::new(out))
    }
}

pub(crate) fn new_cogroup_reader<K, V, W, O, J>(_arg: &[u8]) -> Result<Box<dyn ShuffleReader>>
where
    K: Key,
    V: Data,
    W: Data,
    O: 'static,
    J: Fn(K, Vec<V>, Vec<W>, &mut Out<'_, O>) -> Result<()> + 'static,
{
    Ok(Box::new(CoGroupReader::<K, V, W, O, J> {
        state: SpillMap::new(),
        _f: PhantomData,
    }))
}

/// The probe of a broadcast hash join: rows `(K, S)` of the streamed side, each looked up
/// in a hash table of the build side's `(K, B)` rows (read whole from the host when the
/// op is made), and `P` makes the join's rows of a streamed row and its key's build
/// values. Its output goes on a batch at a time, as `flat_map`'s.
pub(crate) struct ProbeOp<K, S, B, O, P> {
    table: hash::Map<K, Built<B>>,
    input: std::vec::IntoIter<(K, S)>,
    _f: PhantomData<fn(P) -> O>,
}

impl<K, S, B, O, P> Operator for ProbeOp<K, S, B, O, P>
where
    K: Key,
    S: 'static,
    B: 'static,
    O: 'static,
    P: Fn(K, S, &[B], &mut Out<'_, O>) -> Result<()>,
{
    fn push(&mut self, rows: Rows) -> Result<Rows> {
        self.input = rows.take::<(K, S)>()?.into_iter();
        Ok(self.next()?.unwrap_or_else(|| Rows::new(Vec::<O>::new())))
    }

    fn next(&mut self) -> Result<Option<Rows>> {
        let p: P = conjure();
        let mut out = Vec::with_capacity(BATCH_ROWS.min(self.input.len()).max(1));
        for (k, s) in self.input.by_ref() {
            let built = self.table.get(&k).map_or(&[][..], Built::as_slice);
            p(k, s, built, &mut |o| {
                out.push(o);
                Ok(())
            })?;
            if out.len() >= BATCH_ROWS {
                return Ok(Some(Rows::new(out)));
            }
        }
        Ok((!out.is_empty()).then(|| Rows::new(out)))
    }
}

/// A key's rows of a join's build side: most keys of a dimension have one, kept in the
/// table itself (a probe then reads one place of memory, not two).
enum Built<B> {
    One(B),
    Many(Vec<B>),
}

impl<B> Built<B> {
    fn as_slice(&self) -> &[B] {
        match self {
            Built::One(b) => std::slice::from_ref(b),
            Built::Many(v) => v,
        }
    }

    fn push(&mut self, b: B) {
        *self = match std::mem::replace(self, Built::Many(Vec::new())) {
            Built::One(a) => Built::Many(vec![a, b]),
            Built::Many(mut v) => {
                v.push(b);
                Built::Many(v)
            }
        };
    }
}

/// The probe op of a broadcast hash join by `P`, as the plan names it.
pub(crate) fn probe_op<K, S, B, O, P>(p: P) -> usize
where
    K: Key,
    S: Data,
    B: Data,
    O: 'static,
    P: Fn(K, S, &[B], &mut Out<'_, O>) -> Result<()> + Copy + 'static,
{
    let _ = p;
    new_probe_op::<K, S, B, O, P> as crate::task::NewOpFn as usize
}

fn new_probe_op<K, S, B, O, P>(arg: &[u8]) -> Result<Box<dyn Operator>>
where
    K: Key,
    S: Data,
    B: Data,
    O: 'static,
    P: Fn(K, S, &[B], &mut Out<'_, O>) -> Result<()> + 'static,
{
    let build = arg
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| crate::Error::msg("a join probe without its build side's index"))?;
    let mut table: hash::Map<K, Built<B>> = hash::Map::default();
    for frame in 0u32.. {
        let Some(bytes) = crate::spill::build_side_frame(build, frame)? else {
            break;
        };
        for batch in rows::read_ipc(bytes)? {
            rows::for_each_pair::<K, B>(&batch, |k, b| match table.entry(k) {
                Entry::Occupied(mut e) => e.get_mut().push(b),
                Entry::Vacant(e) => {
                    e.insert(Built::One(b));
                }
            })?;
        }
        if crate::spill::over_budget(0) {
            return Err(crate::Error::limit(
                "task.memory",
                format!(
                    "the build side of a broadcast hash join holds more than the task's memory budget of {} bytes (a quarter of task.memory); lower join.broadcast_threshold or raise task.memory",
                    crate::spill::budget()
                ),
            ));
        }
    }
    Ok(Box::new(ProbeOp::<K, S, B, O, P> {
        table,
        input: Vec::new().into_iter(),
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
        if self.partition >= self.partitions {
            return Ok(());
        }
        self.rows.extend(rows.take::<T>()?);
        if self.rows.len() >= BATCH_ROWS {
            let rows = std::mem::take(&mut self.rows);
            emit_parts_with([(self.partition, rows)], rows::encode_slice::<T>)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        if self.partition >= self.partitions {
            return Ok(());
        }
        emit_parts_with([(self.partition, self.rows)], rows::encode_slice::<T>)
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
