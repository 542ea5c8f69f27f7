//! The typed, lazy `Dataset<T>` API and the driver-side plan it builds.

use crate::bindings::flint::job::host;
use crate::bindings::flint::job::types as wit;
use crate::formats;
use crate::ops::{self, SplitMix};
use crate::rows::{self, Rows, fn_ref};
use crate::task::{DecodeFn, NewOpFn, NewReaderFn, NewWriterFn, ToBatchFn};
use crate::{Error, Result};
use arrow_array::RecordBatch;
use arrow_array::builder::StringBuilder;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::rc::Rc;

/// What a row type needs: it crosses between instances, so it must serialize.
pub trait Data: Serialize + DeserializeOwned + 'static {}
impl<T: Serialize + DeserializeOwned + 'static> Data for T {}

/// What a key type needs: rows are grouped and partitioned by its hash.
pub trait Key: Data + Hash + Eq {}
impl<T: Data + Hash + Eq> Key for T {}

/// How `save_as_text` writes a row: one line, fields of tuples joined by a tab.
///
/// ```
/// use flint::ToText;
/// let mut s = String::new();
/// ("word".to_string(), 3u64).write_text(&mut s);
/// assert_eq!(s, "word\t3");
/// ```
pub trait ToText {
    /// Appends this row's text (without a newline) to `out`.
    fn write_text(&self, out: &mut String);
}

