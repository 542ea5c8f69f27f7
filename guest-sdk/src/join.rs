//! A frame's equi-join (Spark's `df.join(other, Seq("key"))`), a column at a time.
//!
//! Both sides' map sides cut each batch by the hash of its key columns into the
//! partitions' sub-batches (`JoinWriter`); a reduce task builds a table of one side's
//! rows (key → first row, each row → the next row of its key: DuckDB's chained hash
//! table, or a table indexed by the key's value for one integer column spanning few
//! values) and looks each row of the other side up in it, then gathers the matched rows'
//! columns with Arrow's `take`. When one side is small the driver runs it as a broadcast
//! hash join (`FrameProbe`): every task of the large side builds the table of the whole
//! small side and the large side is never shuffled. A reduce side whose sides do not fit
//! the task's memory spills them into buckets by another part of the key's hash and joins
//! bucket by bucket (a grace hash join).

use crate::frame::{Batch, DENSE_SPAN, GroupKey, KeyColumn, KeyValue, column, int_key, widen};
use crate::hash;
use crate::rows::{BATCH_ROWS, Rows};
use crate::spill::{self, RunWriter};
use crate::task::{Operator, ShuffleReader, ShuffleWriter};
use crate::{Error, Result};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_buffer::NullBuffer;
use arrow_schema::{Field, Schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// What a frame's join computes: captured into its map, reduce and probe sides.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JoinSpec {
    /// The key columns, named alike on both sides.
    pub on: Vec<String>,
}

impl JoinSpec {
    /// Why this join cannot run (reported when an action runs it), if it cannot.
    pub(crate) fn refused(&self) -> Option<String> {
        if self.on.is_empty() {
            return Some("join names no key column".into());
        }
        let mut seen = std::collections::HashSet::new();
        self.on
            .iter()
            .find(|k| !seen.insert(*k))
            .map(|k| format!("join names key column `{k}` twice"))
    }
}

/// Where no row is (the end of a chain, a key with no build row).
const NONE: u32 = u32::MAX;

/// The key columns of one batch.
enum Keys<'a> {
    /// One integer column (any but `UInt64`), widened.
    Int(Cow<'a, [i64]>, Option<NullBuffer>),
    /// Any other keys.
    Other(Vec<(&'a str, KeyColumn<'a>, Option<NullBuffer>)>),
}

impl<'a> Keys<'a> {
    fn of(spec: &'a JoinSpec, batch: &'a RecordBatch) -> Result<Keys<'a>> {
        let columns = spec
            .on
            .iter()
            .map(|k| column(batch, k).map(|a| (k.as_str(), a)))
            .collect::<Result<Vec<_>>>()?;
        if let [(_, a)] = columns.as_slice()
            && int_key(a.data_type())
        {
            return Ok(Keys::Int(widen(a), a.logical_nulls()));
        }
        columns
            .into_iter()
            .map(|(k, a)| Ok((k, KeyColumn::of(k, a)?, a.logical_nulls())))
            .collect::<Result<Vec<_>>>()
            .map(Keys::Other)
    }

    /// Whether row `i` has a null key column: it matches nothing, as in SQL.
    fn null(&self, i: usize) -> bool {
        let is_null = |n: &Option<NullBuffer>| n.as_ref().is_some_and(|n| n.is_null(i));
        match self {
            Keys::Int(_, nulls) => is_null(nulls),
            Keys::Other(columns) => columns.iter().any(|(_, _, nulls)| is_null(nulls)),
        }
    }

    /// Row `i`'s key (not null) into `key` (a buffer the caller keeps, so that a row
    /// costs no allocation), as both sides compare it: an unsigned integer that fits
    /// `i64` is that integer.
    fn key_into(&self, i: usize, key: &mut GroupKey) -> Result<()> {
        key.clear();
        match self {
            Keys::Int(values, _) => key.push(KeyValue::Int(values[i])),
            Keys::Other(columns) => {
                for (name, c, _) in columns {
                    let v = c.value(i).map_err(|e| {
                        e.context(format!("join column `{name}` (row {i} of the batch)"))
                    })?;
                    key.push(match v {
                        KeyValue::UInt(u) if i64::try_from(u).is_ok() => KeyValue::Int(u as i64),
                        v => v,
                    });
                }
            }
        }
        Ok(())
    }

    /// The hash of row `i`'s key (not null; `key` a buffer as for [`Keys::key_into`]):
    /// equal keys hash alike on both sides whatever their integer widths.
    fn hash(&self, i: usize, key: &mut GroupKey) -> Result<u64> {
        Ok(match self {
            Keys::Int(values, _) => hash::hash_of(&[KeyValue::Int(values[i])]),
            Keys::Other(_) => {
                self.key_into(i, key)?;
                hash::hash_of(key)
            }
        })
    }

    /// Row numbers of `batch` (of `rows`) by part of their keys' hash: `part(hash)` of
    /// `parts`; rows with a null key are in none.
    fn cut(&self, rows: usize, parts: usize, part: impl Fn(u64) -> usize) -> Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::new(); parts];
        let mut key = Vec::new();
        for i in 0..rows {
            if !self.null(i) {
                out[part(self.hash(i, &mut key)?)].push(i as u32);
            }
        }
        Ok(out)
    }
}

