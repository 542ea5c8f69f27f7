//! Columnar aggregation: [`Frame`], a dataset of Arrow record batches, grouped by named
//! columns and aggregated a column at a time (Spark's `df.groupBy(...).agg(...)`).
//!
//! A typed `Dataset` hands each row to user code, so an aggregation there decodes every
//! row into a struct, calls closures per row and keeps the state the closures define.
//! A frame's aggregation has no user code: the map side turns each batch's key columns
//! into group numbers (a dictionary column once per dictionary value, an integer
//! column through a table indexed by value or a map of integers) and adds each value
//! column into the groups' states in a tight loop over its Arrow slice. The partial states then cross the shuffle as
//! `(key, states)` rows and the reduce side is `combine_by_key`'s, spilling as it does.

use crate::dataset::Dataset;
use crate::hash;
use crate::rows::{self, BATCH_ROWS, Rows};
use crate::{Error, Result, Str};
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, RecordBatch};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One Arrow record batch as a row of a [`Dataset`]. It serializes as an Arrow IPC
/// stream, so that a dataset of batches can be cached, collected or shuffled as any.
#[derive(Clone, Debug)]
pub struct Batch(pub RecordBatch);

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let bytes = rows::ipc_bytes(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Batch, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an Arrow IPC stream")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                v: Vec<u8>,
            ) -> std::result::Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        let bytes = d.deserialize_byte_buf(Bytes)?;
        let mut batches = rows::read_ipc(bytes).map_err(serde::de::Error::custom)?;
        match (batches.pop(), batches.is_empty()) {
            (Some(b), true) => Ok(Batch(b)),
            _ => Err(serde::de::Error::custom(
                "a batch's IPC stream holds one record batch",
            )),
        }
    }
}

/// A source's batch as it arrives: one row of a `Dataset<Batch>`.
pub(crate) fn decode_batch(_arg: &[u8], batch: &RecordBatch) -> Result<Rows> {
    Ok(Rows::new(vec![Batch(batch.clone())]))
}

/// A lazy, partitioned table of Arrow batches, for aggregations that run a column at a
/// time. Made by [`Context::parquet_frame`](crate::Context::parquet_frame) or
/// [`Context::csv_frame`](crate::Context::csv_frame); its rows
/// become a typed [`Dataset`] with [`rows`](Frame::rows).
///
/// ```no_run
/// use flint::{Agg, Str};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Total { category: Str, total: f64, n: i64 }
/// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
/// let totals = ctx
///     .parquet_frame("sales.parquet", &["category", "amount"])?
///     .group_by(["category"])
///     .agg([Agg::sum("amount").alias("total"), Agg::count().alias("n")])
///     .rows::<Total>();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Frame {
    batches: Dataset<Batch>,
}

impl Frame {
    pub(crate) fn new(batches: Dataset<Batch>) -> Frame {
        Frame { batches }
    }

    /// The batches themselves: a closure over whole batches (Spark's `mapInArrow`) is a
    /// `map` of them, and `Frame::from` makes a frame of the result.
    ///
    /// ```no_run
    /// use flint::{Agg, Batch, Frame};
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let frame = ctx.parquet_frame("facts.parquet", &["key", "amount"])?;
    /// // Each batch's first 10 rows.
    /// let heads = Frame::from(frame.batches().map(|b: Batch| Batch(b.0.slice(0, b.0.num_rows().min(10)))));
    /// let sums = heads.group_by(["key"]).agg([Agg::sum("amount")]);
    /// # Ok(()) }
    /// ```
    pub fn batches(&self) -> Dataset<Batch> {
        self.batches.clone()
    }

    /// The rows that pass `p`, a predicate on the source's columns: the host filters
    /// them before the job sees them, and skips Parquet row groups whose statistics rule
    /// out every row (see [`Dataset::filter_columns`]).
    pub fn filter_columns(&self, p: crate::Predicate) -> Frame {
        Frame::new(self.batches.filter_columns(p))
    }

    /// Groups the rows by the values of the named columns (integer, float, boolean or
    /// text columns, text as a dictionary or not); a null key is a group of its own, as
    /// is NaN (`-0.0` groups with `0.0`).
    pub fn group_by<S: Into<String>>(&self, keys: impl IntoIterator<Item = S>) -> GroupedFrame {
        GroupedFrame {
            batches: self.batches.clone(),
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    /// Rows of both frames whose columns `on` are equal (an inner equi-join, Spark's
    /// `df.join(other, Seq("key"))`): the key columns (this frame's), then this frame's
    /// other columns, then `other`'s; a column other than a key may not be on both sides.
    /// A null key matches nothing; integer keys match across widths, float keys group
    /// `-0.0` with `0.0` and NaN with NaN.
    ///
    /// When one side's input is small (`join.broadcast_threshold`) it runs as a
    /// broadcast hash join: each task of the other side looks its rows up in a table of
    /// the whole small side, and the large side is not shuffled. Otherwise both sides
    /// are shuffled by key and each reduce task builds a table of its partition's
    /// smaller side, spilling both sides by key when they do not fit its memory.
    ///
    /// ```no_run
    /// use flint::{col, Agg};
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let facts = ctx.parquet_frame("facts.parquet", &["key", "amount"])?;
    /// let dim = ctx.parquet_frame("dim.parquet", &["key", "region", "weight"])?;
    /// let by_region = facts
    ///     .join(&dim, ["key"])
    ///     .with_column("weighted", col("amount") * col("weight"))
    ///     .group_by(["region"])
    ///     .agg([Agg::count(), Agg::sum("amount"), Agg::sum("weighted")]);
    /// # Ok(()) }
    /// ```
    pub fn join<S: Into<String>>(&self, other: &Frame, on: impl IntoIterator<Item = S>) -> Frame {
        use crate::join::{JoinSpec, ProbeSpec, new_frame_probe, new_join_reader, new_join_writer};
        use crate::task::{NewOpFn, NewReaderFn, NewWriterFn};
        let spec = JoinSpec {
            on: on.into_iter().map(Into::into).collect(),
        };
        if let Some(why) = spec.refused() {
            return Frame::new(Dataset::from_node(crate::dataset::LNode::Invalid(why)));
        }
        let write = new_join_writer as NewWriterFn as usize;
        let probe = new_frame_probe as NewOpFn as usize;
        let probes = (0..2)
            .map(|stream| {
                let spec = spec.clone();
                (stream, probe, ProbeSpec { spec, stream })
            })
            .collect();
        Frame::new(self.batches.shuffle_two(
            &other.batches,
            [(write, &spec), (write, &spec)],
            new_join_reader as NewReaderFn as usize,
            &spec,
            "join",
            probes,
        ))
    }

    /// The rows with a column `name` computed by `expr` (Spark's `withColumn`): added
    /// last, or in place of a column of that name.
    ///
    /// ```no_run
    /// use flint::col;
    /// # fn f(frame: flint::Frame) {
    /// let with_tax = frame.with_column("gross", col("net") * 1.2);
    /// # }
    /// ```
    pub fn with_column(&self, name: &str, expr: impl Into<crate::Expr>) -> Frame {
        let expr = expr.into();
        if expr.depth() > crate::expr::MAX_DEPTH {
            let why = format!(
                "with_column `{name}`: the expression nests deeper than {}",
                crate::expr::MAX_DEPTH
            );
            return Frame::new(Dataset::from_node(crate::dataset::LNode::Invalid(why)));
        }
        Frame::new(self.batches.stream(
            &(name.to_string(), expr),
            with_column,
            |_: &(String, crate::Expr), _: &mut ()| Ok(Vec::new()),
            "with_column",
        ))
    }

    /// The rows as `T`, a struct whose fields name the columns it reads.
    pub fn rows<T: crate::Data>(&self) -> Dataset<T> {
        self.batches.stream(
            &(),
            batches_to_rows::<T>,
            |_: &(), _: &mut ()| Ok(Vec::new()),
            "rows",
        )
    }
}

impl From<Dataset<Batch>> for Frame {
    fn from(batches: Dataset<Batch>) -> Frame {
        Frame::new(batches)
    }
}

fn with_column(
    (name, expr): &(String, crate::Expr),
    _: &mut (),
    batches: Vec<Batch>,
) -> Result<Vec<Batch>> {
    batches
        .into_iter()
        .map(|Batch(b)| {
            let values = expr
                .eval(&b)
                .map_err(|e| e.context(format!("with_column `{name}` = {expr}")))?;
            let field = Arc::new(Field::new(name, values.data_type().clone(), true));
            let schema = b.schema();
            let (mut fields, mut columns): (Vec<_>, Vec<_>) = schema
                .fields()
                .iter()
                .cloned()
                .zip(b.columns().iter().cloned())
                .collect();
            match fields.iter().position(|f| f.name() == name) {
                Some(i) => {
                    fields[i] = field;
                    columns[i] = values;
                }
                None => {
                    fields.push(field);
                    columns.push(values);
                }
            }
            Ok(Batch(RecordBatch::try_new(
                Arc::new(Schema::new(fields)),
                columns,
            )?))
        })
        .collect()
}

fn batches_to_rows<T: crate::Data>(_: &(), _: &mut (), batches: Vec<Batch>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for b in &batches {
        out.extend(crate::formats::decode_typed::<T>(&[], &b.0)?.take::<T>()?);
    }
    Ok(out)
}

/// A [`Frame`] with its grouping columns, waiting for its aggregates.
pub struct GroupedFrame {
    batches: Dataset<Batch>,
    keys: Vec<String>,
}

impl GroupedFrame {
    /// One row per group: the key columns, then one column per aggregate. Partial
    /// aggregates are made per map task before the shuffle (bounded by the task's
    /// memory: a full table is handed on and started again); the reduce side spills.
    pub fn agg(&self, aggs: impl IntoIterator<Item = Agg>) -> Frame {
        let spec = Spec {
            keys: self.keys.clone(),
            aggs: aggs.into_iter().collect(),
        };
        if let Some(why) = spec.refused() {
            return Frame::new(Dataset::from_node(crate::dataset::LNode::Invalid(why)));
        }
        let grouped: Dataset<(GroupKey, Vec<State>)> = self.batches.shuffle_with(
            &spec,
            new_group_writer as crate::task::NewWriterFn as usize,
            reader_of(merge_states),
            "group_by",
        );
        Frame::new(grouped.stream(
            &spec,
            finish_groups,
            |_: &Spec, _: &mut ()| Ok(Vec::new()),
            "agg",
        ))
    }
}

/// The reduce side merging `(key, states)` rows with `merge`.
fn reader_of<M: Fn(Vec<State>, Vec<State>) -> Vec<State> + 'static>(_: M) -> usize {
    crate::ops::new_combine_reader::<GroupKey, Vec<State>, M> as crate::task::NewReaderFn as usize
}

/// What an aggregate computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    /// Rows (no column), or non-null values of a column.
    Count,
    Sum,
    Min,
    Max,
    Mean,
}