macro_rules! to_text_display {
    ($($t:ty),*) => {$(
        impl ToText for $t {
            fn write_text(&self, out: &mut String) {
                use std::fmt::Write;
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
to_text_display!(
    String, str, bool, char, u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32,
    f64
);

impl<T: ToText + ?Sized> ToText for &T {
    fn write_text(&self, out: &mut String) {
        (**self).write_text(out)
    }
}

impl<T: ToText> ToText for Option<T> {
    /// `None` writes nothing.
    fn write_text(&self, out: &mut String) {
        if let Some(v) = self {
            v.write_text(out)
        }
    }
}

macro_rules! to_text_tuple {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: ToText $(, $rest: ToText)*> ToText for ($first, $($rest),*) {
            #[allow(non_snake_case)]
            fn write_text(&self, out: &mut String) {
                let ($first, $($rest),*) = self;
                $first.write_text(out);
                $( out.push('\t'); $rest.write_text(out); )*
            }
        }
    };
}
to_text_tuple!(A, B);
to_text_tuple!(A, B, C);
to_text_tuple!(A, B, C, D);

/// Where [`Dataset::persist`] keeps partitions.
///
/// ```no_run
/// # fn f(xs: flint::Dataset<u64>) {
/// let kept = xs.persist(flint::StorageLevel::DiskOnly);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageLevel {
    /// In executor memory; partitions evicted for room are dropped and recomputed.
    MemoryOnly,
    /// In executor memory; partitions evicted for room go to the executor's disk.
    MemoryAndDisk,
    /// On the executor's disk.
    DiskOnly,
}

/// A row of [`Dataset::cogroup`]: a key with its values on each side.
///
/// ```
/// let row: flint::CoGrouped<u32, f64, String> = (7, (vec![1.5], vec![]));
/// assert!(row.1.1.is_empty());
/// ```
pub type CoGrouped<K, V, W> = (K, (Vec<V>, Vec<W>));

/// A row of [`Dataset::full_outer_join`]: a key with a value of either side or both.
///
/// ```
/// let row: flint::FullJoined<u32, f64, String> = (7, (None, Some("x".into())));
/// assert!(row.1.0.is_none());
/// ```
pub type FullJoined<K, V, W> = (K, (Option<V>, Option<W>));

/// A function of this component and its captured value, as the plan names it.
fn op(func: usize, arg: Vec<u8>) -> wit::Op {
    wit::Op {
        function: fn_ref(func),
        arg,
    }
}

/// A node of the lineage a `Dataset` stands for.
pub(crate) enum LNode {
    Files {
        paths: Vec<String>,
        format: wit::ReadFormat,
        malformed: wit::Malformed,
        filter: Vec<wit::ColumnPredicate>,
        decode: wit::Op,
    },
    Inline {
        partitions: Vec<Vec<u8>>,
        decode: wit::Op,
    },
    Narrow {
        parent: Rc<LNode>,
        apply: wit::Op,
        name: &'static str,
    },
    Shuffle {
        /// (parent, map-side op, the id its kept map output goes by).
        sides: Vec<(Rc<LNode>, wit::Op, u32)>,
        partitions: Option<u32>,
        read: wit::Op,
        name: &'static str,
        /// (streamed side, probe op): how it may run as a broadcast hash join.
        probes: Vec<(u32, wit::Op)>,
    },
    Union(Vec<Rc<LNode>>),
    Coalesce {
        parent: Rc<LNode>,
        partitions: u32,
    },
    Cache {
        parent: Rc<LNode>,
        id: u32,
        level: wit::StorageLevel,
        write: wit::Op,
        read: wit::Op,
    },
    /// A transformation that could not be planned (a captured value that does not
    /// serialize); the first action reports it.
    Invalid(String),
}

/// A lazy, partitioned collection of rows of type `T`, like Spark's RDD.
///
/// Transformations return new datasets and run nothing; actions run a job on the
/// cluster. A dataset can be used by several actions (each runs its lineage again).
pub struct Dataset<T> {
    node: Rc<LNode>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Dataset<T> {
    fn clone(&self) -> Self {
        Dataset {
            node: self.node.clone(),
            _t: PhantomData,
        }
    }
}

/// The next id of something the application keeps on its executors across jobs (a
/// cached dataset, a shuffle's map output): one sequence for both, as the host files
/// them alike.
fn next_kept_id() -> u32 {
    thread_local! {
        static NEXT: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
    }
    NEXT.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        id
    })
}

/// A shuffle's side: its parent, its map-side op and a fresh id for its kept output.
fn side(parent: &Rc<LNode>, write: wit::Op) -> (Rc<LNode>, wit::Op, u32) {
    (parent.clone(), write, next_kept_id())
}

/// The encoded form of a captured value, or the node that reports why there is none.
fn encode_capture<C: Serialize>(c: &C) -> std::result::Result<Vec<u8>, Rc<LNode>> {
    postcard::to_stdvec(c).map_err(|e| {
        Rc::new(LNode::Invalid(format!(
            "a captured value of type {} does not serialize: {e}",
            std::any::type_name::<C>()
        )))
    })
}

impl<T: crate::Data> Dataset<T> {
    pub(crate) fn from_node(node: LNode) -> Self {
        Dataset {
            node: Rc::new(node),
            _t: PhantomData,
        }
    }

    fn to<U>(node: Rc<LNode>) -> Dataset<U> {
        Dataset {
            node,
            _t: PhantomData,
        }
    }

    /// The one narrow building block: `push` maps each batch of rows with the captured
    /// value `c` and a per-partition state `S`; `finish` emits what is left when the
    /// partition ends.
    pub(crate) fn stream<C, S, U, P, F>(
        &self,
        c: &C,
        push: P,
        finish: F,
        name: &'static str,
    ) -> Dataset<U>
    where
        C: crate::Data,
        S: Default + 'static,
        U: 'static,
        P: Fn(&C, &mut S, Vec<T>) -> Result<Vec<U>> + 'static,
        F: Fn(&C, &mut S) -> Result<Vec<U>> + 'static,
    {
        let _ = (push, finish);
        let arg = match encode_capture(c) {
            Ok(a) => a,
            Err(invalid) => return Self::to(invalid),
        };
        let func = ops::new_stream_op::<C, S, T, U, P, F> as NewOpFn as usize;
        self.narrow(func, arg, name)
    }

    /// A one-sided shuffle: the map side is the writer `write` makes with the captured
    /// value `c`, the reduce side the reader `read` makes (`combine_by_key` and a frame's
    /// group-by).
    pub(crate) fn shuffle_with<C: Serialize, U>(
        &self,
        c: &C,
        write: usize,
        read: usize,
        name: &'static str,
    ) -> Dataset<U> {
        let arg = match encode_capture(c) {
            Ok(a) => a,
            Err(invalid) => return Self::to(invalid),
        };
        Self::to(Rc::new(LNode::Shuffle {
            sides: vec![side(&self.node, op(write, arg))],
            partitions: None,
            read: op(read, Vec::new()),
            name,
            probes: Vec::new(),
        }))
    }

    /// A shuffle of two sides into the same partitions: each side's map side is the
    /// writer its function makes with its captured value, the reduce side the reader
    /// `read` makes with `c`, and each of `probes` (streamed side, probe op, captured
    /// value) a way to run it as a broadcast hash join (the joins of rows and of frames).
    pub(crate) fn shuffle_two<W, U, A: Serialize, C: Serialize, P: Serialize>(
        &self,
        other: &Dataset<W>,
        writers: [(usize, &A); 2],
        read: usize,
        c: &C,
        name: &'static str,
        probes: Vec<(u32, usize, P)>,
    ) -> Dataset<U> {
        let plan = || -> std::result::Result<LNode, Rc<LNode>> {
            let [(left, a), (right, b)] = writers;
            Ok(LNode::Shuffle {
                sides: vec![
                    side(&self.node, op(left, encode_capture(a)?)),
                    side(&other.node, op(right, encode_capture(b)?)),
                ],
                partitions: None,
                read: op(read, encode_capture(c)?),
                name,
                probes: probes
                    .iter()
                    .map(|(side, f, p)| Ok((*side, op(*f, encode_capture(p)?))))
                    .collect::<std::result::Result<_, Rc<LNode>>>()?,
            })
        };
        match plan() {
            Ok(node) => Self::to(Rc::new(node)),
            Err(invalid) => Self::to(invalid),
        }
    }

    /// A narrow node applying the op `func` makes, with its captured value `arg`.
    fn narrow<U>(&self, func: usize, arg: Vec<u8>, name: &'static str) -> Dataset<U> {
        Self::to(Rc::new(LNode::Narrow {
            parent: self.node.clone(),
            apply: op(func, arg),
            name,
        }))
    }

    /// One output row per input row.
    ///
    /// ```no_run
    /// # fn f(words: flint::Dataset<String>) {
    /// let lengths = words.map(|w: String| w.len() as u64);
    /// # }
    /// ```
    pub fn map<U: crate::Data, F: Fn(T) -> U + Copy + 'static>(&self, f: F) -> Dataset<U> {
        self.stream(
            &(),
            move |_: &(), _: &mut (), v: Vec<T>| Ok(v.into_iter().map(f).collect()),
            |_: &(), _: &mut ()| Ok(Vec::new()),
            "map",
        )
    }

    /// [`map`](Self::map) with a value captured from the driver program: `c` is serialized
    /// into the plan and handed to `f` by reference in every task.
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<f64>, scale: f64) {
    /// let scaled = xs.map_with(&scale, |s: &f64, x: f64| x * s);
    /// # }
    /// ```
    pub fn map_with<C: crate::Data, U: crate::Data, F: Fn(&C, T) -> U + Copy + 'static>(
        &self,
        c: &C,
        f: F,
    ) -> Dataset<U> {
        self.stream(
            c,
            move |c: &C, _: &mut (), v: Vec<T>| Ok(v.into_iter().map(|x| f(c, x)).collect()),
            |_: &C, _: &mut ()| Ok(Vec::new()),
            "map",
        )
    }

    /// Zero or more output rows per input row.
    ///
    /// ```no_run
    /// # fn f(lines: flint::Dataset<String>) {
    /// let words = lines.flat_map(|l: String| l.split(' ').map(str::to_owned).collect::<Vec<_>>());
    /// # }
    /// ```
    ///
    /// The rows `f` makes of one row are handed on a batch at a time, so one row may make
    /// more than memory holds (`f` can return a lazy iterator, such as a range).
    pub fn flat_map<U, I, F>(&self, f: F) -> Dataset<U>
    where
        U: crate::Data,
        I: IntoIterator<Item = U> + 'static,
        I::IntoIter: 'static,
        F: Fn(T) -> I + Copy + 'static,
    {
        let _ = f;
        self.flat_map_with(&(), move |_: &(), x: T| f(x))
    }

    /// [`flat_map`](Self::flat_map) with a captured value.
    ///
    /// ```no_run
    /// # fn f(lines: flint::Dataset<String>) {
    /// let sep = ",".to_string();
    /// let fields = lines.flat_map_with(&sep, |s: &String, l: String| {
    ///     l.split(s.as_str()).map(str::to_owned).collect::<Vec<_>>()
    /// });
    /// # }
    /// ```
    pub fn flat_map_with<C, U, I, F>(&self, c: &C, f: F) -> Dataset<U>
    where
        C: crate::Data,
        U: crate::Data,
        I: IntoIterator<Item = U> + 'static,
        I::IntoIter: 'static,
        F: Fn(&C, T) -> I + Copy + 'static,
    {
        let _ = f;
        let arg = match encode_capture(c) {
            Ok(a) => a,
            Err(invalid) => return Self::to(invalid),
        };
        let func = ops::new_flat_map_op::<C, T, I, F> as NewOpFn as usize;
        self.narrow(func, arg, "flat_map")
    }

    /// The rows for which `f` is true.
    ///
    /// ```no_run
    /// # fn f(lines: flint::Dataset<String>) {
    /// let errors = lines.filter(|l: &String| l.contains("ERROR"));
    /// # }
    /// ```
    pub fn filter<F: Fn(&T) -> bool + Copy + 'static>(&self, f: F) -> Dataset<T> {
        self.stream(
            &(),
            move |_: &(), _: &mut (), mut v: Vec<T>| {
                v.retain(f);
                Ok(v)
            },
            |_: &(), _: &mut ()| Ok(Vec::new()),
            "filter",
        )
    }

    /// The rows of a source whose columns pass `p`: the host checks it before the rows
    /// reach the job, and does not read what cannot pass: files under `column=value/`
    /// directories whose value fails, Parquet row groups whose min/max statistics (or
    /// null counts) rule every row out. `p` names columns of the source's files (a
    /// Parquet column need not be a field of `T`; a CSV or JSON column must be) or its
    /// partition directories.
    ///
    /// It applies to a source's rows as read (`ctx.parquet(..)?.filter_columns(..)`);
    /// after a transformation, columns have no names: use [`filter`](Self::filter).
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Flight { carrier: String, dep_delay: Option<i64> }
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// use flint::col;
    /// let late = ctx
    ///     .parquet::<Flight>("flights/")?
    ///     .filter_columns(col("year").eq(2013).and(col("dep_delay").gt(60)));
    /// # Ok(()) }
    /// ```
    pub fn filter_columns(&self, p: crate::Predicate) -> Dataset<T> {
        let node = match &*self.node {
            LNode::Files {
                paths,
                format,
                malformed,
                filter,
                decode,
            } => LNode::Files {
                paths: paths.clone(),
                format: format.clone(),
                malformed: *malformed,
                filter: filter.iter().cloned().chain(p.0).collect(),
                decode: decode.clone(),
            },
            LNode::Invalid(why) => LNode::Invalid(why.clone()),
            _ => LNode::Invalid(
                "filter_columns applies to the rows a source reads (ctx.parquet(..)?.filter_columns(..)); after a transformation use filter".into(),
            ),
        };
        Self::to(Rc::new(node))
    }

    /// [`filter`](Self::filter) with a captured value, such as a threshold read from the
    /// job's arguments.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context, xs: flint::Dataset<u64>) -> flint::Result<()> {
    /// let [min] = ctx.args()?;
    /// let min: u64 = min.parse()?;
    /// let big = xs.filter_with(&min, |min: &u64, x: &u64| x >= min);
    /// # Ok(()) }
    /// ```
    pub fn filter_with<C: crate::Data, F: Fn(&C, &T) -> bool + Copy + 'static>(
        &self,
        c: &C,
        f: F,
    ) -> Dataset<T> {
        self.stream(
            c,
            move |c: &C, _: &mut (), mut v: Vec<T>| {
                v.retain(|x| f(c, x));
                Ok(v)
            },
            |_: &C, _: &mut ()| Ok(Vec::new()),
            "filter",
        )
    }

    /// Applies `f` to each whole partition: `f` gets an iterator over the partition's
    /// rows ([`Partition`], Spark's `Iterator[T]`) and returns the partition's output,
    /// which is handed on a batch at a time as `f`'s iterator yields it. A partition
    /// larger than the task's memory is spilled and read back as `f` iterates.
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<u64>) {
    /// // One row per partition: its sum.
    /// let sums = xs.map_partitions(|rows: flint::Partition<u64>| [rows.sum::<u64>()]);
    /// // Lazily: a running total, never holding the partition's output.
    /// let running = xs.map_partitions(|rows: flint::Partition<u64>| {
    ///     rows.scan(0u64, |t, x| {
    ///         *t += x;
    ///         Some(*t)
    ///     })
    /// });
    /// # }
    /// ```
    ///
    /// [`Partition`]: crate::Partition
    pub fn map_partitions<U, I, F>(&self, f: F) -> Dataset<U>
    where
        U: crate::Data,
        I: IntoIterator<Item = U> + 'static,
        I::IntoIter: 'static,
        F: Fn(crate::Partition<T>) -> I + Copy + 'static,
    {
        let _ = f;
        let func = ops::new_partition_op::<T, I, F> as NewOpFn as usize;
        self.narrow(func, Vec::new(), "map_partitions")
    }

    /// Pairs each row with a key computed from it.
    ///
    /// ```no_run
    /// # fn f(words: flint::Dataset<String>) {
    /// let by_len = words.key_by(|w: &String| w.len());
    /// # }
    /// ```
    pub fn key_by<K: crate::Data, F: Fn(&T) -> K + Copy + 'static>(&self, f: F) -> Dataset<(K, T)> {
        self.stream(
            &(),
            move |_: &(), _: &mut (), v: Vec<T>| Ok(v.into_iter().map(|x| (f(&x), x)).collect()),
            |_: &(), _: &mut ()| Ok(Vec::new()),
            "key_by",
        )
    }

    /// A random sample without replacement: each row is kept with probability
    /// `fraction`. The same `seed` gives the same sample of the same input.
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<u64>) {
    /// let about_a_tenth = xs.sample(0.1, 42);
    /// # }
    /// ```
    pub fn sample(&self, fraction: f64, seed: u64) -> Dataset<T> {
        self.stream(
            &(fraction, seed),
            |c: &(f64, u64), rng: &mut Option<SplitMix>, mut v: Vec<T>| {
                let rng = rng.get_or_insert_with(|| {
                    let p = crate::task_context().map_or(0, |t| t.partition as u64);
                    SplitMix(c.1 ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                });
                v.retain(|_| rng.next_f64() < c.0);
                Ok(v)
            },
            |_: &(f64, u64), _: &mut Option<SplitMix>| Ok(Vec::new()),
            "sample",
        )
    }

    /// The rows of `self` then those of `other`, without a shuffle: the result has the
    /// partitions of both.
    ///
    /// ```no_run
    /// # fn f(a: flint::Dataset<String>, b: flint::Dataset<String>) {
    /// let both = a.union(&b);
    /// # }
    /// ```
    pub fn union(&self, other: &Dataset<T>) -> Dataset<T> {
        Self::to(Rc::new(LNode::Union(vec![
            self.node.clone(),
            other.node.clone(),
        ])))
    }

    /// At most `partitions` partitions, each reading several consecutive ones of this
    /// dataset, without a shuffle (Spark's `coalesce(n, shuffle = false)`).
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<String>) -> flint::Result<()> {
    /// xs.coalesce(1).save_as_text("out/one-file")?;
    /// # Ok(()) }
    /// ```
    pub fn coalesce(&self, partitions: u32) -> Dataset<T> {
        Self::to(Rc::new(LNode::Coalesce {
            parent: self.node.clone(),
            partitions: partitions.max(1),
        }))
    }

    /// Exactly `partitions` partitions of about equal size, through a shuffle (round
    /// robin).
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<String>) {
    /// let spread = xs.repartition(16);
    /// # }
    /// ```
    pub fn repartition(&self, partitions: u32) -> Dataset<T> {
        self.row_shuffle(
            &(),
            |_: &(), _: &T, n: u32, i: u64| (i % n as u64) as u32,
            ops::new_row_pass_reader::<T> as NewReaderFn,
            Vec::new(),
            Some(partitions.max(1)),
            "repartition",
        )
    }

    fn row_shuffle<C: crate::Data, Pl: Fn(&C, &T, u32, u64) -> u32 + 'static>(
        &self,
        c: &C,
        place: Pl,
        read: NewReaderFn,
        read_arg: Vec<u8>,
        partitions: Option<u32>,
        name: &'static str,
    ) -> Dataset<T> {
        let _ = place;
        let arg = match encode_capture(c) {
            Ok(a) => a,
            Err(invalid) => return Self::to(invalid),
        };
        let write = ops::new_row_writer::<C, T, Pl> as NewWriterFn as usize;
        Self::to(Rc::new(LNode::Shuffle {
            sides: vec![side(&self.node, op(write, arg))],
            partitions,
            read: op(read as usize, read_arg),
            name,
            probes: Vec::new(),
        }))
    }

    /// Sets the partition count of the shuffle that produced this dataset (the result of
    /// a wide operation such as `reduce_by_key` or `join`); any other dataset is
    /// [`repartition`](Self::repartition)ed into `partitions`. Without it, a shuffle has
    /// the setting `shuffle.partitions`, else as many partitions as its widest input.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let counts = pairs.reduce_by_key(|a, b| a + b).with_partitions(8);
    /// # }
    /// ```
    pub fn with_partitions(&self, partitions: u32) -> Dataset<T> {
        match &*self.node {
            LNode::Shuffle {
                sides,
                read,
                name,
                probes,
                ..
            } => Self::to(Rc::new(LNode::Shuffle {
                // Other reduce partitions: other map outputs, kept under other ids.
                sides: sides.iter().map(|(p, w, _)| side(p, w.clone())).collect(),
                partitions: Some(partitions.max(1)),
                read: read.clone(),
                name,
                probes: probes.clone(),
            })),
            _ => self.repartition(partitions),
        }
    }

    /// The rows sorted by `key`, globally: partition `i`'s keys all come before
    /// partition `i + 1`'s, so saved part files are in order. Runs a small job first
    /// that samples keys to choose the partitions' ranges, as Spark's `sortBy` does.
    ///
    /// ```no_run
    /// # fn f(counts: flint::Dataset<(String, u64)>) -> flint::Result<()> {
    /// let by_count = counts.sort_by(|(_, n): &(String, u64)| *n, false)?;
    /// # Ok(()) }
    /// ```
    pub fn sort_by<K, F>(&self, key: F, ascending: bool) -> Result<Dataset<T>>
    where
        K: crate::Data + Ord,
        F: Fn(&T) -> K + Copy + 'static,
    {
        self.sort_by_into(key, ascending, None)
    }

    /// [`sort_by`](Self::sort_by) into `partitions` partitions (default: the setting
    /// `shuffle.partitions`, else as many as this dataset has).
    pub fn sort_by_into<K, F>(
        &self,
        key: F,
        ascending: bool,
        partitions: Option<u32>,
    ) -> Result<Dataset<T>>
    where
        K: crate::Data + Ord,
        F: Fn(&T) -> K + Copy + 'static,
    {
        let wanted = partitions.or_else(|| setting_u32("shuffle.partitions"));
        let per_partition = 20 * wanted.unwrap_or(1).max(3) as u64;
        // One row per input partition: a reservoir sample of its keys.
        let samples: Vec<Vec<K>> = self
            .stream(
                &per_partition,
                move |cap: &u64, s: &mut (u64, Vec<K>, SplitMix), v: Vec<T>| {
                    for x in v {
                        s.0 += 1;
                        if (s.1.len() as u64) < *cap {
                            s.1.push(key(&x));
                        } else {
                            let j = (s.2.next_f64() * s.0 as f64) as u64;
                            if j < *cap {
                                s.1[j as usize] = key(&x);
                            }
                        }
                    }
                    Ok(Vec::new())
                },
                |_: &u64, s: &mut (u64, Vec<K>, SplitMix)| Ok(vec![std::mem::take(&mut s.1)]),
                "sample_keys",
            )
            .collect()?;
        let n = wanted.unwrap_or(samples.len() as u32).max(1);
        let mut keys: Vec<K> = samples.into_iter().flatten().collect();
        keys.sort();
        let bounds: Vec<K> = if keys.is_empty() {
            Vec::new()
        } else {
            let len = keys.len();
            let picks: Vec<usize> = (1..n as usize).map(|i| i * len / n as usize).collect();
            let mut out = Vec::with_capacity(picks.len());
            let mut it = keys.into_iter().enumerate();
            for p in picks {
                for (i, k) in it.by_ref() {
                    if i == p {
                        out.push(k);
                        break;
                    }
                }
            }
            out
        };
        let read_arg = postcard::to_stdvec(&ascending)?;
        Ok(self.row_shuffle(
            &(bounds, ascending),
            move |c: &(Vec<K>, bool), r: &T, n: u32, _| {
                let k = key(r);
                let below = c.0.partition_point(|b| *b < k) as u32;
                let i = below.min(n - 1);
                if c.1 { i } else { n - 1 - i }
            },
            ops::new_sort_reader::<T, K, F> as NewReaderFn,
            read_arg,
            Some(n),
            "sort_by",
        ))
    }

    /// Keeps this dataset on the executors once an action computed it, at `level`: later
    /// actions read the kept partitions instead of recomputing the lineage. Each
    /// executor keeps them in memory up to `executor.cache_memory`, then evicts the least
    /// recently used: to its disk ([`StorageLevel::MemoryAndDisk`]) or dropped
    /// ([`StorageLevel::MemoryOnly`]). A partition that is dropped, or lost with its
    /// executor, is recomputed from lineage when next needed. Tasks that read a kept
    /// partition run on the executor that holds it when it has a free slot.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// use flint::StorageLevel;
    /// let words = ctx
    ///     .text_file("corpus/")?
    ///     .flat_map(|l: String| l.split(' ').map(str::to_owned).collect::<Vec<_>>())
    ///     .persist(StorageLevel::MemoryAndDisk);
    /// let n = words.count()?; // computes and keeps the partitions
    /// let distinct = words.distinct().count()?; // reads them back
    /// # Ok(()) }
    /// ```
    pub fn persist(&self, level: StorageLevel) -> Dataset<T> {
        let id = next_kept_id();
        let write = ops::new_keep_writer::<T> as NewWriterFn as usize;
        let read = ops::new_row_pass_reader::<T> as NewReaderFn as usize;
        Self::to(Rc::new(LNode::Cache {
            parent: self.node.clone(),
            id,
            level: match level {
                StorageLevel::MemoryOnly => wit::StorageLevel::MemoryOnly,
                StorageLevel::MemoryAndDisk => wit::StorageLevel::MemoryAndDisk,
                StorageLevel::DiskOnly => wit::StorageLevel::DiskOnly,
            },
            write: op(write, Vec::new()),
            read: op(read, Vec::new()),
        }))
    }

    /// [`persist`](Self::persist) in memory only, as Spark's `cache`.
    ///
    /// ```no_run
    /// # fn f(links: flint::Dataset<(String, Vec<String>)>) {
    /// let links = links.cache();
    /// # }
    /// ```
    pub fn cache(&self) -> Dataset<T> {
        self.persist(StorageLevel::MemoryOnly)
    }

    /// Drops this dataset's kept partitions on every executor (nothing for a dataset
    /// that was not persisted). Later actions recompute it.
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<u64>) -> flint::Result<()> {
    /// let kept = xs.cache();
    /// kept.count()?;
    /// kept.unpersist();
    /// # Ok(()) }
    /// ```
    pub fn unpersist(&self) {
        if let LNode::Cache { id, .. } = &*self.node {
            host::unpersist(*id);
        }
    }

    /// The distinct rows.
    ///
    /// ```no_run
    /// # fn f(words: flint::Dataset<String>) {
    /// let vocabulary = words.distinct();
    /// # }
    /// ```
    pub fn distinct(&self) -> Dataset<T>
    where
        T: crate::Key,
    {
        self.map(|x: T| (x, ()))
            .reduce_by_key(|a: (), _: ()| a)
            .map(|(x, _): (T, ())| x)
    }

    // ------------------------------------------------------------------ actions

    /// All rows, brought back to the driver program. Refused when the rows exceed
    /// `driver.max_result_size` (default 1 GiB): write large results with a `save_as_*`.
    ///
    /// ```no_run
    /// # fn f(ds: flint::Dataset<u64>) -> flint::Result<()> {
    /// let all: Vec<u64> = ds.collect()?;
    /// # Ok(()) }
    /// ```
    pub fn collect(&self) -> Result<Vec<T>> {
        self.collect_limit(None)
    }

    /// All rows, or with `limit` at least that many where there are (rows of the first
    /// partitions first).
    fn collect_limit(&self, limit: Option<u64>) -> Result<Vec<T>> {
        let encode = rows::encode_rows_op::<T> as ToBatchFn as usize;
        let action = wit::Action::Collect(wit::Collect {
            encode: op(encode, Vec::new()),
            limit,
        });
        match self.run(action)? {
            wit::ActionResult::Rows(streams) => {
                let mut out = Vec::new();
                for s in streams {
                    for batch in rows::read_ipc(s)? {
                        out.extend(rows::decode_rows::<T>(&batch)?);
                    }
                }
                Ok(out)
            }
            _ => Err(Error::msg("driver answered collect with something else")),
        }
    }

    /// The number of rows.
    ///
    /// ```no_run
    /// # fn f(ds: flint::Dataset<String>) -> flint::Result<()> {
    /// let n: u64 = ds.count()?;
    /// # Ok(()) }
    /// ```
    pub fn count(&self) -> Result<u64> {
        match self.run(wit::Action::Count)? {
            wit::ActionResult::Count(n) => Ok(n),
            _ => Err(Error::msg("driver answered count with something else")),
        }
    }

    /// The first `n` rows, in partition order. Each task sends back at most `n` rows.
    ///
    /// As in Spark, partitions are read in rounds, each its own job: the first partition,
    /// then up to four times as many partitions as were read so far (fewer when the rows
    /// found so far say fewer will do), until `n` rows are found. `first()` on a large
    /// file reads one split. Where the dataset is read from a shuffle that is not cached,
    /// every round would recompute the shuffle's input, so all partitions are read in one
    /// job instead.
    ///
    /// ```no_run
    /// # fn f(lines: flint::Dataset<String>) -> flint::Result<()> {
    /// for l in lines.take(5)? { println!("{l}"); }
    /// # Ok(()) }
    /// ```
    pub fn take(&self, n: usize) -> Result<Vec<T>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut v = self
            .stream(
                &(n as u64),
                |n: &u64, s: &mut Vec<T>, v: Vec<T>| {
                    let room = (*n as usize).saturating_sub(s.len());
                    s.extend(v.into_iter().take(room));
                    Ok(Vec::new())
                },
                |_: &u64, s: &mut Vec<T>| Ok(std::mem::take(s)),
                "take",
            )
            .collect_limit(Some(n as u64))?;
        v.truncate(n);
        Ok(v)
    }

    /// The first row, if any.
    ///
    /// ```no_run
    /// # fn f(lines: flint::Dataset<String>) -> flint::Result<()> {
    /// let header: Option<String> = lines.first()?;
    /// # Ok(()) }
    /// ```
    pub fn first(&self) -> Result<Option<T>> {
        Ok(self.take(1)?.into_iter().next())
    }

    /// The `n` rows with the largest `by` keys, largest first.
    ///
    /// ```no_run
    /// # fn f(counts: flint::Dataset<(String, u64)>) -> flint::Result<()> {
    /// let top10 = counts.top(10, |(_, n): &(String, u64)| *n)?;
    /// # Ok(()) }
    /// ```
    pub fn top<K: Ord + 'static, F: Fn(&T) -> K + Copy + 'static>(
        &self,
        n: usize,
        by: F,
    ) -> Result<Vec<T>> {
        fn keep<T, K: Ord>(v: &mut Vec<T>, n: usize, by: impl Fn(&T) -> K) {
            v.sort_by_key(|x| std::cmp::Reverse(by(x)));
            v.truncate(n);
        }
        let mut v = self
            .stream(
                &(n as u64),
                move |n: &u64, s: &mut Vec<T>, v: Vec<T>| {
                    s.extend(v);
                    if s.len() > 2 * *n as usize + 1024 {
                        keep(s, *n as usize, by);
                    }
                    Ok(Vec::new())
                },
                move |n: &u64, s: &mut Vec<T>| {
                    keep(s, *n as usize, by);
                    Ok(std::mem::take(s))
                },
                "top",
            )
            .collect()?;
        keep(&mut v, n, by);
        Ok(v)
    }

    /// Merges all rows with `f` (associative and commutative): each task reduces its
    /// partition, the driver program merges the partial results. `None` when empty.
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<u64>) -> flint::Result<()> {
    /// let max = xs.reduce(|a, b| a.max(b))?;
    /// # Ok(()) }
    /// ```
    pub fn reduce<F: Fn(T, T) -> T + Copy + 'static>(&self, f: F) -> Result<Option<T>> {
        let partial = self
            .stream(
                &(),
                move |_: &(), s: &mut Option<T>, v: Vec<T>| {
                    for x in v {
                        *s = Some(match s.take() {
                            Some(a) => f(a, x),
                            None => x,
                        });
                    }
                    Ok(Vec::new())
                },
                |_: &(), s: &mut Option<T>| Ok(s.take().into_iter().collect()),
                "reduce",
            )
            .collect()?;
        Ok(partial.into_iter().reduce(f))
    }

    /// Folds all rows into `zero` with `f`: each partition from `zero`, then the partial
    /// results from `zero` again, as Spark's `fold` (so `zero` must be neutral for `f`).
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<u64>) -> flint::Result<()> {
    /// let total = xs.fold(0, |a, b| a + b)?;
    /// # Ok(()) }
    /// ```
    pub fn fold<F: Fn(T, T) -> T + Copy + 'static>(&self, zero: T, f: F) -> Result<T>
    where
        T: Clone,
    {
        let partial = self
            .stream(
                &zero,
                move |z: &T, s: &mut Option<T>, v: Vec<T>| {
                    let mut acc = s.take().unwrap_or_else(|| z.clone());
                    for x in v {
                        acc = f(acc, x);
                    }
                    *s = Some(acc);
                    Ok(Vec::new())
                },
                |z: &T, s: &mut Option<T>| Ok(vec![s.take().unwrap_or_else(|| z.clone())]),
                "fold",
            )
            .collect()?;
        Ok(partial.into_iter().fold(zero, f))
    }

    /// How many times each distinct row occurs.
    ///
    /// ```no_run
    /// # fn f(words: flint::Dataset<String>) -> flint::Result<()> {
    /// let freq = words.count_by_value()?;
    /// # Ok(()) }
    /// ```
    pub fn count_by_value(&self) -> Result<HashMap<T, u64>>
    where
        T: crate::Key,
    {
        Ok(self
            .map(|x: T| (x, 1u64))
            .reduce_by_key(|a: u64, b: u64| a + b)
            .collect()?
            .into_iter()
            .collect())
    }

    /// Runs `f` on each partition's rows for its side effects. Tasks run sandboxed: what
    /// `f` can affect is what the sandbox grants, such as its printed output (kept in
    /// the task's record in the UI).
    ///
    /// ```no_run
    /// # fn f(xs: flint::Dataset<u64>) -> flint::Result<()> {
    /// xs.foreach_partition(|rows: flint::Partition<u64>| println!("{} rows", rows.count()))?;
    /// # Ok(()) }
    /// ```
    pub fn foreach_partition<F: Fn(crate::Partition<T>) + Copy + 'static>(
        &self,
        f: F,
    ) -> Result<()> {
        self.map_partitions(move |rows: crate::Partition<T>| {
            f(rows);
            std::iter::empty::<()>()
        })
        .renamed("foreach_partition")
        .count()?;
        Ok(())
    }

    /// Writes the rows as text, one `part-NNNNN` file per partition in the directory
    /// `path`, committed atomically: after a failure, `path` does not exist. An existing
    /// non-empty `path` is an error; [`write`](Self::write) chooses otherwise, and
    /// compression.
    ///
    /// ```no_run
    /// # fn f(counts: flint::Dataset<(String, u64)>) -> flint::Result<()> {
    /// counts.save_as_text("out/counts")?; // lines like `word\t3`
    /// # Ok(()) }
    /// ```
    pub fn save_as_text(&self, path: &str) -> Result<()>
    where
        T: ToText,
    {
        self.write().text(path)
    }

    /// Writes the rows as CSV with a header line, one `part-NNNNN.csv` per partition,
    /// committed atomically. `T` is a struct; its fields are the columns.
    ///
    /// ```no_run
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Total { region: String, amount: f64 }
    /// # fn f(totals: flint::Dataset<Total>) -> flint::Result<()> {
    /// totals.save_as_csv("out/totals")?;
    /// # Ok(()) }
    /// ```
    pub fn save_as_csv(&self, path: &str) -> Result<()> {
        self.write().csv(path)
    }

    /// Writes the rows as JSON lines (one object per row), one `part-NNNNN.jsonl` per
    /// partition, committed atomically.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Total { region: String, amount: f64 }
    /// # fn f(totals: flint::Dataset<Total>) -> flint::Result<()> {
    /// totals.save_as_json_lines("out/totals")?;
    /// # Ok(()) }
    /// ```
    pub fn save_as_json_lines(&self, path: &str) -> Result<()> {
        self.write().json_lines(path)
    }

    /// Writes the rows as zstd-compressed Parquet, one `part-NNNNN.parquet` per
    /// partition, committed atomically. The schema comes from `T`'s fields.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Total { region: String, amount: f64 }
    /// # fn f(totals: flint::Dataset<Total>) -> flint::Result<()> {
    /// totals.save_as_parquet("out/totals")?;
    /// # Ok(()) }
    /// ```
    pub fn save_as_parquet(&self, path: &str) -> Result<()> {
        self.write().parquet(path)
    }

    /// Writes the rows in the Arrow IPC file format, one `part-NNNNN.arrow` per
    /// partition, committed atomically.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Total { region: String, amount: f64 }
    /// # fn f(totals: flint::Dataset<Total>) -> flint::Result<()> {
    /// totals.save_as_arrow("out/totals")?;
    /// # Ok(()) }
    /// ```
    pub fn save_as_arrow(&self, path: &str) -> Result<()> {
        self.write().arrow(path)
    }

    /// How to save the rows, as Spark's `DataFrameWriter`: a [`SaveMode`] for an output
    /// that exists, a [`Codec`], Hive-style partition directories; then the format.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Flight { year: i64, carrier: String, delay: Option<i64> }
    /// # fn f(flights: flint::Dataset<Flight>) -> flint::Result<()> {
    /// use flint::{Codec, SaveMode};
    /// flights
    ///     .write()
    ///     .mode(SaveMode::Overwrite)
    ///     .partition_by(["year", "carrier"]) // out/year=2013/carrier=UA/part-00000.parquet
    ///     .compression(Codec::Snappy)
    ///     .parquet("out")?;
    /// # Ok(()) }
    /// ```
    pub fn write(&self) -> Writer<'_, T> {
        Writer {
            data: self,
            mode: SaveMode::ErrorIfExists,
            compression: None,
            partition_by: Vec::new(),
        }
    }

    fn run(&self, action: wit::Action) -> Result<wit::ActionResult> {
        let plan = flatten(&self.node)?;
        host::run_action(&plan, &action).map_err(Error::from_chain)
    }
}