/// The reduce partition of a key's hash (as [`crate::ops::partition_of`] places keys).
fn partition(hash: u64, partitions: usize) -> usize {
    ((hash as u128 * partitions as u128) >> 64) as usize
}

/// The spill bucket of a key's hash at `level` of splitting: four of its low bits, the
/// next four at each level (a reduce partition's keys share the high ones).
fn bucket(hash: u64, level: u32) -> usize {
    (hash >> (4 * level)) as usize & (BUCKETS - 1)
}

/// The rows `ix` of `batch` (the batch itself when that is all of them).
fn select(batch: &RecordBatch, ix: Vec<u32>) -> Result<RecordBatch> {
    if ix.len() == batch.num_rows() && ix.iter().enumerate().all(|(i, &r)| r as usize == i) {
        return Ok(batch.clone());
    }
    Ok(arrow_select::take::take_record_batch(
        batch,
        &UInt32Array::from(ix),
    )?)
}

/// Batches of one schema as one (an error naming the join's side if their columns
/// differ: files typing a column differently).
fn concat(batches: &[RecordBatch], what: &str) -> Result<RecordBatch> {
    let schema = batches[0].schema();
    arrow_select::concat::concat_batches(&schema, batches).map_err(|e| {
        Error::msg(format!(
            "{what} of a join: its batches type their columns differently ({e})"
        ))
        .bad_input()
    })
}

// ---------------------------------------------------------------- map side

/// Map side of either side of a frame's join: each batch's rows with a key go into their
/// partition's sub-batch (rows with a null key match nothing and go nowhere), handed on
/// when a partition holds a batch's worth or the task reaches its memory budget.
struct JoinWriter {
    spec: JoinSpec,
    parts: Vec<Vec<RecordBatch>>,
    rows: Vec<usize>,
    held: usize,
}

pub(crate) fn new_join_writer(arg: &[u8], partitions: u32) -> Result<Box<dyn ShuffleWriter>> {
    let spec: JoinSpec = crate::ops::capture(arg)?;
    let n = partitions.max(1) as usize;
    Ok(Box::new(JoinWriter {
        spec,
        parts: vec![Vec::new(); n],
        rows: vec![0; n],
        held: 0,
    }))
}

impl JoinWriter {
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = self.parts.len();
        let cut = Keys::of(&self.spec, batch)?.cut(batch.num_rows(), n, |h| partition(h, n))?;
        for (p, ix) in cut.into_iter().enumerate() {
            if ix.is_empty() {
                continue;
            }
            let sub = select(batch, ix)?;
            if self.parts[p]
                .first()
                .is_some_and(|b| b.schema() != sub.schema())
            {
                self.flush(p)?;
            }
            self.rows[p] += sub.num_rows();
            self.held += sub.num_rows();
            self.parts[p].push(sub);
            if self.rows[p] >= BATCH_ROWS {
                self.flush(p)?;
            }
        }
        Ok(())
    }

    /// Hands partition `p`'s rows on as one batch.
    fn flush(&mut self, p: usize) -> Result<()> {
        let batches = std::mem::take(&mut self.parts[p]);
        self.held -= std::mem::take(&mut self.rows[p]);
        if batches.is_empty() {
            return Ok(());
        }
        spill::emit_batch(p as u32, &concat(&batches, "a side")?)
    }
}