/// One aggregate of a [`GroupedFrame::agg`]: its output column is named as Spark names
/// it (`sum(amount)`, `count`) unless [`alias`](Agg::alias)ed. Nulls are skipped; a
/// group with no value has a null sum, minimum, maximum or mean.
///
/// Sums of integer columns are exact (an `Int64` result, an error naming the group if it
/// does not fit), of float columns `Float64`; a mean is `Float64`; a minimum or maximum
/// has its column's kind (integer or float; NaN is the largest float, as in Spark);
/// counts are `Int64`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agg {
    kind: Kind,
    column: Option<String>,
    name: String,
}

impl Agg {
    fn of(kind: Kind, column: &str, f: &str) -> Agg {
        Agg {
            kind,
            column: Some(column.to_string()),
            name: format!("{f}({column})"),
        }
    }

    /// The number of rows.
    pub fn count() -> Agg {
        Agg {
            kind: Kind::Count,
            column: None,
            name: "count".into(),
        }
    }

    /// The number of non-null values of `column`.
    pub fn count_of(column: &str) -> Agg {
        Agg::of(Kind::Count, column, "count")
    }

    /// The sum of `column`'s values.
    pub fn sum(column: &str) -> Agg {
        Agg::of(Kind::Sum, column, "sum")
    }

    /// The smallest of `column`'s values.
    pub fn min(column: &str) -> Agg {
        Agg::of(Kind::Min, column, "min")
    }

    /// The largest of `column`'s values.
    pub fn max(column: &str) -> Agg {
        Agg::of(Kind::Max, column, "max")
    }

    /// The mean of `column`'s values.
    pub fn mean(column: &str) -> Agg {
        Agg::of(Kind::Mean, column, "avg")
    }

    /// The same aggregate, its output column named `name`.
    pub fn alias(mut self, name: &str) -> Agg {
        self.name = name.to_string();
        self
    }
}

/// What a group-by computes: captured into its map and finishing ops.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Spec {
    keys: Vec<String>,
    aggs: Vec<Agg>,
}

impl Spec {
    /// Why this group-by cannot run (reported when an action runs it), if it cannot.
    fn refused(&self) -> Option<String> {
        if self.keys.is_empty() {
            return Some("group_by names no column".into());
        }
        let names = self.keys.iter().chain(self.aggs.iter().map(|a| &a.name));
        let mut seen = std::collections::HashSet::new();
        for name in names {
            if !seen.insert(name) {
                return Some(format!(
                    "group_by/agg: two output columns are named `{name}` (alias one of them)"
                ));
            }
        }
        None
    }
}

/// One key column's value in one row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum KeyValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// A float's bits, made canonical by [`float_key`].
    Float(u64),
    Text(Str),
}

/// A float as a key: `-0.0` groups with `0.0` and every NaN with every other, as in
/// Spark.
pub(crate) fn float_key(x: f64) -> KeyValue {
    let x = if x.is_nan() {
        f64::NAN
    } else if x == 0.0 {
        0.0
    } else {
        x
    };
    KeyValue::Float(x.to_bits())
}

/// A group's key: its key columns' values, in the `group_by` order.
pub(crate) type GroupKey = Vec<KeyValue>;

/// A number as an aggregate keeps it: integers exactly (sums of `i64` fit an `i128` for
/// any row count a task can see), floats as `f64`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum Num {
    I(i128),
    F(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    fn add(self, o: Num) -> Num {
        match (self, o) {
            (Num::I(a), Num::I(b)) => Num::I(a.wrapping_add(b)),
            (a, b) => Num::F(a.f() + b.f()),
        }
    }

    /// The larger (`max`) or smaller of two; NaN is larger than any number.
    fn pick(self, o: Num, max: bool) -> Num {
        let o_larger = match (self, o) {
            (Num::I(a), Num::I(b)) => b > a,
            (a, b) => float_gt(b.f(), a.f()),
        };
        if o_larger == max { o } else { self }
    }
}

/// `a > b`, with NaN larger than every number (Spark's ordering of floats).
#[inline]
fn float_gt(a: f64, b: f64) -> bool {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a > b,
        (a_nan, b_nan) => a_nan && !b_nan,
    }
}

/// One aggregate's partial state for one group: the values seen (`n`) and their sum,
/// minimum or maximum (`v`, unused by a count).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    kind: Kind,
    n: u64,
    v: Num,
}

/// Merges the partial states of one group (the same aggregates in the same order).
fn merge_states(mut a: Vec<State>, b: Vec<State>) -> Vec<State> {
    for (x, y) in a.iter_mut().zip(b) {
        *x = merge_state(*x, y);
    }
    a
}

/// Two partial states of one aggregate of one group, merged.
fn merge_state(x: State, y: State) -> State {
    let v = match x.kind {
        Kind::Count => x.v,
        Kind::Sum | Kind::Mean => x.v.add(y.v),
        Kind::Min | Kind::Max if x.n == 0 => y.v,
        Kind::Min | Kind::Max if y.n == 0 => x.v,
        Kind::Min => x.v.pick(y.v, false),
        Kind::Max => x.v.pick(y.v, true),
    };
    // Saturating: the states may come from another executor.
    State {
        kind: x.kind,
        n: x.n.saturating_add(y.n),
        v,
    }
}

// ---------------------------------------------------------------- map side

/// Values of a numeric column as an aggregate reads them.
trait Value: Copy {
    /// Whether the column holds floats (kept as `f64`) rather than integers (`i128`).
    const FLOAT: bool;
    /// An integer as `i128` (0 for a float).
    fn int(self) -> i128;
    fn float(self) -> f64;
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl Value for $t {
            const FLOAT: bool = false;
            #[inline(always)]
            fn int(self) -> i128 { self as i128 }
            #[inline(always)]
            fn float(self) -> f64 { self as f64 }
        }
    )*};
}
int_values!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Value for f32 {
    const FLOAT: bool = true;
    #[inline(always)]
    fn int(self) -> i128 {
        0
    }
    #[inline(always)]
    fn float(self) -> f64 {
        self as f64
    }
}

impl Value for f64 {
    const FLOAT: bool = true;
    #[inline(always)]
    fn int(self) -> i128 {
        0
    }
    #[inline(always)]
    fn float(self) -> f64 {
        self
    }
}

/// A row's group number as the accumulators read it: a `u32` numbered by the table, or
/// a dictionary index (`i32`, checked to be in the dictionary) standing for one.
trait Gid: Copy {
    fn at(self) -> usize;
}

impl Gid for u32 {
    #[inline(always)]
    fn at(self) -> usize {
        self as usize
    }
}