/// What a save does when its output directory already holds files (Spark's `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaveMode {
    /// Fail the job (the default).
    #[default]
    ErrorIfExists,
    /// Replace the output once the job has succeeded.
    Overwrite,
    /// Add part files beside those there.
    Append,
    /// Do nothing when there is output already.
    Ignore,
}

/// How saved files are compressed: whole files for text, CSV and JSON lines (`gzip`,
/// `zstd`, `bzip2`; the part files get `.gz`, `.zst`, `.bz2`), pages for Parquet (all
/// but `bzip2`; zstd by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Uncompressed,
    Snappy,
    Gzip,
    Zstd,
    Lz4,
    Brotli,
    Bzip2,
}

/// A save being configured: see [`Dataset::write`].
#[must_use = "a writer saves nothing until a format is chosen"]
pub struct Writer<'a, T> {
    data: &'a Dataset<T>,
    mode: SaveMode,
    compression: Option<Codec>,
    partition_by: Vec<String>,
}

impl<T: Data> Writer<'_, T> {
    pub fn mode(mut self, mode: SaveMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn compression(mut self, codec: Codec) -> Self {
        self.compression = Some(codec);
        self
    }

    /// One directory level per column, `column=value` (Hive's layout, which every
    /// source of Flint, Spark and DuckDB reads back with the columns restored); the files
    /// leave the columns out. Not for text.
    pub fn partition_by<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.partition_by = columns.into_iter().map(Into::into).collect();
        self
    }

    pub fn text(self, path: &str) -> Result<()>
    where
        T: ToText,
    {
        let render = render_text::<T> as ToBatchFn as usize;
        self.save(path, wit::WriteFormat::Text, render)
    }

    pub fn csv(self, path: &str) -> Result<()> {
        self.typed(path, wit::WriteFormat::Csv)
    }

    pub fn json_lines(self, path: &str) -> Result<()> {
        self.typed(path, wit::WriteFormat::JsonLines)
    }

    pub fn parquet(self, path: &str) -> Result<()> {
        self.typed(path, wit::WriteFormat::Parquet)
    }

    pub fn arrow(self, path: &str) -> Result<()> {
        self.typed(path, wit::WriteFormat::ArrowIpc)
    }

    fn typed(self, path: &str, format: wit::WriteFormat) -> Result<()> {
        // Fail here, in main, when T has no columnar form.
        let fields = formats::fields_of::<T>()?;
        if let Some(c) = self
            .partition_by
            .iter()
            .find(|c| !fields.iter().any(|f| f.name() == *c))
        {
            return Err(Error::msg(format!(
                "cannot partition by `{c}`: {} has no such field",
                std::any::type_name::<T>()
            )));
        }
        let render = formats::render_typed::<T> as ToBatchFn as usize;
        self.save(path, format, render)
    }

    fn save(self, path: &str, format: wit::WriteFormat, render: usize) -> Result<()> {
        self.data.run(wit::Action::Save(wit::Save {
            path: path.to_string(),
            format,
            render: op(render, Vec::new()),
            mode: match self.mode {
                SaveMode::ErrorIfExists => wit::SaveMode::ErrorIfExists,
                SaveMode::Overwrite => wit::SaveMode::Overwrite,
                SaveMode::Append => wit::SaveMode::Append,
                SaveMode::Ignore => wit::SaveMode::Ignore,
            },
            compression: self.compression.map(|c| match c {
                Codec::Uncompressed => wit::Codec::Uncompressed,
                Codec::Snappy => wit::Codec::Snappy,
                Codec::Gzip => wit::Codec::Gzip,
                Codec::Zstd => wit::Codec::Zstd,
                Codec::Lz4 => wit::Codec::Lz4,
                Codec::Brotli => wit::Codec::Brotli,
                Codec::Bzip2 => wit::Codec::Bzip2,
            }),
            partition_by: self.partition_by,
        }))?;
        Ok(())
    }
}