impl ShuffleWriter for JoinWriter {
    fn push(&mut self, rows: Rows) -> Result<()> {
        for b in rows.take::<Batch>()? {
            self.add(&b.0)?;
        }
        if self.held >= crate::ops::MIN_HELD && spill::over_budget(0) {
            for p in 0..self.parts.len() {
                self.flush(p)?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        for p in 0..self.parts.len() {
            self.flush(p)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- the table

/// Where each key's first row of the built side is.
enum Index {
    /// One integer column spanning few values: the row of `base + i` at `i`.
    Dense {
        base: i64,
        first: Vec<u32>,
    },
    Int(hash::Map<i64, u32>),
    Keys(hash::Map<GroupKey, u32>),
}

/// One side's rows, built into a table to look the other side's keys up in.
struct Table {
    rows: RecordBatch,
    index: Index,
    /// Each row's next row of the same key ([`NONE`] at a chain's end).
    next: Vec<u32>,
    /// Whether no key has two rows (the output of a probe batch is then at most as long).
    unique: bool,
}

/// `column` with each value of its text dictionary kept once, if it is one that repeats
/// values: a built side concatenated from batches of several dictionaries (a Parquet
/// file's row groups) lists each value once per dictionary, and a group-by over the
/// join's output merges once per dictionary value of each batch (the peers' dim: 260
/// values for 20 regions). Anything else is returned as it is.
fn one_of_each_value(column: &ArrayRef) -> ArrayRef {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int32Type;
    let Some(d) = column.as_dictionary_opt::<Int32Type>() else {
        return column.clone();
    };
    let Some(values) = d.values().as_string_opt::<i32>() else {
        return column.clone();
    };
    if values.null_count() > 0 {
        return column.clone();
    }
    let mut index: hash::Map<&str, i32> = hash::Map::default();
    let mut kept = Vec::new();
    let renumbered: Vec<i32> = (0..values.len())
        .map(|i| {
            let v = values.value(i);
            *index.entry(v).or_insert_with(|| {
                kept.push(v);
                kept.len() as i32 - 1
            })
        })
        .collect();
    if kept.len() == values.len() {
        return column.clone();
    }
    // An index out of the dictionary (a null row's may be anything) leaves the column
    // as it is, for the checks downstream to find.
    let Some(keys) = d
        .keys()
        .values()
        .iter()
        .map(|&k| renumbered.get(k as u32 as usize).copied())
        .collect::<Option<Vec<i32>>>()
    else {
        return column.clone();
    };
    let keys = arrow_array::Int32Array::new(keys.into(), d.keys().nulls().cloned());
    let values = Arc::new(arrow_array::StringArray::from(kept));
    match arrow_array::DictionaryArray::<Int32Type>::try_new(keys, values) {
        Ok(d) => Arc::new(d),
        Err(_) => column.clone(),
    }
}

impl Table {
    /// The table of `batches` (`None` when there are none: nothing matches).
    fn build(spec: &JoinSpec, batches: &[RecordBatch]) -> Result<Option<Table>> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(None);
        }
        let rows = concat(batches, "the built side")?;
        let rows = RecordBatch::try_new(
            rows.schema(),
            rows.columns().iter().map(one_of_each_value).collect(),
        )?;
        let n = rows.num_rows();
        if n >= NONE as usize {
            return Err(Error::limit(
                "task.memory",
                format!("the built side of a join holds {n} rows, more than a table holds"),
            ));
        }
        let keys = Keys::of(spec, &rows)?;
        let mut next = vec![NONE; n];
        // Rows go in last to first, so that each chain lists its rows in order.
        let mut link = |slot: &mut u32, i: usize| {
            next[i] = *slot;
            *slot = i as u32;
        };
        let index = match &keys {
            Keys::Int(values, _) => {
                let live = || (0..n).filter(|&i| !keys.null(i)).map(|i| values[i]);
                let span = match (live().min(), live().max()) {
                    (Some(lo), Some(hi)) => Some((lo, hi as i128 - lo as i128 + 1)),
                    _ => None,
                };
                match span {
                    // A table indexed by value while it is small beside the rows too.
                    Some((lo, span)) if span <= DENSE_SPAN.min(8 * n as i128 + 1024) => {
                        let mut first = vec![NONE; span as usize];
                        for i in (0..n).rev().filter(|&i| !keys.null(i)) {
                            link(&mut first[(values[i] - lo) as usize], i);
                        }
                        Index::Dense { base: lo, first }
                    }
                    _ => {
                        let mut map = hash::Map::default();
                        for i in (0..n).rev().filter(|&i| !keys.null(i)) {
                            link(map.entry(values[i]).or_insert(NONE), i);
                        }
                        Index::Int(map)
                    }
                }
            }
            Keys::Other(_) => {
                let mut map: hash::Map<GroupKey, u32> = hash::Map::default();
                for i in (0..n).rev().filter(|&i| !keys.null(i)) {
                    let mut key = Vec::new();
                    keys.key_into(i, &mut key)?;
                    match map.entry(key) {
                        Entry::Occupied(mut e) => link(e.get_mut(), i),
                        Entry::Vacant(e) => {
                            e.insert(i as u32);
                        }
                    }
                }
                Index::Keys(map)
            }
        };
        let unique = next.iter().all(|&r| r == NONE);
        Ok(Some(Table {
            rows,
            index,
            next,
            unique,
        }))
    }

    /// The first built row of each row of `keys` (of `n` rows), [`NONE`] where none.
    fn firsts(&self, keys: &Keys<'_>, n: usize) -> Result<Vec<u32>> {
        let mut out = vec![NONE; n];
        match (&self.index, keys) {
            (Index::Dense { base, first }, Keys::Int(values, nulls)) => {
                let base = *base;
                for (i, (o, &v)) in out.iter_mut().zip(values.iter()).enumerate() {
                    let at = v.wrapping_sub(base) as u64;
                    if at < first.len() as u64 && nulls.as_ref().is_none_or(|n| n.is_valid(i)) {
                        *o = first[at as usize];
                    }
                }
            }
            (Index::Int(map), Keys::Int(values, nulls)) => {
                for (i, (o, v)) in out.iter_mut().zip(values.iter()).enumerate() {
                    if nulls.as_ref().is_none_or(|n| n.is_valid(i)) {
                        *o = map.get(v).copied().unwrap_or(NONE);
                    }
                }
            }
            // The sides' key columns differ in kind: compared as values.
            (index, keys) => {
                let mut key = Vec::new();
                for (i, o) in out.iter_mut().enumerate() {
                    if keys.null(i) {
                        continue;
                    }
                    keys.key_into(i, &mut key)?;
                    *o = match (index, key.as_slice()) {
                        (Index::Keys(map), _) => map.get(&key).copied(),
                        (Index::Int(map), [KeyValue::Int(v)]) => map.get(v).copied(),
                        (Index::Dense { base, first }, [KeyValue::Int(v)]) => {
                            usize::try_from(v.wrapping_sub(*base) as u64)
                                .ok()
                                .and_then(|at| first.get(at).copied())
                        }
                        _ => None,
                    }
                    .unwrap_or(NONE);
                }
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------- probing

/// One batch of the probed side being matched, resumable: its output goes on at most
/// [`BATCH_ROWS`] rows at a time, however many rows a key has on the built side.
struct Cursor {
    batch: RecordBatch,
    firsts: Vec<u32>,
    row: usize,
    /// The next built row of `row`'s chain when its output was cut short.
    chain: u32,
}

/// Matches the rows of the probed side's batches against a built table and makes the
/// joined batches: the key columns, the left side's other columns, the right side's.
struct Prober {
    spec: JoinSpec,
    /// Whether the probed side is the join's left one.
    probe_left: bool,
    table: Option<Table>,
    cursor: Option<Cursor>,
}

impl Prober {
    /// A prober of the table of `built` (the left side's rows when `probe_left` is not).
    fn new(spec: JoinSpec, built: &[RecordBatch], probe_left: bool) -> Result<Prober> {
        Ok(Prober {
            table: Table::build(&spec, built)?,
            spec,
            probe_left,
            cursor: None,
        })
    }

    /// Starts on `batch` (the last one must be done).
    fn start(&mut self, batch: RecordBatch) -> Result<()> {
        let Some(table) = &self.table else {
            return Ok(());
        };
        let firsts = table.firsts(&Keys::of(&self.spec, &batch)?, batch.num_rows())?;
        self.cursor = Some(Cursor {
            batch,
            firsts,
            row: 0,
            chain: NONE,
        });
        Ok(())
    }

    /// The next joined batch of the current probe batch, if it has more.
    fn next(&mut self) -> Result<Option<RecordBatch>> {
        let (Some(table), Some(c)) = (&self.table, &mut self.cursor) else {
            return Ok(None);
        };
        let n = c.batch.num_rows();
        if table.unique {
            // Each row matches at most one built row: the output is no longer than the
            // batch, and when every row matches, the batch's own columns with the
            // built rows in `firsts` (nothing of the batch is copied).
            let c = self.cursor.take().expect("a cursor");
            let firsts = c.firsts;
            let (probe, built) = if firsts.iter().all(|&r| r != NONE) {
                (None, firsts)
            } else {
                let probe: Vec<u32> = (0..n as u32)
                    .filter(|&i| firsts[i as usize] != NONE)
                    .collect();
                let built = firsts.into_iter().filter(|&r| r != NONE).collect();
                (Some(probe), built)
            };
            if built.is_empty() {
                return Ok(None);
            }
            let probe = probe.map(UInt32Array::from);
            return self
                .joined(&c.batch, probe.as_ref(), &UInt32Array::from(built))
                .map(Some);
        }
        let (mut probe, mut built) = (Vec::new(), Vec::new());
        while c.row < n && probe.len() < BATCH_ROWS {
            let mut r = if c.chain != NONE {
                c.chain
            } else {
                c.firsts[c.row]
            };
            while r != NONE && probe.len() < BATCH_ROWS {
                probe.push(c.row as u32);
                built.push(r);
                r = table.next[r as usize];
            }
            c.chain = r;
            if r == NONE {
                c.row += 1;
            }
        }
        if probe.is_empty() {
            self.cursor = None;
            return Ok(None);
        }
        let batch = c.batch.clone();
        if c.row >= n {
            self.cursor = None;
        }
        self.joined(
            &batch,
            Some(&UInt32Array::from(probe)),
            &UInt32Array::from(built),
        )
        .map(Some)
    }

    /// The joined rows: row `probe[i]` of `batch` (row `i` when `probe` is `None`) with
    /// built row `built[i]`. The key columns come first (the left side's), then each
    /// side's other columns; only the columns the output holds are gathered.
    fn joined(
        &self,
        batch: &RecordBatch,
        probe: Option<&UInt32Array>,
        built: &UInt32Array,
    ) -> Result<RecordBatch> {
        let table = self.table.as_ref().expect("a table");
        let probed = (batch, probe);
        let built = (&table.rows, Some(built));
        let (left, right) = if self.probe_left {
            (probed, built)
        } else {
            (built, probed)
        };
        let spec = &self.spec;
        let gather =
            |(b, ix): (&RecordBatch, Option<&UInt32Array>), i: usize| -> Result<ArrayRef> {
                Ok(match ix {
                    Some(ix) => arrow_select::take::take(b.column(i), ix, None)?,
                    None => b.column(i).clone(),
                })
            };
        let mut fields: Vec<Arc<Field>> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let (ls, rs) = (left.0.schema(), right.0.schema());
        for k in &spec.on {
            let (i, f) = ls.column_with_name(k).expect("the key columns were found");
            fields.push(Arc::new(f.clone()));
            columns.push(gather(left, i)?);
        }
        let is_key = |f: &Field| spec.on.iter().any(|k| k == f.name());
        for (i, f) in ls.fields().iter().enumerate() {
            if !is_key(f) {
                fields.push(f.clone());
                columns.push(gather(left, i)?);
            }
        }
        for (i, f) in rs.fields().iter().enumerate() {
            if is_key(f) {
                continue;
            }
            if ls.column_with_name(f.name()).is_some() {
                return Err(Error::msg(format!(
                    "both sides of a join have a column `{}` that is not a join key: read or compute it under another name on one side",
                    f.name()
                ))
                .bad_input());
            }
            fields.push(f.clone());
            columns.push(gather(right, i)?);
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

// ---------------------------------------------------------------- broadcast hash join

/// What a broadcast probe captures besides its build side's index.
#[derive(Serialize, Deserialize)]
pub(crate) struct ProbeSpec {
    pub spec: JoinSpec,
    /// The side streamed through the table (0: left, 1: right).
    pub stream: u32,
}

/// The probe of a broadcast hash join of frames: the streamed side's batches looked up
/// in the table of the whole build side, read from the host when the op is made.
struct FrameProbe {
    prober: Prober,
    input: VecDeque<RecordBatch>,
}

pub(crate) fn new_frame_probe(arg: &[u8]) -> Result<Box<dyn Operator>> {
    let (build, rest) = arg
        .split_first_chunk::<4>()
        .ok_or_else(|| Error::msg("a join probe without its build side's index"))?;
    let p: ProbeSpec = crate::ops::capture(rest)?;
    let mut batches = Vec::new();
    for frame in 0u32.. {
        let Some(bytes) = spill::build_side_frame(u32::from_le_bytes(*build), frame)? else {
            break;
        };
        batches.extend(crate::rows::read_ipc(bytes)?);
        if spill::over_budget(0) {
            return Err(Error::limit(
                "task.memory",
                format!(
                    "the build side of a broadcast hash join holds more than the task's memory budget of {} bytes (a quarter of task.memory); lower join.broadcast_threshold or raise task.memory",
                    spill::budget()
                ),
            ));
        }
    }
    Ok(Box::new(FrameProbe {
        prober: Prober::new(p.spec, &batches, p.stream == 0)?,
        input: VecDeque::new(),
    }))
}

impl Operator for FrameProbe {
    fn push(&mut self, rows: Rows) -> Result<Rows> {
        self.input
            .extend(rows.take::<Batch>()?.into_iter().map(|b| b.0));
        Ok(self
            .next()?
            .unwrap_or_else(|| Rows::new(Vec::<Batch>::new())))
    }

    fn next(&mut self) -> Result<Option<Rows>> {
        loop {
            if let Some(out) = self.prober.next()? {
                return Ok(Some(Rows::new(vec![Batch(out)])));
            }
            match self.input.pop_front() {
                Some(b) => self.prober.start(b)?,
                None => return Ok(None),
            }
        }
    }
}

// ---------------------------------------------------------------- shuffled hash join

/// Spill buckets per side of a reduce side that does not fit its memory (four bits of
/// the key's hash).
const BUCKETS: usize = 16;
/// How many times a bucket whose built side still does not fit is split again (16^4
/// buckets at most; past that, its rows share a few keys and splitting cannot help).
const MAX_LEVEL: u32 = 4;

/// Both sides' spill runs of one bucket, with their row counts.
struct Bucket {
    runs: [RunWriter<Batch>; 2],
    rows: [u64; 2],
}

impl Bucket {
    fn new() -> Result<Bucket> {
        Ok(Bucket {
            runs: [RunWriter::new()?, RunWriter::new()?],
            rows: [0, 0],
        })
    }
}

/// `batch`'s rows of `side` into `buckets` by their keys' hash at `level`.
fn route(
    spec: &JoinSpec,
    buckets: &mut [Bucket],
    level: u32,
    side: usize,
    batch: &RecordBatch,
) -> Result<()> {
    let cut = Keys::of(spec, batch)?.cut(batch.num_rows(), BUCKETS, |h| bucket(h, level))?;
    for (b, ix) in cut.into_iter().enumerate() {
        if !ix.is_empty() {
            let sub = select(batch, ix)?;
            buckets[b].rows[side] += sub.num_rows() as u64;
            buckets[b].runs[side].push(&Batch(sub))?;
        }
    }
    Ok(())
}

fn new_buckets() -> Result<Vec<Bucket>> {
    (0..BUCKETS).map(|_| Bucket::new()).collect()
}

/// Reduce side of a shuffled frame join: both sides' batches are held (in spill buckets
/// by their keys' hash once they outgrow the task's memory), then the side with fewer
/// rows is built into a table and the other's rows looked up in it, bucket by bucket; a
/// bucket whose built side does not fit either is split again by other bits of the hash.
struct JoinReader {
    spec: JoinSpec,
    held: [Vec<RecordBatch>; 2],
    buckets: Option<Vec<Bucket>>,
}

pub(crate) fn new_join_reader(arg: &[u8]) -> Result<Box<dyn ShuffleReader>> {
    Ok(Box::new(JoinReader {
        spec: crate::ops::capture(arg)?,
        held: [Vec::new(), Vec::new()],
        buckets: None,
    }))
}

impl JoinReader {
    /// Joins `build` (of side `build_side`) with the batches `probe` yields.
    fn join(
        &self,
        build: &[RecordBatch],
        build_side: usize,
        mut probe: impl FnMut() -> Result<Option<RecordBatch>>,
        emit: &mut crate::ops::Emit<'_>,
    ) -> Result<()> {
        let mut prober = Prober::new(self.spec.clone(), build, build_side == 1)?;
        if prober.table.is_none() {
            return Ok(());
        }
        while let Some(b) = probe()? {
            prober.start(b)?;
            while let Some(out) = prober.next()? {
                emit(Rows::new(vec![Batch(out)]))?;
            }
        }
        Ok(())
    }

    /// Joins each bucket (split at `level`) in turn.
    fn join_buckets(
        &self,
        buckets: Vec<Bucket>,
        level: u32,
        emit: &mut crate::ops::Emit<'_>,
    ) -> Result<()> {
        for Bucket { runs, rows } in buckets {
            let side = if rows[1] <= rows[0] { 1 } else { 0 };
            let [left, right] = runs;
            let (build, probe) = if side == 1 {
                (right, left)
            } else {
                (left, right)
            };
            // The built side fits when it takes at most half the budget (its table
            // takes about as much again); what the task held before (the other
            // buckets' write buffers) does not count against it.
            let base = spill::used();
            let outgrown = || spill::used().saturating_sub(base) > spill::budget() / 2;
            let mut build = build.finish()?;
            let mut batches = Vec::new();
            while let Some(b) = build.next()? {
                batches.push(b.0);
                if outgrown() {
                    break;
                }
            }
            if !outgrown() {
                let mut probe = probe.finish()?;
                self.join(&batches, side, || Ok(probe.next()?.map(|b| b.0)), emit)?;
                continue;
            }
            if level + 1 >= MAX_LEVEL {
                return Err(Error::limit(
                    "task.memory",
                    format!(
                        "a join's partition still holds more rows on each side than the task's memory budget of {} bytes takes after splitting it {MAX_LEVEL} times by key (a few keys with that many rows?); raise task.memory",
                        spill::budget()
                    ),
                ));
            }
            // Split this bucket again: what was read, the rest of its built side, and
            // its other side.
            let mut split = new_buckets()?;
            for b in batches {
                route(&self.spec, &mut split, level + 1, side, &b)?;
            }
            while let Some(b) = build.next()? {
                route(&self.spec, &mut split, level + 1, side, &b.0)?;
            }
            let mut probe = probe.finish()?;
            while let Some(b) = probe.next()? {
                route(&self.spec, &mut split, level + 1, 1 - side, &b.0)?;
            }
            drop((build, probe));
            self.join_buckets(split, level + 1, emit)?;
        }
        Ok(())
    }
}

impl ShuffleReader for JoinReader {
    fn push(&mut self, side: u32, batch: &RecordBatch) -> Result<Option<Rows>> {
        let side = (side as usize).min(1);
        if let Some(buckets) = &mut self.buckets {
            route(&self.spec, buckets, 0, side, batch)?;
        } else {
            self.held[side].push(batch.clone());
            if spill::over_budget(0) {
                // Into spill buckets: what is held, then every later batch.
                let mut buckets = new_buckets()?;
                for (s, held) in std::mem::take(&mut self.held).into_iter().enumerate() {
                    for b in held {
                        route(&self.spec, &mut buckets, 0, s, &b)?;
                    }
                }
                self.buckets = Some(buckets);
            }
        }
        Ok(None)
    }

    fn finish(mut self: Box<Self>, emit: &mut crate::ops::Emit<'_>) -> Result<()> {
        if let Some(buckets) = self.buckets.take() {
            return self.join_buckets(buckets, 0, emit);
        }
        let [left, right] = std::mem::take(&mut self.held);
        let rows = |s: &[RecordBatch]| s.iter().map(RecordBatch::num_rows).sum::<usize>();
        let (build, side, mut probe) = if rows(&right) <= rows(&left) {
            (right, 1, left.into_iter())
        } else {
            (left, 0, right.into_iter())
        };
        self.join(&build, side, || Ok(probe.next()), emit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    use arrow_array::{DictionaryArray, Int32Array, Int64Array, StringArray, UInt64Array};
    use arrow_schema::DataType;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    fn spec(on: &[&str]) -> JoinSpec {
        JoinSpec {
            on: on.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn cell(c: &ArrayRef, i: usize) -> String {
        if c.is_null(i) {
            return "null".into();
        }
        match c.data_type() {
            DataType::Int64 => c.as_primitive::<Int64Type>().value(i).to_string(),
            DataType::Int32 => c.as_primitive::<Int32Type>().value(i).to_string(),
            DataType::Utf8 => c.as_string::<i32>().value(i).to_string(),
            DataType::Dictionary(..) => {
                let d = c.as_dictionary::<Int32Type>();
                let k = d.keys().value(i) as usize;
                d.values().as_string::<i32>().value(k).to_string()
            }
            t => panic!("unexpected {t}"),
        }
    }

    /// Each row as `name=value …`.
    fn render(b: &RecordBatch) -> Vec<String> {
        (0..b.num_rows())
            .map(|i| {
                let s = b.schema();
                s.fields()
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| format!("{}={}", f.name(), cell(c, i)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    /// The join of `left` and `right` as a task makes it with a table of side
    /// `build_side`: its rows rendered, sorted.
    fn join(
        on: &[&str],
        left: &[RecordBatch],
        right: &[RecordBatch],
        build_side: usize,
    ) -> Result<Vec<String>> {
        let spec = spec(on);
        let (build, probe) = if build_side == 1 {
            (right, left)
        } else {
            (left, right)
        };
        let mut prober = Prober::new(spec, build, build_side == 1)?;
        let mut out = Vec::new();
        for b in probe {
            prober.start(b.clone())?;
            while let Some(o) = prober.next()? {
                assert!(o.num_rows() <= BATCH_ROWS && o.num_rows() > 0);
                out.extend(render(&o));
            }
        }
        out.sort();
        Ok(out)
    }

    #[test]
    fn a_built_side_of_several_dictionaries_keeps_each_value_once() {
        let dict = |keys: Vec<Option<i32>>, values: Vec<&str>| -> ArrayRef {
            Arc::new(
                DictionaryArray::<Int32Type>::try_new(
                    Int32Array::from(keys),
                    Arc::new(StringArray::from(values)),
                )
                .unwrap(),
            )
        };
        // (More rows than dictionary values: Arrow's own concatenation then keeps both
        // dictionaries whole.)
        let dim = [
            batch(vec![
                ("key", Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6]))),
                (
                    "region",
                    dict(
                        vec![Some(0), Some(1), None, Some(0), Some(1), Some(0)],
                        vec!["north", "south"],
                    ),
                ),
            ]),
            batch(vec![
                ("key", Arc::new(Int64Array::from(vec![7, 8, 9, 10]))),
                (
                    "region",
                    dict(
                        vec![Some(1), Some(2), Some(0), Some(1)],
                        vec!["south", "north", "east"],
                    ),
                ),
            ]),
        ];
        let facts = [batch(vec![(
            "key",
            Arc::new(Int64Array::from(vec![8, 7, 3, 2, 1, 99])),
        )])];
        let mut prober = Prober::new(spec(&["key"]), &dim, true).unwrap();
        prober.start(facts[0].clone()).unwrap();
        let out = prober.next().unwrap().unwrap();
        assert!(prober.next().unwrap().is_none());
        assert_eq!(
            render(&out),
            [
                "key=8 region=east",
                "key=7 region=north",
                "key=3 region=null",
                "key=2 region=south",
                "key=1 region=north",
            ]
        );
        let region = out
            .column_by_name("region")
            .unwrap()
            .as_dictionary::<Int32Type>();
        assert_eq!(region.values().len(), 3, "north, south, east: once each");
    }

    /// Both ways round, which must agree.
    fn both(on: &[&str], left: &[RecordBatch], right: &[RecordBatch]) -> Vec<String> {
        let a = join(on, left, right, 1).unwrap();
        assert_eq!(a, join(on, left, right, 0).unwrap());
        a
    }

    #[test]
    fn integer_keys_of_other_widths_with_nulls_and_repeats() {
        let left = batch(vec![
            (
                "k",
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(2),
                    None,
                    Some(3),
                    Some(2),
                ])),
            ),
            ("a", Arc::new(Int64Array::from(vec![10, 20, 30, 40, 50]))),
        ]);
        let want = vec![
            "k=2 a=20 b=100",
            "k=2 a=20 b=300",
            "k=2 a=50 b=100",
            "k=2 a=50 b=300",
            "k=3 a=40 b=200",
        ];
        // Keys spanning few values (a table indexed by value), then far apart (a map).
        for far in [9, 1 << 40] {
            let right = batch(vec![
                (
                    "k",
                    Arc::new(Int64Array::from(vec![
                        Some(2),
                        Some(3),
                        Some(2),
                        Some(far),
                        None,
                    ])) as ArrayRef,
                ),
                (
                    "b",
                    Arc::new(Int64Array::from(vec![100, 200, 300, 400, 500])),
                ),
            ]);
            assert_eq!(
                both(&["k"], std::slice::from_ref(&left), &[right]),
                want,
                "far {far}"
            );
        }
        // An `Int32` key on one side and a `UInt64` one on the other match `Int64` keys.
        let narrow = batch(vec![
            ("k", Arc::new(Int32Array::from(vec![2, 3, 2])) as ArrayRef),
            ("b", Arc::new(Int64Array::from(vec![100, 200, 300]))),
        ]);
        assert_eq!(
            both(
                &["k"],
                std::slice::from_ref(&left),
                std::slice::from_ref(&narrow)
            ),
            want
        );
        let unsigned = batch(vec![
            (
                "k",
                Arc::new(UInt64Array::from(vec![2, 3, 2, u64::MAX])) as ArrayRef,
            ),
            ("b", Arc::new(Int64Array::from(vec![100, 200, 300, 400]))),
        ]);
        assert_eq!(
            both(
                &["k"],
                std::slice::from_ref(&left),
                std::slice::from_ref(&unsigned)
            ),
            want
        );
        // And they hash alike, so that the map sides place them in one partition.
        let hashes = |b: &RecordBatch, rows: std::ops::Range<usize>| {
            let s = spec(&["k"]);
            let keys = Keys::of(&s, b).unwrap();
            rows.map(|i| keys.hash(i, &mut Vec::new()).unwrap())
                .collect::<Vec<_>>()
        };
        let (l, n, u) = (
            hashes(&left, 3..5),
            hashes(&narrow, 0..2),
            hashes(&unsigned, 0..2),
        );
        assert_eq!((l[0], l[1]), (n[1], n[0]));
        assert_eq!(n, u);
    }

    #[test]
    fn text_keys_match_across_dictionaries_and_plain_text() {
        let left = batch(vec![
            (
                "name",
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    Some("y"),
                    None,
                    Some("z"),
                ])) as ArrayRef,
            ),
            ("a", Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
        ]);
        let dict: DictionaryArray<Int32Type> = vec!["y", "x", "x"].into_iter().collect();
        let right = batch(vec![
            ("name", Arc::new(dict) as ArrayRef),
            ("b", Arc::new(Int64Array::from(vec![7, 8, 9]))),
        ]);
        assert_eq!(
            both(&["name"], &[left], &[right]),
            vec!["name=x a=1 b=8", "name=x a=1 b=9", "name=y a=2 b=7"]
        );
    }

    #[test]
    fn a_key_with_more_rows_than_a_batch_is_joined_in_batches() {
        let n = BATCH_ROWS + BATCH_ROWS / 2;
        let many = batch(vec![
            ("k", Arc::new(Int64Array::from(vec![1; n])) as ArrayRef),
            ("b", Arc::new(Int64Array::from_iter_values(0..n as i64))),
        ]);
        let two = batch(vec![
            ("k", Arc::new(Int64Array::from(vec![1, 1])) as ArrayRef),
            ("a", Arc::new(Int64Array::from(vec![5, 6]))),
        ]);
        for side in [0, 1] {
            let rows = join(
                &["k"],
                std::slice::from_ref(&two),
                std::slice::from_ref(&many),
                side,
            )
            .unwrap();
            assert_eq!(rows.len(), 2 * n, "built side {side}");
            assert!(rows.contains(&format!("k=1 a=6 b={}", n - 1)));
        }
    }

    #[test]
    fn a_column_on_both_sides_that_is_not_a_key_is_an_error_naming_it() {
        let side = |v: i64| {
            batch(vec![
                ("k", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
                ("v", Arc::new(Int64Array::from(vec![v]))),
            ])
        };
        let err = join(&["k"], &[side(1)], &[side(2)], 1).unwrap_err();
        assert!(err.to_string().contains("have a column `v`"), "{err}");
        let err = join(&["missing"], &[side(1)], &[side(2)], 1).unwrap_err();
        assert!(err.to_string().contains("no column `missing`"), "{err}");
        assert!(spec(&[]).refused().is_some());
        assert!(spec(&["k", "k"]).refused().unwrap().contains("`k` twice"));
    }
}