impl Gid for i32 {
    #[inline(always)]
    fn at(self) -> usize {
        self as u32 as usize
    }
}

/// Where one aggregate's partial state sits among a group's words: `n` (values seen) at
/// `at`, then the value (an `i128` in two words, or an `f64`'s bits).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Slot {
    kind: Kind,
    float: bool,
    at: usize,
}

/// The map side's partial aggregates, indexed by group number: a group's states side by
/// side in `stride` words, so that adding a row touches one stretch of memory (one cache
/// line for a few aggregates) rather than one array per aggregate.
struct Accs {
    slots: Vec<Slot>,
    stride: usize,
    words: Vec<u64>,
}

impl Accs {
    /// The layout for aggregates of `kinds` whose columns hold floats or integers.
    fn new(kinds: impl IntoIterator<Item = (Kind, bool)>) -> Accs {
        let mut at = 0;
        let slots = kinds
            .into_iter()
            .map(|(kind, float)| {
                let slot = Slot { kind, float, at };
                at += match (kind, float) {
                    (Kind::Count, _) => 1,
                    (_, true) => 2,
                    (_, false) => 3,
                };
                slot
            })
            .collect();
        Accs {
            slots,
            stride: at.max(1),
            words: Vec::new(),
        }
    }

    fn grow(&mut self, groups: usize) {
        self.words.resize(groups * self.stride, 0);
    }

    /// Counts the rows of each group number (`count()`), or those whose value is not
    /// null (`count_of`).
    fn count_rows<G: Gid>(&mut self, j: usize, gids: &[G], nulls: Option<&NullBuffer>) {
        let (at, stride) = (self.slots[j].at, self.stride);
        let words = &mut self.words;
        match nulls {
            None => {
                for &g in gids {
                    words[g.at() * stride + at] += 1;
                }
            }
            Some(nulls) => {
                for (i, &g) in gids.iter().enumerate() {
                    words[g.at() * stride + at] += u64::from(nulls.is_valid(i));
                }
            }
        }
    }

    /// Adds a column's values (`nulls` skipped) into aggregate `j` for the rows' group
    /// numbers. The column holds what the layout says (`N::FLOAT == slot.float`).
    fn add<G: Gid, N: Value>(
        &mut self,
        j: usize,
        gids: &[G],
        values: &[N],
        nulls: Option<&NullBuffer>,
    ) {
        let Slot { kind, at, .. } = self.slots[j];
        let stride = self.stride;
        let words = &mut self.words;
        let mut step = |g: G, x: N| {
            let base = g.at() * stride + at;
            if N::FLOAT {
                let cell: &mut [u64; 2] = (&mut words[base..base + 2]).try_into().expect("2");
                float_step(kind, cell, x.float());
            } else {
                let cell: &mut [u64; 3] = (&mut words[base..base + 3]).try_into().expect("3");
                int_step(kind, cell, x.int());
            }
        };
        match nulls {
            None => {
                for (&g, &x) in gids.iter().zip(values) {
                    step(g, x);
                }
            }
            Some(nulls) => {
                for (i, (&g, &x)) in gids.iter().zip(values).enumerate() {
                    if nulls.is_valid(i) {
                        step(g, x);
                    }
                }
            }
        }
    }

    /// Merges row `v` of `other` (of the same layout) into group `g`'s states.
    fn merge_from(&mut self, g: usize, other: &Accs, v: usize) {
        for j in 0..self.slots.len() {
            let Slot { kind, float, at } = self.slots[j];
            let (to, from) = (g * self.stride + at, v * other.stride + at);
            // Counts and sums word by word (a join's output can bring hundreds of
            // dictionary values per batch); extremes through their states.
            match (kind, float) {
                (Kind::Count, _) => {
                    self.words[to] = self.words[to].saturating_add(other.words[from]);
                    continue;
                }
                (Kind::Sum | Kind::Mean, true) => {
                    let (x, y) = (self.words[to + 1], other.words[from + 1]);
                    self.words[to] = self.words[to].saturating_add(other.words[from]);
                    self.words[to + 1] = (f64::from_bits(x) + f64::from_bits(y)).to_bits();
                    continue;
                }
                _ => {}
            }
            // (A float slot's states hold floats, an integer slot's integers, and so
            // does their merge.)
            let merged = merge_state(self.state(g, j), other.state(v, j));
            let w = &mut self.words[to..];
            w[0] = merged.n;
            match merged.v {
                Num::F(x) => w[1] = x.to_bits(),
                Num::I(x) => {
                    w[1] = x as u64;
                    w[2] = (x as u128 >> 64) as u64;
                }
            }
        }
    }

    /// Group `g`'s partial state of aggregate `j`.
    fn state(&self, g: usize, j: usize) -> State {
        let Slot { kind, float, at } = self.slots[j];
        let w = &self.words[g * self.stride + at..];
        State {
            kind,
            n: w[0],
            v: match (kind, float) {
                (Kind::Count, _) => Num::I(0),
                (_, true) => Num::F(f64::from_bits(w[1])),
                (_, false) => Num::I(((w[2] as u128) << 64 | w[1] as u128) as i128),
            },
        }
    }
}

/// One integer row into `[n, low word, high word]`.
#[inline(always)]
fn int_step(kind: Kind, cell: &mut [u64; 3], x: i128) {
    let n = cell[0];
    let v = ((cell[2] as u128) << 64 | cell[1] as u128) as i128;
    let v = match kind {
        Kind::Min if n > 0 => v.min(x),
        Kind::Max if n > 0 => v.max(x),
        Kind::Min | Kind::Max => x,
        _ => v.wrapping_add(x),
    };
    cell[0] = n + 1;
    cell[1] = v as u64;
    cell[2] = (v as u128 >> 64) as u64;
}

/// One float row into `[n, f64 bits]`.
#[inline(always)]
fn float_step(kind: Kind, cell: &mut [u64; 2], x: f64) {
    let n = cell[0];
    let v = f64::from_bits(cell[1]);
    let v = match kind {
        Kind::Min if n > 0 && !float_gt(v, x) => v,
        Kind::Max if n > 0 && !float_gt(x, v) => v,
        Kind::Min | Kind::Max => x,
        _ => v + x,
    };
    cell[0] = n + 1;
    cell[1] = v.to_bits();
}

/// Whether a value column holds floats (else integers); an error for another type.
fn float_column(name: &str, t: &DataType) -> Result<bool> {
    match t {
        DataType::Float32 | DataType::Float64 => Ok(true),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Ok(false),
        other => Err(not_a_number(name, other)),
    }
}

/// The error of an aggregate given a column that does not hold numbers.
fn not_a_number(name: &str, t: &DataType) -> Error {
    Error::msg(format!(
        "column `{name}` has type {t}: an aggregate reads a number column"
    ))
    .bad_input()
}

/// Evaluates `$body` with a numeric column's values as a typed slice `$v`; another
/// type returns the error of [`not_a_number`].
macro_rules! with_values {
    ($array:expr, $name:expr, |$v:ident| $body:expr) => {
        with_values!(@types $array, $name, $v, $body, Int8 Int8Type, Int16 Int16Type,
            Int32 Int32Type, Int64 Int64Type, UInt8 UInt8Type, UInt16 UInt16Type,
            UInt32 UInt32Type, UInt64 UInt64Type, Float32 Float32Type, Float64 Float64Type)
    };
    (@types $array:expr, $name:expr, $v:ident, $body:expr, $($dt:ident $t:ty),*) => {{
        let a = $array;
        match a.data_type() {
            $(DataType::$dt => {
                let $v = a.as_primitive::<$t>().values();
                $body
            })*
            other => return Err(not_a_number($name, other)),
        }
    }};
}

/// The group numbers of the map side's table.
enum Groups {
    /// One integer key column.
    Int(IntGroups),
    /// Any other keys, as their values.
    Keys(hash::Map<GroupKey, u32>),
}

impl Groups {
    /// Bytes another doubling of the table would take.
    fn growth(&self) -> u64 {
        let (len, cap, entry) = match self {
            Groups::Int(ints) if ints.dense.is_some() => return 0,
            Groups::Int(ints) => (ints.map.len(), ints.map.capacity(), 16),
            Groups::Keys(map) => (map.len(), map.capacity(), 40),
        };
        if len == cap {
            cap as u64 * 2 * (entry + 1)
        } else {
            0
        }
    }
}

/// The null key's group number, numbered now if it has none.
fn null_group(null: &mut Option<u32>, next: &mut u32) -> u32 {
    *null.get_or_insert_with(|| {
        *next += 1;
        *next - 1
    })
}

/// How many integers a dense table of group numbers may span (4 MiB of them).
pub(crate) const DENSE_SPAN: i128 = 1 << 20;