fn setting_u32(key: &str) -> Option<u32> {
    host::setting(key).and_then(|v| v.trim().parse().ok())
}

impl<K: crate::Key, V: crate::Data> Dataset<(K, V)> {
    /// Applies `f` to each value, keeping keys (and their partitioning).
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let doubled = pairs.map_values(|v: u64| v * 2);
    /// # }
    /// ```
    pub fn map_values<U: crate::Data, F: Fn(V) -> U + Copy + 'static>(
        &self,
        f: F,
    ) -> Dataset<(K, U)> {
        self.stream(
            &(),
            move |_: &(), _: &mut (), v: Vec<(K, V)>| {
                Ok(v.into_iter().map(|(k, x)| (k, f(x))).collect())
            },
            |_: &(), _: &mut ()| Ok(Vec::new()),
            "map_values",
        )
    }

    /// The keys.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let words = pairs.keys();
    /// # }
    /// ```
    pub fn keys(&self) -> Dataset<K> {
        self.map(|(k, _): (K, V)| k)
    }

    /// The values.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let counts = pairs.values();
    /// # }
    /// ```
    pub fn values(&self) -> Dataset<V> {
        self.map(|(_, v): (K, V)| v)
    }

    /// Spark's `combineByKey`, the general form behind the other `*_by_key` operations:
    /// `create` makes a combiner from a key's first value (with the captured `c`),
    /// `merge` adds a value to it on the map side, `combine` merges combiners after the
    /// shuffle.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, f64)>) {
    /// // (sum, count) per key, for a mean.
    /// let sums = pairs.combine_by_key(
    ///     &(),
    ///     |_: &(), v: f64| (v, 1u64),
    ///     |(s, n): (f64, u64), v: f64| (s + v, n + 1),
    ///     |(s1, n1): (f64, u64), (s2, n2): (f64, u64)| (s1 + s2, n1 + n2),
    /// );
    /// # }
    /// ```
    pub fn combine_by_key<C, U, Cr, Mv, Mc>(
        &self,
        c: &C,
        create: Cr,
        merge: Mv,
        combine: Mc,
    ) -> Dataset<(K, U)>
    where
        C: crate::Data,
        U: crate::Data,
        Cr: Fn(&C, V) -> U + Copy + 'static,
        Mv: Fn(U, V) -> U + Copy + 'static,
        Mc: Fn(U, U) -> U + Copy + 'static,
    {
        let _ = (create, merge, combine);
        let write = ops::new_combine_writer::<C, K, V, U, Cr, Mv> as NewWriterFn as usize;
        let read = ops::new_combine_reader::<K, U, Mc> as NewReaderFn as usize;
        self.shuffle_with(c, write, read, "combine_by_key")
    }

    /// Merges the values of each key with `f` (associative and commutative), combining
    /// on the map side before the shuffle.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let counts = pairs.reduce_by_key(|a, b| a + b);
    /// # }
    /// ```
    pub fn reduce_by_key<F: Fn(V, V) -> V + Copy + 'static>(&self, f: F) -> Dataset<(K, V)> {
        self.combine_by_key(&(), |_: &(), v: V| v, f, f)
            .renamed("reduce_by_key")
    }

    /// Aggregates each key's values into a `U` starting from `zero`: `seq` adds a value
    /// on the map side, `comb` merges partial aggregates after the shuffle.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// // The largest and the number of values per key.
    /// let stats = pairs.aggregate_by_key(
    ///     (0u64, 0u64),
    ///     |(max, n): (u64, u64), v: u64| (max.max(v), n + 1),
    ///     |(m1, n1): (u64, u64), (m2, n2): (u64, u64)| (m1.max(m2), n1 + n2),
    /// );
    /// # }
    /// ```
    pub fn aggregate_by_key<U, S, C>(&self, zero: U, seq: S, comb: C) -> Dataset<(K, U)>
    where
        U: crate::Data + Clone,
        S: Fn(U, V) -> U + Copy + 'static,
        C: Fn(U, U) -> U + Copy + 'static,
    {
        self.combine_by_key(&zero, move |z: &U, v: V| seq(z.clone(), v), seq, comb)
            .renamed("aggregate_by_key")
    }

    /// All values of each key, in one group.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let groups = pairs.group_by_key();
    /// # }
    /// ```
    pub fn group_by_key(&self) -> Dataset<(K, Vec<V>)> {
        // No map-side combine (as in Spark): grouping only grows the data. The map side
        // sends each value as a group of one; the reduce side merges the groups, spilling
        // past its memory budget. One key's group must fit in memory.
        let singles = self.map_values(|v: V| vec![v]);
        let write = ops::new_key_writer::<K, Vec<V>> as NewWriterFn as usize;
        fn reader_of<K: crate::Key, U: crate::Data, Mc: Fn(U, U) -> U + Copy + 'static>(
            _: Mc,
        ) -> usize {
            ops::new_combine_reader::<K, U, Mc> as NewReaderFn as usize
        }
        let read = reader_of::<K, Vec<V>, _>(|mut a: Vec<V>, b: Vec<V>| {
            a.extend(b);
            a
        });
        Dataset::<(K, Vec<V>)>::to(Rc::new(LNode::Shuffle {
            sides: vec![side(&singles.node, op(write, Vec::new()))],
            partitions: None,
            read: op(read, Vec::new()),
            name: "group_by_key",
            probes: Vec::new(),
        }))
    }

    /// The number of rows per key, brought back to the driver program.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) -> flint::Result<()> {
    /// let per_key = pairs.count_by_key()?;
    /// # Ok(()) }
    /// ```
    pub fn count_by_key(&self) -> Result<HashMap<K, u64>> {
        Ok(self
            .map_values(|_: V| 1u64)
            .reduce_by_key(|a: u64, b: u64| a + b)
            .collect()?
            .into_iter()
            .collect())
    }

    /// The same rows, hash-partitioned by key into `partitions` partitions.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let by_key = pairs.partition_by(8);
    /// # }
    /// ```
    pub fn partition_by(&self, partitions: u32) -> Dataset<(K, V)> {
        let write = ops::new_key_writer::<K, V> as NewWriterFn as usize;
        let read = ops::new_pair_pass_reader::<K, V> as NewReaderFn as usize;
        Self::to(Rc::new(LNode::Shuffle {
            sides: vec![side(&self.node, op(write, Vec::new()))],
            partitions: Some(partitions.max(1)),
            read: op(read, Vec::new()),
            name: "partition_by",
            probes: Vec::new(),
        }))
    }

    fn cogroup_with<W, O, J>(
        &self,
        other: &Dataset<(K, W)>,
        name: &'static str,
        probes: Vec<(u32, usize)>,
    ) -> Dataset<O>
    where
        W: crate::Data,
        O: 'static,
        J: Fn(K, Vec<V>, Vec<W>, &mut ops::Out<'_, O>) -> Result<()> + 'static,
    {
        let left = ops::new_key_writer::<K, V> as NewWriterFn as usize;
        let right = ops::new_key_writer::<K, W> as NewWriterFn as usize;
        let read = ops::new_cogroup_reader::<K, V, W, O, J> as NewReaderFn as usize;
        self.shuffle_two(
            other,
            [(left, &()), (right, &())],
            read,
            &(),
            name,
            probes.into_iter().map(|(side, f)| (side, f, ())).collect(),
        )
    }

    /// For each key of either side, all its values on each side. Both sides are
    /// hash-partitioned by key (shuffled) into the same partitions.
    ///
    /// ```no_run
    /// # fn f(a: flint::Dataset<(u32, String)>, b: flint::Dataset<(u32, f64)>) {
    /// let groups = a.cogroup(&b); // (key, (names, amounts))
    /// # }
    /// ```
    pub fn cogroup<W: crate::Data>(&self, other: &Dataset<(K, W)>) -> Dataset<CoGrouped<K, V, W>> {
        self.join_by(
            other,
            |k: K, vs: Vec<V>, ws: Vec<W>, out: &mut ops::Out<'_, CoGrouped<K, V, W>>| {
                out((k, (vs, ws)))
            },
            "cogroup",
            Vec::new(),
        )
    }

    /// Pairs of values for each key found on both sides (a hash join: both sides are
    /// shuffled by key).
    ///
    /// ```no_run
    /// # fn f(orders: flint::Dataset<(u32, f64)>, customers: flint::Dataset<(u32, String)>) {
    /// let named = orders.join(&customers); // (id, (amount, name))
    /// # }
    /// ```
    pub fn join<W: crate::Data + Clone>(&self, other: &Dataset<(K, W)>) -> Dataset<(K, (V, W))>
    where
        K: Clone,
        V: Clone,
    {
        let j = |k: K, vs: Vec<V>, ws: Vec<W>, out: &mut ops::Out<'_, (K, (V, W))>| {
            for v in &vs {
                for w in &ws {
                    out((k.clone(), (v.clone(), w.clone())))?;
                }
            }
            Ok(())
        };
        // Either side may be broadcast: a row of the streamed side with the built side's
        // values of its key.
        let left = ops::probe_op(
            |k: K, v: V, ws: &[W], out: &mut ops::Out<'_, (K, (V, W))>| {
                for w in ws {
                    out((k.clone(), (v.clone(), w.clone())))?;
                }
                Ok(())
            },
        );
        let right = ops::probe_op(
            |k: K, w: W, vs: &[V], out: &mut ops::Out<'_, (K, (V, W))>| {
                for v in vs {
                    out((k.clone(), (v.clone(), w.clone())))?;
                }
                Ok(())
            },
        );
        self.join_by(other, j, "join", vec![(0, left), (1, right)])
    }

    /// Every row of `self` with each matching value of `other`, or `None` where the key
    /// has none there.
    ///
    /// ```no_run
    /// # fn f(orders: flint::Dataset<(u32, f64)>, customers: flint::Dataset<(u32, String)>) {
    /// let named = orders.left_outer_join(&customers); // (id, (amount, Option<name>))
    /// # }
    /// ```
    pub fn left_outer_join<W: crate::Data + Clone>(
        &self,
        other: &Dataset<(K, W)>,
    ) -> Dataset<(K, (V, Option<W>))>
    where
        K: Clone,
        V: Clone,
    {
        let j = |k: K, vs: Vec<V>, ws: Vec<W>, out: &mut ops::Out<'_, (K, (V, Option<W>))>| {
            for v in &vs {
                if ws.is_empty() {
                    out((k.clone(), (v.clone(), None)))?;
                }
                for w in &ws {
                    out((k.clone(), (v.clone(), Some(w.clone()))))?;
                }
            }
            Ok(())
        };
        // Only the right side may be broadcast: each left row is seen once, with or
        // without matches.
        let left = ops::probe_op(
            |k: K, v: V, ws: &[W], out: &mut ops::Out<'_, (K, (V, Option<W>))>| {
                if ws.is_empty() {
                    return out((k, (v, None)));
                }
                for w in ws {
                    out((k.clone(), (v.clone(), Some(w.clone()))))?;
                }
                Ok(())
            },
        );
        self.join_by(other, j, "left_outer_join", vec![(0, left)])
    }

    /// Every row of `other` with each matching value of `self`, or `None`.
    ///
    /// ```no_run
    /// # fn f(orders: flint::Dataset<(u32, f64)>, customers: flint::Dataset<(u32, String)>) {
    /// let all_customers = orders.right_outer_join(&customers); // (id, (Option<amount>, name))
    /// # }
    /// ```
    pub fn right_outer_join<W: crate::Data + Clone>(
        &self,
        other: &Dataset<(K, W)>,
    ) -> Dataset<(K, (Option<V>, W))>
    where
        K: Clone,
        V: Clone,
    {
        let j = |k: K, vs: Vec<V>, ws: Vec<W>, out: &mut ops::Out<'_, (K, (Option<V>, W))>| {
            for w in &ws {
                if vs.is_empty() {
                    out((k.clone(), (None, w.clone())))?;
                }
                for v in &vs {
                    out((k.clone(), (Some(v.clone()), w.clone())))?;
                }
            }
            Ok(())
        };
        // Only the left side may be broadcast.
        let right = ops::probe_op(
            |k: K, w: W, vs: &[V], out: &mut ops::Out<'_, (K, (Option<V>, W))>| {
                if vs.is_empty() {
                    return out((k, (None, w)));
                }
                for v in vs {
                    out((k.clone(), (Some(v.clone()), w.clone())))?;
                }
                Ok(())
            },
        );
        self.join_by(other, j, "right_outer_join", vec![(1, right)])
    }

    /// Rows of both sides: matching pairs, and each unmatched value with `None`.
    ///
    /// ```no_run
    /// # fn f(a: flint::Dataset<(u32, f64)>, b: flint::Dataset<(u32, String)>) {
    /// let all = a.full_outer_join(&b); // (id, (Option<amount>, Option<name>))
    /// # }
    /// ```
    pub fn full_outer_join<W: crate::Data + Clone>(
        &self,
        other: &Dataset<(K, W)>,
    ) -> Dataset<FullJoined<K, V, W>>
    where
        K: Clone,
        V: Clone,
    {
        let j = |k: K, vs: Vec<V>, ws: Vec<W>, out: &mut ops::Out<'_, FullJoined<K, V, W>>| {
            if ws.is_empty() {
                for v in vs {
                    out((k.clone(), (Some(v), None)))?;
                }
            } else if vs.is_empty() {
                for w in ws {
                    out((k.clone(), (None, Some(w))))?;
                }
            } else {
                for v in &vs {
                    for w in &ws {
                        out((k.clone(), (Some(v.clone()), Some(w.clone()))))?;
                    }
                }
            }
            Ok(())
        };
        self.join_by(other, j, "full_outer_join", Vec::new())
    }

    /// A join of both sides' values per key by `j` (shuffled), which may also run as a
    /// broadcast hash join through `probes`: (streamed side, probe op from
    /// [`ops::probe_op`]).
    fn join_by<W: crate::Data, O: 'static, J>(
        &self,
        other: &Dataset<(K, W)>,
        j: J,
        name: &'static str,
        probes: Vec<(u32, usize)>,
    ) -> Dataset<O>
    where
        J: Fn(K, Vec<V>, Vec<W>, &mut ops::Out<'_, O>) -> Result<()> + Copy + 'static,
    {
        let _ = j;
        self.cogroup_with::<W, O, J>(other, name, probes)
    }
}