/// A group number per integer in `base..base + slots.len()` (`u32::MAX`: no group yet).
struct Dense {
    base: i64,
    slots: Vec<u32>,
}

/// The group numbers of one integer key column: while its values span at most
/// [`DENSE_SPAN`] integers, a table indexed by the value's offset (DuckDB's perfect
/// hash aggregation: no hashing, a table small enough to stay in cache), else a hash
/// map.
struct IntGroups {
    /// `None` once the keys spread too far: then `map` holds every group.
    dense: Option<Dense>,
    map: hash::Map<i64, u32>,
    null: Option<u32>,
}

impl IntGroups {
    fn new() -> IntGroups {
        IntGroups {
            dense: Some(Dense {
                base: 0,
                slots: Vec::new(),
            }),
            map: hash::Map::default(),
            null: None,
        }
    }

    /// Widens the dense table to cover `values` (nulls' slots included: they only widen
    /// it), or moves its groups into the map when it would span too many integers.
    fn cover(&mut self, values: &[i64]) {
        let (Some(d), Some(&lo), Some(&hi)) =
            (&mut self.dense, values.iter().min(), values.iter().max())
        else {
            return;
        };
        let (lo, hi) = if d.slots.is_empty() {
            (lo, hi)
        } else {
            let top = d.base + (d.slots.len() as i64 - 1);
            (lo.min(d.base), hi.max(top))
        };
        if (hi as i128 - lo as i128) < DENSE_SPAN {
            if d.slots.is_empty() {
                d.base = lo;
            }
            let before = (d.base - lo) as usize;
            if before > 0 {
                d.slots.splice(0..0, std::iter::repeat_n(u32::MAX, before));
                d.base = lo;
            }
            d.slots.resize((hi - lo + 1) as usize, u32::MAX);
            return;
        }
        let d = self.dense.take().expect("dense");
        for (i, &g) in d.slots.iter().enumerate() {
            if g != u32::MAX {
                self.map.insert(d.base + i as i64, g);
            }
        }
    }

    /// Numbers `values` (`nulls` the null group) into `gids` (as long as `values`).
    fn number(
        &mut self,
        values: &[i64],
        nulls: Option<&NullBuffer>,
        next: &mut u32,
        gids: &mut [u32],
    ) {
        self.cover(values);
        let null = &mut self.null;
        let rows = gids.iter_mut().zip(values);
        match (&mut self.dense, nulls) {
            (Some(d), None) => {
                for (out, &v) in rows {
                    let slot = &mut d.slots[(v - d.base) as usize];
                    if *slot == u32::MAX {
                        *slot = *next;
                        *next += 1;
                    }
                    *out = *slot;
                }
            }
            (Some(d), Some(nulls)) => {
                for (i, (out, &v)) in rows.enumerate() {
                    if nulls.is_null(i) {
                        *out = null_group(null, next);
                        continue;
                    }
                    let slot = &mut d.slots[(v - d.base) as usize];
                    if *slot == u32::MAX {
                        *slot = *next;
                        *next += 1;
                    }
                    *out = *slot;
                }
            }
            (None, None) => {
                for (out, &v) in rows {
                    *out = group_of(&mut self.map, v, next);
                }
            }
            (None, Some(nulls)) => {
                for (i, (out, &v)) in rows.enumerate() {
                    *out = if nulls.is_null(i) {
                        null_group(null, next)
                    } else {
                        group_of(&mut self.map, v, next)
                    };
                }
            }
        }
    }

    /// Every group: `(key, group number)`, `None` for the null key.
    fn drain(self) -> impl Iterator<Item = (Option<i64>, u32)> {
        let dense = self.dense.into_iter().flat_map(|d| {
            let base = d.base;
            d.slots
                .into_iter()
                .enumerate()
                .filter(|(_, g)| *g != u32::MAX)
                .map(move |(i, g)| (Some(base + i as i64), g))
        });
        let mapped = self.map.into_iter().map(|(k, g)| (Some(k), g));
        dense.chain(mapped).chain(self.null.map(|g| (None, g)))
    }
}

/// The group number of `key`, new groups numbered in order.
#[inline(always)]
fn group_of<K: std::hash::Hash + Eq>(map: &mut hash::Map<K, u32>, key: K, next: &mut u32) -> u32 {
    if let Some(&g) = map.get(&key) {
        return g;
    }
    let g = *next;
    map.insert(key, g);
    *next += 1;
    g
}

/// The group number of dictionary index `k` (checked), numbering its text when first
/// met; `of_value` holds the group numbers of the dictionary's values met so far.
#[inline(always)]
fn dictionary_group(
    of_value: &mut [u32],
    values: &arrow_array::StringArray,
    k: i32,
    map: &mut hash::Map<GroupKey, u32>,
    next: &mut u32,
) -> u32 {
    let slot = &mut of_value[k as u32 as usize];
    if *slot == u32::MAX {
        *slot = new_text_group(map, values.value(k as u32 as usize), next);
    }
    *slot
}

/// The group number of `key`, out of the caller's loop (it runs once per group).
#[cold]
#[inline(never)]
fn new_group(map: &mut hash::Map<GroupKey, u32>, key: GroupKey, next: &mut u32) -> u32 {
    group_of(map, key, next)
}

/// [`new_group`] of a text key.
#[cold]
#[inline(never)]
fn new_text_group(map: &mut hash::Map<GroupKey, u32>, text: &str, next: &mut u32) -> u32 {
    group_of(map, vec![KeyValue::Text(Str::from(text))], next)
}

/// Whether a single key column takes the integer table.
pub(crate) fn int_key(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

/// A key column, downcast.
pub(crate) enum KeyColumn<'a> {
    Bool(&'a arrow_array::BooleanArray),
    /// Any integer column but `UInt64`, widened.
    Int(std::borrow::Cow<'a, [i64]>),
    UInt(&'a [u64]),
    Float32(&'a [f32]),
    Float64(&'a [f64]),
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    Dict(&'a [i32], &'a arrow_array::StringArray),
}

impl<'a> KeyColumn<'a> {
    pub(crate) fn of(name: &str, a: &'a ArrayRef) -> Result<KeyColumn<'a>> {
        Ok(match a.data_type() {
            DataType::Boolean => KeyColumn::Bool(a.as_boolean()),
            DataType::UInt64 => KeyColumn::UInt(a.as_primitive::<UInt64Type>().values()),
            t if int_key(t) => KeyColumn::Int(widen(a)),
            DataType::Float32 => KeyColumn::Float32(a.as_primitive::<Float32Type>().values()),
            DataType::Float64 => KeyColumn::Float64(a.as_primitive::<Float64Type>().values()),
            DataType::Utf8 => KeyColumn::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => KeyColumn::LargeUtf8(a.as_string::<i64>()),
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let d = a.as_dictionary::<Int32Type>();
                KeyColumn::Dict(d.keys().values(), d.values().as_string::<i32>())
            }
            other => {
                return Err(Error::msg(format!(
                    "key column `{name}` has type {other}: a key is an integer, float, boolean or text column"
                ))
                .bad_input());
            }
        })
    }

    /// Row `i`'s value (not null).
    pub(crate) fn value(&self, i: usize) -> Result<KeyValue> {
        Ok(match self {
            KeyColumn::Bool(a) => KeyValue::Bool(a.value(i)),
            KeyColumn::Int(v) => KeyValue::Int(v[i]),
            KeyColumn::UInt(v) => KeyValue::UInt(v[i]),
            KeyColumn::Float32(v) => float_key(v[i] as f64),
            KeyColumn::Float64(v) => float_key(v[i]),
            KeyColumn::Utf8(a) => KeyValue::Text(Str::from(a.value(i))),
            KeyColumn::LargeUtf8(a) => KeyValue::Text(Str::from(a.value(i))),
            KeyColumn::Dict(keys, values) => KeyValue::Text(Str::from(
                crate::columns::dictionary_value(keys, values, i)
                    .map_err(|e| Error::from(e).bad_input())?,
            )),
        })
    }
}

/// An integer column (not `UInt64`) as `i64`s (an `Int64` column's own).
pub(crate) fn widen(a: &ArrayRef) -> std::borrow::Cow<'_, [i64]> {
    fn w<T: ArrowPrimitiveType>(a: &ArrayRef) -> Vec<i64>
    where
        T::Native: Into<i64>,
    {
        a.as_primitive::<T>()
            .values()
            .iter()
            .map(|&x| x.into())
            .collect()
    }
    match a.data_type() {
        DataType::Int8 => w::<Int8Type>(a).into(),
        DataType::Int16 => w::<Int16Type>(a).into(),
        DataType::Int32 => w::<Int32Type>(a).into(),
        DataType::Int64 => a.as_primitive::<Int64Type>().values().as_ref().into(),
        DataType::UInt8 => w::<UInt8Type>(a).into(),
        DataType::UInt16 => w::<UInt16Type>(a).into(),
        DataType::UInt32 => w::<UInt32Type>(a).into(),
        _ => Vec::new().into(),
    }
}

/// The map side of a group-by: per-group partial aggregates in arrays indexed by group
/// number, handed on (partitioned by key) when the task's memory budget is reached and
/// at the end.
struct GroupWriter {
    spec: Spec,
    partitions: u32,
    groups: Groups,
    next: u32,
    accs: Accs,
    gids: Vec<u32>,
    /// The group numbers of the last dictionary key column's values, kept while
    /// batches share that dictionary (a Parquet column chunk's, a join's built side's);
    /// the dictionary is held so that its memory cannot be another's while kept.
    dict_groups: Option<(ArrayRef, Vec<u32>)>,
    /// One batch's states by dictionary index ([`GroupWriter::add_by_index`]), kept
    /// for its memory.
    by_index: Accs,
}

/// Checks that the dictionary indexes of the rows not null are in a dictionary of
/// `len` values.
fn check_indexes(
    name: &str,
    indexes: &[i32],
    len: usize,
    nulls: Option<&NullBuffer>,
) -> Result<()> {
    // The largest index first (a loop without a branch per row); the row at fault
    // only when one is out of the dictionary (a null row's index may be anything).
    let largest = indexes.iter().fold(0, |m, &k| m.max(k as u32));
    if (largest as usize) < len {
        return Ok(());
    }
    let valid = |i: usize| nulls.is_none_or(|n| n.is_valid(i));
    match indexes
        .iter()
        .enumerate()
        .find(|&(i, &k)| k as u32 as usize >= len && valid(i))
    {
        None => Ok(()),
        Some((i, k)) => Err(Error::msg(format!(
            "column `{name}` (row {i} of the batch): dictionary index {k} of a dictionary of {len} values"
        ))
        .bad_input()),
    }
}

/// The group numbers of `dict`'s values: those kept if `kept` is of this dictionary,
/// else none numbered yet (`u32::MAX`).
fn kept_groups(kept: &mut Option<(ArrayRef, Vec<u32>)>, dict: &ArrayRef) -> Vec<u32> {
    match kept.take() {
        Some((d, of)) if d.to_data().ptr_eq(&dict.to_data()) => of,
        _ => vec![u32::MAX; dict.len()],
    }
}

fn new_group_writer(arg: &[u8], partitions: u32) -> Result<Box<dyn crate::task::ShuffleWriter>> {
    let spec: Spec = crate::ops::capture(arg)?;
    if let Some(why) = spec.refused() {
        return Err(Error::msg(why).bad_input());
    }
    Ok(Box::new(GroupWriter::new(spec, partitions)))
}

/// `batch`'s column `name`, or an error naming the columns it has.
pub(crate) fn column<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let have: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Error::msg(format!("no column `{name}` (the rows have {have:?})")).bad_input()
    })
}

impl GroupWriter {
    fn new(spec: Spec, partitions: u32) -> GroupWriter {
        GroupWriter {
            accs: Accs::new(spec.aggs.iter().map(|a| (a.kind, false))),
            spec,
            partitions,
            groups: Groups::Keys(hash::Map::default()),
            next: 0,
            gids: Vec::new(),
            dict_groups: None,
            by_index: Accs::new([]),
        }
    }

    /// Numbers the rows of `batch` by group into `self.gids`.
    fn number(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        let mut gids = std::mem::take(&mut self.gids);
        // Written in place (a push per row kept the vector's length and capacity in
        // memory: loads and a branch per row in the compiled guest).
        gids.clear();
        gids.resize(n, 0);
        let names = self.spec.keys.clone();
        let keys = names
            .iter()
            .map(|k| column(batch, k).map(|a| (k, a)))
            .collect::<Result<Vec<_>>>()?;
        self.use_groups(keys.len() == 1 && int_key(keys[0].1.data_type()))?;
        let next = &mut self.next;
        match &mut self.groups {
            Groups::Int(ints) => {
                let (_, a) = keys[0];
                let nulls = a.logical_nulls();
                ints.number(&widen(a), nulls.as_ref(), next, &mut gids);
            }
            Groups::Keys(map) => {
                let columns = keys
                    .iter()
                    .map(|(k, a)| Ok((KeyColumn::of(k, a)?, a.logical_nulls())))
                    .collect::<Result<Vec<_>>>()?;
                if let [(KeyColumn::Dict(indexes, values), nulls)] = columns.as_slice() {
                    // One dictionary column: a group number per dictionary value, looked
                    // up when a row first uses it. The indexes are checked first, so
                    // that the loop holds no error path (whose captures kept the loop's
                    // counters in memory).
                    check_indexes(keys[0].0, indexes, values.len(), nulls.as_ref())?;
                    let dict = keys[0].1.as_dictionary::<Int32Type>().values();
                    let mut of_value = kept_groups(&mut self.dict_groups, dict);
                    match nulls {
                        None => {
                            for (out, &k) in gids.iter_mut().zip(*indexes) {
                                *out = dictionary_group(&mut of_value, values, k, map, next);
                            }
                        }
                        Some(nulls) => {
                            // A null row is there: its group too.
                            let null_gid = (nulls.null_count() > 0)
                                .then(|| new_group(map, vec![KeyValue::Null], next));
                            for (i, (out, &k)) in gids.iter_mut().zip(*indexes).enumerate() {
                                *out = match null_gid {
                                    Some(g) if nulls.is_null(i) => g,
                                    _ => dictionary_group(&mut of_value, values, k, map, next),
                                };
                            }
                        }
                    }
                    self.dict_groups = Some((dict.clone(), of_value));
                } else {
                    for (i, out) in gids.iter_mut().enumerate() {
                        let key = columns
                            .iter()
                            .zip(&keys)
                            .map(|((c, nulls), (name, _))| match nulls {
                                Some(nl) if nl.is_null(i) => Ok(KeyValue::Null),
                                _ => c.value(i).map_err(|e| {
                                    e.context(format!("column `{name}` (row {i} of the batch)"))
                                }),
                            })
                            .collect::<Result<GroupKey>>()?;
                        *out = group_of(map, key, next);
                    }
                }
            }
        }
        self.gids = gids;
        Ok(())
    }

    /// Starts a table of the kind a batch's keys take (`int`: one integer column) if
    /// the one kept is not of that kind: a dataset's files may type a key column
    /// differently, and the table that does not fit is handed on first.
    fn use_groups(&mut self, int: bool) -> Result<()> {
        if int != matches!(self.groups, Groups::Int(_)) {
            self.flush()?;
            self.groups = if int {
                Groups::Int(IntGroups::new())
            } else {
                Groups::Keys(hash::Map::default())
            };
        }
        Ok(())
    }

    /// Adds `batch` by dictionary index when its one key column is a dictionary of at
    /// most an eighth as many values as the batch has rows and no key or value column
    /// holds a null; `false` (nothing done) otherwise. The index
    /// stands for the group: the rows go into states kept per dictionary value for this
    /// batch, merged afterwards into the groups of the values used. Numbering every row
    /// by group (a lookup and a store per row: a third of the time of a group-by over a
    /// Parquet text column) becomes a merge per dictionary value.
    fn add_by_index(&mut self, batch: &RecordBatch) -> Result<bool> {
        let ([name], false) = (self.spec.keys.as_slice(), self.spec.aggs.is_empty()) else {
            return Ok(false);
        };
        let key = column(batch, name)?;
        let Ok(KeyColumn::Dict(indexes, values)) = KeyColumn::of(name, key) else {
            return Ok(false);
        };
        let has_nulls = |a: &ArrayRef| a.logical_nulls().is_some_and(|n| n.null_count() > 0);
        // A value's merge costs about what numbering a few rows does: a dictionary of
        // more than an eighth of the batch's rows is left to the numbering.
        if values.len().saturating_mul(8) > batch.num_rows() || has_nulls(key) {
            return Ok(false);
        }
        let mut columns = Vec::with_capacity(self.spec.aggs.len());
        for agg in &self.spec.aggs {
            let a = agg
                .column
                .as_deref()
                .map(|c| column(batch, c))
                .transpose()?;
            if a.is_some_and(has_nulls) {
                return Ok(false);
            }
            columns.push(a);
        }
        check_indexes(name, indexes, values.len(), None)?;
        self.use_groups(false)?;
        let Groups::Keys(map) = &mut self.groups else {
            return Ok(false);
        };
        let mut by_index = std::mem::replace(&mut self.by_index, Accs::new([]));
        by_index.slots.clone_from(&self.accs.slots);
        by_index.stride = self.accs.stride;
        by_index.words.clear();
        by_index.grow(values.len());
        for (j, (agg, a)) in self.spec.aggs.iter().zip(&columns).enumerate() {
            match (agg.kind, a) {
                (Kind::Count, _) | (_, None) => by_index.count_rows(j, indexes, None),
                (_, Some(a)) => {
                    let name = agg.column.as_deref().unwrap_or_default();
                    with_values!(a, name, |v| by_index.add(j, indexes, v, None));
                }
            }
        }
        // Every slot counts the rows of its index (no value is null): the first tells
        // which dictionary values the batch uses.
        let first = by_index.slots[0].at;
        let dict = key.as_dictionary::<Int32Type>().values();
        let mut of_value = kept_groups(&mut self.dict_groups, dict);
        for v in 0..values.len() {
            if by_index.words[v * by_index.stride + first] == 0 {
                continue;
            }
            let g = dictionary_group(&mut of_value, values, v as i32, map, &mut self.next);
            self.accs.grow(self.next as usize);
            self.accs.merge_from(g as usize, &by_index, v);
        }
        self.dict_groups = Some((dict.clone(), of_value));
        self.by_index = by_index;
        Ok(true)
    }

    /// Adds `batch` into the groups' partial aggregates.
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        // The states' layout follows the value columns' types: a dataset's files may
        // type a column differently, and the groups kept in the old layout are handed
        // on first.
        let mut kinds = Vec::with_capacity(self.spec.aggs.len());
        for agg in &self.spec.aggs {
            kinds.push(match (&agg.column, agg.kind) {
                (Some(name), kind) if kind != Kind::Count => {
                    (kind, float_column(name, column(batch, name)?.data_type())?)
                }
                (_, kind) => (kind, false),
            });
        }
        let layout = Accs::new(kinds);
        if layout.slots != self.accs.slots {
            self.flush()?;
            self.accs = layout;
        }
        if self.add_by_index(batch)? {
            return Ok(());
        }
        self.number(batch)?;
        self.accs.grow(self.next as usize);
        for (j, agg) in self.spec.aggs.iter().enumerate() {
            let Some(name) = &agg.column else {
                self.accs.count_rows(j, &self.gids, None);
                continue;
            };
            let a = column(batch, name)?;
            let nulls = a.logical_nulls();
            if agg.kind == Kind::Count {
                self.accs.count_rows(j, &self.gids, nulls.as_ref());
            } else {
                let accs = &mut self.accs;
                with_values!(a, name, |v| accs.add(j, &self.gids, v, nulls.as_ref()));
            }
        }
        Ok(())
    }

    /// The groups with their partial states, the table emptied (its memory given back).
    fn drain(&mut self) -> Vec<(GroupKey, Vec<State>)> {
        self.dict_groups = None;
        let accs = &self.accs;
        let states = |g: u32| {
            (0..accs.slots.len())
                .map(|j| accs.state(g as usize, j))
                .collect::<Vec<_>>()
        };
        let mut out = Vec::with_capacity(self.next as usize);
        let empty = match self.groups {
            Groups::Int(_) => Groups::Int(IntGroups::new()),
            Groups::Keys(_) => Groups::Keys(hash::Map::default()),
        };
        match std::mem::replace(&mut self.groups, empty) {
            Groups::Int(ints) => out.extend(ints.drain().map(|(k, g)| {
                let key = k.map_or(KeyValue::Null, KeyValue::Int);
                (vec![key], states(g))
            })),
            Groups::Keys(map) => out.extend(map.into_iter().map(|(k, g)| (k, states(g)))),
        }
        self.next = 0;
        self.accs.words = Vec::new();
        out
    }

    /// Hands the partial aggregates on, partitioned by key, and starts again.
    fn flush(&mut self) -> Result<()> {
        let n = self.partitions.max(1);
        let mut parts: Vec<Vec<(GroupKey, Vec<State>)>> = (0..n).map(|_| Vec::new()).collect();
        for (key, states) in self.drain() {
            parts[crate::ops::partition_of(&key, n) as usize].push((key, states));
        }
        crate::ops::emit_parts(parts)
    }
}