impl<T> Dataset<T> {
    /// The same dataset whose last shuffle or narrow op is named `name` in stage names
    /// and the UI.
    fn renamed(mut self, name: &'static str) -> Dataset<T> {
        // Named in place when this dataset alone holds the node (it was just made): a
        // copy would drop the original, and with it what its shuffle keeps.
        if let Some(LNode::Narrow { name: n, .. } | LNode::Shuffle { name: n, .. }) =
            Rc::get_mut(&mut self.node)
        {
            *n = name;
            return self;
        }
        match &*self.node {
            LNode::Narrow { parent, apply, .. } => Dataset {
                node: Rc::new(LNode::Narrow {
                    parent: parent.clone(),
                    apply: apply.clone(),
                    name,
                }),
                _t: PhantomData,
            },
            LNode::Shuffle {
                sides,
                partitions,
                read,
                probes,
                ..
            } => Dataset {
                node: Rc::new(LNode::Shuffle {
                    sides: sides.clone(),
                    partitions: *partitions,
                    read: read.clone(),
                    name,
                    probes: probes.clone(),
                }),
                _t: PhantomData,
            },
            _ => self,
        }
    }
}

impl LNode {
    /// The parents, in plan order.
    fn parents(&self) -> Vec<&Rc<LNode>> {
        match self {
            LNode::Files { .. } | LNode::Inline { .. } | LNode::Invalid(_) => Vec::new(),
            LNode::Narrow { parent, .. }
            | LNode::Coalesce { parent, .. }
            | LNode::Cache { parent, .. } => vec![parent],
            LNode::Shuffle { sides, .. } => sides.iter().map(|(p, _, _)| p).collect(),
            LNode::Union(parents) => parents.iter().collect(),
        }
    }