impl crate::task::ShuffleWriter for GroupWriter {
    fn push(&mut self, rows: Rows) -> Result<()> {
        for b in rows.take::<Batch>()? {
            self.add(&b.0)?;
            if self.next as usize >= crate::ops::MIN_HELD
                && crate::spill::over_budget(self.groups.growth())
            {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.flush()
    }
}

// ---------------------------------------------------------------- reduce side's end

/// The groups' merged states → batches of key columns and aggregate columns.
fn finish_groups(
    spec: &Spec,
    _: &mut (),
    groups: Vec<(GroupKey, Vec<State>)>,
) -> Result<Vec<Batch>> {
    let mut out = Vec::new();
    for chunk in groups.chunks(BATCH_ROWS) {
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (i, name) in spec.keys.iter().enumerate() {
            let column = key_column(chunk.iter().map(|(k, _)| k.get(i)))
                .map_err(|e| e.context(format!("group_by column `{name}`")))?;
            fields.push(Field::new(name, column.data_type().clone(), true));
            columns.push(column);
        }
        for (i, agg) in spec.aggs.iter().enumerate() {
            let column = agg_column(agg, chunk.iter().map(|(k, s)| (k, s.get(i))))?;
            fields.push(Field::new(&agg.name, column.data_type().clone(), true));
            columns.push(column);
        }
        out.push(Batch(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?));
    }
    Ok(out)
}

/// A key column from the groups' values: `Int64`, `UInt64`, `Float64`, `Boolean` or
/// `Utf8` (that of a column of nulls alone).
fn key_column<'k>(values: impl Iterator<Item = Option<&'k KeyValue>> + Clone) -> Result<ArrayRef> {
    let mixed = || Error::msg("holds values of several types (files typing it differently?)");
    macro_rules! keys_of {
        ($builder:expr, $variant:ident, |$x:ident| $value:expr) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    Some(KeyValue::$variant($x)) => b.append_value($value),
                    Some(KeyValue::Null) | None => b.append_null(),
                    Some(_) => return Err(mixed()),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(
        match values.clone().flatten().find(|v| **v != KeyValue::Null) {
            Some(KeyValue::Int(_)) => keys_of!(Int64Builder::new(), Int, |x| *x),
            Some(KeyValue::UInt(_)) => {
                keys_of!(arrow_array::builder::UInt64Builder::new(), UInt, |x| *x)
            }
            Some(KeyValue::Float(_)) => {
                keys_of!(Float64Builder::new(), Float, |x| f64::from_bits(*x))
            }
            Some(KeyValue::Bool(_)) => keys_of!(BooleanBuilder::new(), Bool, |x| *x),
            _ => keys_of!(StringBuilder::new(), Text, |x| x.as_str()),
        },
    )
}

/// An aggregate's column from the groups' merged states.
fn agg_column<'s>(
    agg: &Agg,
    states: impl Iterator<Item = (&'s GroupKey, Option<&'s State>)> + Clone,
) -> Result<ArrayRef> {
    let missing = || Error::msg(format!("internal: no state for `{}`", agg.name));
    if agg.kind == Kind::Count {
        let mut b = Int64Builder::new();
        for (_, s) in states {
            b.append_value(s.ok_or_else(missing)?.n as i64);
        }
        return Ok(Arc::new(b.finish()));
    }
    let float = agg.kind == Kind::Mean
        || states
            .clone()
            .any(|(_, s)| matches!(s, Some(State { v: Num::F(_), .. })));
    if float {
        let mut b = Float64Builder::new();
        for (_, s) in states {
            let s = s.ok_or_else(missing)?;
            match (s.n, agg.kind) {
                (0, _) => b.append_null(),
                (n, Kind::Mean) => b.append_value(s.v.f() / n as f64),
                _ => b.append_value(s.v.f()),
            }
        }
        return Ok(Arc::new(b.finish()));
    }
    let mut b = Int64Builder::new();
    for (key, s) in states {
        let s = s.ok_or_else(missing)?;
        match (s.n, s.v) {
            (0, _) => b.append_null(),
            (_, Num::I(v)) => b.append_value(i64::try_from(v).map_err(|_| {
                Error::msg(format!(
                    "`{}` of group {key:?} is {v}, which does not fit a 64-bit integer",
                    agg.name
                ))
                .bad_input()
            })?),
            (_, Num::F(_)) => unreachable!("a float state makes a float column"),
        }
    }
    Ok(Arc::new(b.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray};
    use std::collections::BTreeMap;

    /// Runs the map side over `batches` in one writer and merges what it hands on as
    /// the reduce side would (in one partition): once handing its table on after every
    /// batch, once only at the end. Both must give the same groups; the finished batches.
    fn aggregate(spec: &Spec, batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        let each = merged(spec, batches, true)?;
        let at_end = merged(spec, batches, false)?;
        let sorted = |rows: &[(GroupKey, Vec<State>)]| {
            let mut v: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&each), sorted(&at_end));
        Ok(finish_groups(spec, &mut (), at_end)?
            .into_iter()
            .map(|b| b.0)
            .collect())
    }

    fn merged(
        spec: &Spec,
        batches: &[RecordBatch],
        drain_each: bool,
    ) -> Result<Vec<(GroupKey, Vec<State>)>> {
        let mut w = GroupWriter::new(spec.clone(), 1);
        let mut merged: hash::Map<GroupKey, Vec<State>> = hash::Map::default();
        let mut take = |w: &mut GroupWriter| {
            for (k, s) in w.drain() {
                match merged.remove(&k) {
                    Some(old) => merged.insert(k, merge_states(old, s)),
                    None => merged.insert(k, s),
                };
            }
        };
        for b in batches {
            w.add(b)?;
            if drain_each {
                take(&mut w);
            }
        }
        take(&mut w);
        Ok(merged.into_iter().collect())
    }

    fn spec(keys: &[&str], aggs: Vec<Agg>) -> Spec {
        Spec {
            keys: keys.iter().map(|s| s.to_string()).collect(),
            aggs,
        }
    }

    /// The output as `key → rendered aggregate values`, sorted by key text.
    fn table(batches: &[RecordBatch], keys: usize) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for b in batches {
            let fmt = cell_text;
            for i in 0..b.num_rows() {
                let key: Vec<String> = (0..keys).map(|c| fmt(b.column(c), i)).collect();
                let vals: Vec<String> = (keys..b.num_columns())
                    .map(|c| fmt(b.column(c), i))
                    .collect();
                out.insert(key.join(","), vals.join(" "));
            }
        }
        out
    }

    fn cell_text(c: &ArrayRef, i: usize) -> String {
        if c.is_null(i) {
            return "null".into();
        }
        match c.data_type() {
            DataType::Int64 => c.as_primitive::<Int64Type>().value(i).to_string(),
            DataType::Float64 => c.as_primitive::<Float64Type>().value(i).to_string(),
            DataType::Utf8 => c.as_string::<i32>().value(i).to_string(),
            DataType::Boolean => c.as_boolean().value(i).to_string(),
            t => panic!("unexpected {t}"),
        }
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn sums_counts_and_extremes_per_text_key_match_a_row_by_row_computation() {
        let cats = [
            "b",
            "a",
            "c",
            "a",
            "b",
            "a",
            "a-long-category-name-past-inline",
        ];
        let amounts = [1.5, 2.0, f64::NAN, -4.0, 8.0, 0.25, 3.0];
        let qty = [Some(3), None, Some(7), Some(-2), None, Some(10), Some(1)];
        let plain = batch(vec![
            (
                "category",
                Arc::new(StringArray::from(cats.to_vec())) as ArrayRef,
            ),
            ("amount", Arc::new(Float64Array::from(amounts.to_vec()))),
            ("qty", Arc::new(Int32Array::from(qty.to_vec()))),
        ]);
        let dict: DictionaryArray<Int32Type> = cats.iter().copied().collect();
        let dictionary = batch(vec![
            ("category", Arc::new(dict) as ArrayRef),
            ("amount", Arc::new(Float64Array::from(amounts.to_vec()))),
            ("qty", Arc::new(Int32Array::from(qty.to_vec()))),
        ]);
        let s = spec(
            &["category"],
            vec![
                Agg::count(),
                Agg::sum("amount"),
                Agg::count_of("qty"),
                Agg::sum("qty").alias("q"),
                Agg::min("qty"),
                Agg::max("amount"),
                Agg::mean("qty"),
            ],
        );
        // Expected, row by row: rows, sum(amount), count(qty), sum(qty), min(qty),
        // max(amount) and whether a NaN was seen.
        type Want = (u64, f64, u64, i64, Option<i64>, f64, bool);
        let mut want: BTreeMap<String, Want> = BTreeMap::new();
        for _ in 0..2 {
            for i in 0..cats.len() {
                let e = want.entry(cats[i].to_string()).or_insert((
                    0,
                    0.0,
                    0,
                    0,
                    None,
                    f64::NEG_INFINITY,
                    false,
                ));
                e.0 += 1;
                e.1 += amounts[i];
                if let Some(q) = qty[i] {
                    e.2 += 1;
                    e.3 += q as i64;
                    e.4 = Some(e.4.map_or(q as i64, |m| m.min(q as i64)));
                }
                if amounts[i].is_nan() || e.6 {
                    e.6 = true;
                } else {
                    e.5 = e.5.max(amounts[i]);
                }
            }
        }
        let want: BTreeMap<String, String> = want
            .into_iter()
            .map(|(k, (n, sum, nq, sq, minq, maxa, nan))| {
                let max = if nan {
                    "NaN".to_string()
                } else {
                    maxa.to_string()
                };
                let opt = |x: Option<String>| x.unwrap_or("null".into());
                let v = format!(
                    "{n} {sum} {nq} {} {} {max} {}",
                    opt((nq > 0).then(|| sq.to_string())),
                    opt(minq.map(|m| m.to_string())),
                    opt((nq > 0).then(|| (sq as f64 / nq as f64).to_string())),
                );
                (k, v)
            })
            .collect();
        let got = aggregate(&s, &[plain.clone(), dictionary.clone()]).unwrap();
        assert_eq!(table(&got, 1), want);
        let names: Vec<String> = got[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "category",
                "count",
                "sum(amount)",
                "count(qty)",
                "q",
                "min(qty)",
                "max(amount)",
                "avg(qty)"
            ]
        );
    }

    #[test]
    fn integer_and_composite_keys_with_nulls() {
        let key = Int64Array::from(vec![Some(7), None, Some(7), Some(-1), None]);
        let flag = arrow_array::BooleanArray::from(vec![true, true, false, true, true]);
        let x = Int64Array::from(vec![1, 2, 3, 4, 5]);
        let b = batch(vec![
            ("k", Arc::new(key) as ArrayRef),
            ("flag", Arc::new(flag)),
            ("x", Arc::new(x)),
        ]);
        let one = aggregate(&spec(&["k"], vec![Agg::sum("x")]), std::slice::from_ref(&b)).unwrap();
        assert_eq!(
            table(&one, 1),
            BTreeMap::from([
                ("-1".to_string(), "4".to_string()),
                ("7".to_string(), "4".to_string()),
                ("null".to_string(), "7".to_string()),
            ])
        );
        // Keys below the dense table's base, then past its span (the table moves into a
        // hash map, its groups kept).
        let more = |keys: Vec<Option<i64>>, x: Vec<i64>| {
            batch(vec![
                ("k", Arc::new(Int64Array::from(keys)) as ArrayRef),
                ("x", Arc::new(Int64Array::from(x))),
            ])
        };
        let b2 = more(vec![Some(-5), Some(7), None], vec![10, 20, 30]);
        let b3 = more(
            vec![Some(3_000_000), Some(-1), Some(-5)],
            vec![100, 200, 300],
        );
        let spread = aggregate(
            &spec(&["k"], vec![Agg::sum("x"), Agg::count()]),
            &[b.clone(), b2, b3],
        )
        .unwrap();
        assert_eq!(
            table(&spread, 1),
            BTreeMap::from([
                ("-1".to_string(), "204 2".to_string()),
                ("-5".to_string(), "310 2".to_string()),
                ("3000000".to_string(), "100 1".to_string()),
                ("7".to_string(), "24 3".to_string()),
                ("null".to_string(), "37 3".to_string()),
            ])
        );
        let two = aggregate(&spec(&["k", "flag"], vec![Agg::count()]), &[b]).unwrap();
        assert_eq!(
            table(&two, 2),
            BTreeMap::from([
                ("-1,true".to_string(), "1".to_string()),
                ("7,false".to_string(), "1".to_string()),
                ("7,true".to_string(), "1".to_string()),
                ("null,true".to_string(), "2".to_string()),
            ])
        );
    }

    #[test]
    fn dictionary_keys_with_nulls_and_a_bad_index() {
        // Row 1's index (9) is out of range; `valid` says whether the row is null.
        let dict = |valid: Option<Vec<bool>>| {
            let keys = Int32Array::new(vec![1, 9, 0, 1].into(), valid.map(NullBuffer::from));
            let values = Arc::new(StringArray::from(vec!["x", "y"]));
            // SAFETY: deliberately unchecked: the index of a null slot may be anything,
            // and an invalid one must be an error, not trusted.
            let d = unsafe { DictionaryArray::<Int32Type>::new_unchecked(keys, values) };
            batch(vec![
                ("k", Arc::new(d) as ArrayRef),
                ("x", Arc::new(Int64Array::from(vec![1, 2, 4, 8]))),
            ])
        };
        let s = spec(&["k"], vec![Agg::sum("x")]);
        let null_row = dict(Some(vec![true, false, true, true]));
        assert_eq!(
            table(&aggregate(&s, &[null_row]).unwrap(), 1),
            BTreeMap::from([
                ("x".to_string(), "4".to_string()),
                ("y".to_string(), "9".to_string()),
                ("null".to_string(), "2".to_string()),
            ])
        );
        let err = aggregate(&s, &[dict(None)]).unwrap_err();
        assert!(
            err.to_string().contains(
                "column `k` (row 1 of the batch): dictionary index 9 of a dictionary of 2 values"
            ),
            "{err}"
        );
    }