    /// Moves the parents out (a placeholder takes their place), so that dropping a long
    /// lineage is a loop rather than one nested call per node.
    fn take_parents(&mut self) -> Vec<Rc<LNode>> {
        thread_local! {
            static PLACEHOLDER: Rc<LNode> = Rc::new(LNode::Invalid(String::new()));
        }
        let placeholder = || PLACEHOLDER.with(Rc::clone);
        match self {
            LNode::Files { .. } | LNode::Inline { .. } | LNode::Invalid(_) => Vec::new(),
            LNode::Narrow { parent, .. }
            | LNode::Coalesce { parent, .. }
            | LNode::Cache { parent, .. } => vec![std::mem::replace(parent, placeholder())],
            LNode::Shuffle { sides, .. } => std::mem::take(sides)
                .into_iter()
                .map(|(p, _, _)| p)
                .collect(),
            LNode::Union(parents) => std::mem::take(parents),
        }
    }
}

impl Drop for LNode {
    fn drop(&mut self) {
        // No plan can read this shuffle again: the map outputs kept for later jobs go
        // (Spark's ContextCleaner does the same for an RDD that is gone).
        if let LNode::Shuffle { sides, .. } = self
            && crate::task::task_context().is_none()
        {
            for (_, _, keep) in sides.iter() {
                host::unpersist(*keep);
            }
        }
        let mut orphans = self.take_parents();
        while let Some(n) = orphans.pop() {
            if let Ok(mut node) = Rc::try_unwrap(n) {
                orphans.extend(node.take_parents());
            }
        }
    }
}