    #[test]
    fn batches_sharing_a_dictionary_and_batches_with_their_own_group_alike() {
        // Two batches over one dictionary (its group numbers are kept between them,
        // and dropped when the table is handed on), then one over another dictionary
        // listing the same texts in another order.
        let shared: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let other: ArrayRef = Arc::new(StringArray::from(vec!["c", "a"]));
        let dict = |keys: Vec<i32>, values: &ArrayRef, x: Vec<i64>| {
            let d = DictionaryArray::<Int32Type>::try_new(Int32Array::from(keys), values.clone())
                .unwrap();
            batch(vec![
                ("k", Arc::new(d) as ArrayRef),
                ("x", Arc::new(Int64Array::from(x))),
            ])
        };
        let batches = [
            dict(vec![0, 1, 0], &shared, vec![1, 2, 4]),
            dict(vec![2, 2, 1], &shared, vec![8, 16, 32]),
            dict(vec![1, 0, 1], &other, vec![64, 128, 256]),
        ];
        let s = spec(&["k"], vec![Agg::sum("x"), Agg::count()]);
        assert_eq!(
            table(&aggregate(&s, &batches).unwrap(), 1),
            BTreeMap::from([
                ("a".to_string(), "325 4".to_string()),
                ("b".to_string(), "34 2".to_string()),
                ("c".to_string(), "152 3".to_string()),
            ])
        );
    }

    #[test]
    fn a_dictionary_key_without_nulls_is_summed_by_index_like_row_by_row() {
        // Dictionary keys and values without a null take `add_by_index`: every kind of
        // aggregate, a dictionary value no row uses (no group), a NaN, integer sums
        // past 64 bits, two batches sharing their dictionary and one with its own. Each
        // batch's rows repeat 8 times (fewer rows per dictionary value go row by row).
        let values: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "unused", "z"]));
        let other: ArrayRef = Arc::new(StringArray::from(vec!["z", "x"]));
        // Per batch: dictionary indexes, the dictionary, amounts and quantities.
        type Rows<'a> = Vec<(Vec<i32>, &'a ArrayRef, Vec<f64>, Vec<i64>)>;
        let rows: Rows<'_> = vec![
            (
                vec![0, 1, 0, 3],
                &values,
                vec![1.5, -2.0, 4.0, 0.25],
                vec![i64::MAX / 16, 3, i64::MAX / 16, -7],
            ),
            (
                vec![3, 3, 1, 0],
                &values,
                vec![f64::NAN, 8.0, 1.0, -0.5],
                vec![5, -9, 11, 2],
            ),
            (vec![1, 0], &other, vec![2.0, 16.0], vec![-1, -1]),
        ];
        let rows: Rows<'_> = rows
            .into_iter()
            .map(|(k, d, a, q)| (k.repeat(8), d, a.repeat(8), q.repeat(8)))
            .collect();
        let batches: Vec<RecordBatch> = rows
            .iter()
            .map(|(keys, values, amount, qty)| {
                let d = DictionaryArray::<Int32Type>::try_new(
                    Int32Array::from(keys.clone()),
                    (*values).clone(),
                )
                .unwrap();
                let note = StringArray::from_iter_values(keys.iter().map(|k| format!("n{k}")));
                batch(vec![
                    ("k", Arc::new(d) as ArrayRef),
                    ("amount", Arc::new(Float64Array::from(amount.clone()))),
                    ("qty", Arc::new(Int64Array::from(qty.clone()))),
                    ("note", Arc::new(note)),
                ])
            })
            .collect();
        let s = spec(
            &["k"],
            vec![
                Agg::count(),
                Agg::count_of("note"),
                Agg::sum("amount"),
                Agg::sum("qty"),
                Agg::min("qty"),
                Agg::max("amount"),
                Agg::mean("amount"),
            ],
        );
        // Row by row: rows, sum(amount), sum(qty) as i128, min(qty), max(amount) (NaN
        // largest).
        let mut want: BTreeMap<String, (u64, f64, i128, i64, f64)> = BTreeMap::new();
        for (keys, dict, amount, qty) in &rows {
            let dict = dict.as_string::<i32>();
            for i in 0..keys.len() {
                let e = want
                    .entry(dict.value(keys[i] as usize).to_string())
                    .or_insert((0, 0.0, 0, i64::MAX, f64::NEG_INFINITY));
                e.0 += 1;
                e.1 += amount[i];
                e.2 += qty[i] as i128;
                e.3 = e.3.min(qty[i]);
                e.4 = if e.4.is_nan() || amount[i].is_nan() {
                    f64::NAN
                } else {
                    e.4.max(amount[i])
                };
            }
        }
        // `x`'s qty sum (16 * (i64::MAX / 16) + 16 - 8) fits, after passing i64::MAX
        // on the way.
        let want: BTreeMap<String, String> = want
            .into_iter()
            .map(|(k, (n, sum, q, min, max))| {
                let mean = sum / n as f64;
                (k, format!("{n} {n} {sum} {q} {min} {max} {mean}"))
            })
            .collect();
        assert_eq!(want.len(), 3, "the unused value has no group");
        assert_eq!(table(&aggregate(&s, &batches).unwrap(), 1), want);
        let mut w = GroupWriter::new(s, 1);
        w.add(&batches[0]).unwrap();
        assert!(!w.by_index.words.is_empty(), "the batch went by index");
    }

    #[test]
    fn float_keys_group_zeros_together_and_nans_together() {
        let k = Float64Array::from(vec![
            Some(0.0),
            Some(-0.0),
            Some(f64::NAN),
            Some(-f64::NAN),
            Some(1.5),
            None,
        ]);
        let b = batch(vec![
            ("k", Arc::new(k) as ArrayRef),
            ("x", Arc::new(Int64Array::from(vec![1, 2, 4, 8, 16, 32]))),
        ]);
        let got = aggregate(&spec(&["k"], vec![Agg::sum("x")]), &[b]).unwrap();
        assert_eq!(
            table(&got, 1),
            BTreeMap::from([
                ("0".to_string(), "3".to_string()),
                ("NaN".to_string(), "12".to_string()),
                ("1.5".to_string(), "16".to_string()),
                ("null".to_string(), "32".to_string()),
            ])
        );
    }

    #[test]
    fn an_integer_sum_past_64_bits_is_an_error_naming_the_group() {
        let b = batch(vec![
            (
                "k",
                Arc::new(StringArray::from(vec!["big", "big"])) as ArrayRef,
            ),
            ("x", Arc::new(Int64Array::from(vec![i64::MAX, 1]))),
        ]);
        let err = aggregate(&spec(&["k"], vec![Agg::sum("x")]), &[b]).unwrap_err();
        assert!(
            err.to_string().contains("does not fit a 64-bit integer"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_column_or_a_text_value_column_is_an_error_naming_it() {
        let b = batch(vec![
            ("k", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("t", Arc::new(StringArray::from(vec!["x"]))),
        ]);
        let err = aggregate(
            &spec(&["nope"], vec![Agg::count()]),
            std::slice::from_ref(&b),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no column `nope`"), "{err}");
        let err = aggregate(&spec(&["k"], vec![Agg::sum("t")]), &[b]).unwrap_err();
        assert!(
            err.to_string().contains("column `t` has type Utf8"),
            "{err}"
        );
    }

    #[test]
    fn a_group_by_without_keys_or_with_two_columns_of_one_name_is_refused() {
        assert_eq!(
            spec(&[], vec![Agg::count()]).refused().as_deref(),
            Some("group_by names no column")
        );
        let twice = spec(&["k"], vec![Agg::sum("x"), Agg::count().alias("k")]);
        assert!(
            twice.refused().is_some_and(|w| w.contains("named `k`")),
            "{:?}",
            twice.refused()
        );
        assert_eq!(
            spec(&["k"], vec![Agg::sum("x"), Agg::max("x")]).refused(),
            None
        );
    }

    #[test]
    fn a_batch_round_trips_through_serde() {
        let b = batch(vec![(
            "x",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        )]);
        let bytes = postcard::to_stdvec(&Batch(b.clone())).unwrap();
        let back: Batch = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.0, b);
    }
}