/// Lineage → plan nodes in topological order (shared ancestors once). Walks with an
/// explicit stack: a lineage thousands of nodes long must not overflow the guest's.
fn flatten(root: &Rc<LNode>) -> Result<wit::Plan> {
    let mut index: HashMap<*const LNode, u32> = HashMap::new();
    let mut out: Vec<wit::PlanNode> = Vec::new();
    // (node, whether its parents have been pushed already)
    let mut stack: Vec<(&Rc<LNode>, bool)> = vec![(root, false)];
    while let Some((n, expanded)) = stack.pop() {
        if index.contains_key(&Rc::as_ptr(n)) {
            continue;
        }
        if !expanded {
            stack.push((n, true));
            for p in n.parents().into_iter().rev() {
                if !index.contains_key(&Rc::as_ptr(p)) {
                    stack.push((p, false));
                }
            }
            continue;
        }
        let at = |p: &Rc<LNode>| index[&Rc::as_ptr(p)];
        let node = match &**n {
            LNode::Files {
                paths,
                format,
                malformed,
                filter,
                decode,
            } => wit::PlanNode::Files(wit::FileSource {
                paths: paths.clone(),
                format: format.clone(),
                min_partitions: 0,
                malformed: *malformed,
                filter: filter.clone(),
                decode: decode.clone(),
            }),
            LNode::Inline { partitions, decode } => wit::PlanNode::Inline(wit::InlineSource {
                partitions: partitions.clone(),
                decode: decode.clone(),
            }),
            LNode::Narrow {
                parent,
                apply,
                name,
            } => wit::PlanNode::Narrow(wit::NarrowOp {
                parent: at(parent),
                apply: apply.clone(),
                name: name.to_string(),
            }),
            LNode::Shuffle {
                sides,
                partitions,
                read,
                name,
                probes,
            } => wit::PlanNode::Shuffle(wit::ShuffleOp {
                sides: sides
                    .iter()
                    .map(|(parent, write, keep)| wit::ShuffleSide {
                        parent: at(parent),
                        write: write.clone(),
                        keep: Some(*keep),
                    })
                    .collect(),
                partitions: *partitions,
                read: read.clone(),
                name: name.to_string(),
                probes: probes
                    .iter()
                    .map(|(side, probe)| wit::JoinProbe {
                        streamed: *side,
                        probe: probe.clone(),
                    })
                    .collect(),
            }),
            LNode::Union(parents) => wit::PlanNode::Union(parents.iter().map(at).collect()),
            LNode::Coalesce { parent, partitions } => wit::PlanNode::Coalesce(wit::CoalesceOp {
                parent: at(parent),
                partitions: *partitions,
            }),
            LNode::Cache {
                parent,
                id,
                level,
                write,
                read,
            } => wit::PlanNode::Cache(wit::CacheOp {
                parent: at(parent),
                id: *id,
                level: *level,
                write: write.clone(),
                read: read.clone(),
            }),
            LNode::Invalid(why) => return Err(Error::msg(why.clone())),
        };
        out.push(node);
        index.insert(Rc::as_ptr(n), out.len() as u32 - 1);
    }
    Ok(wit::Plan { nodes: out })
}

pub(crate) fn render_text<T: crate::Data + ToText>(_arg: &[u8], rows: Rows) -> Result<RecordBatch> {
    let v: Vec<T> = rows.take()?;
    let mut b = StringBuilder::with_capacity(v.len(), v.len() * 16);
    let mut line = String::new();
    for r in &v {
        line.clear();
        r.write_text(&mut line);
        b.append_value(&line);
    }
    rows::lines_batch(b)
}

/// Names of the decoders sources use.
pub(crate) fn decode_op(decode: DecodeFn) -> wit::Op {
    op(decode as usize, Vec::new())
}
