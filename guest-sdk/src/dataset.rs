//! The typed, lazy `Dataset<T>` API and the driver-side plan it builds.

use crate::bindings::flint::job::host;
use crate::bindings::flint::job::types as wit;
use crate::rows::{self, BATCH_ROWS, Rows, conjure, fn_ref};
use crate::task::{ShuffleReader, ShuffleWriter};
use crate::{Error, Result};
use arrow_array::RecordBatch;
use arrow_array::builder::StringBuilder;
use rustc_hash::{FxHashMap, FxHasher};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
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

/// What the driver program sees: its arguments and the sources it can read.
pub struct Context {
    args: Vec<String>,
}

impl Context {
    pub(crate) fn new(args: Vec<String>) -> Self {
        Context { args }
    }

    /// Exactly `N` job arguments (what follows `--` on the command line), or an error
    /// that says how many were expected.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let [input, output] = ctx.args()?;
    /// # Ok(()) }
    /// ```
    pub fn args<const N: usize>(&self) -> Result<[String; N]> {
        <[String; N]>::try_from(self.args.clone()).map_err(|got| {
            Error::msg(format!(
                "this job takes {N} argument(s), got {}: {:?}",
                got.len(),
                got
            ))
        })
    }

    /// All job arguments.
    pub fn all_args(&self) -> &[String] {
        &self.args
    }

    /// Lines of a text file, or of every file in a directory, without their `\n` or
    /// `\r\n`. Large files are split into several partitions on line boundaries. Nothing
    /// is read until an action runs; a missing path is reported then.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let lines = ctx.text_file("logs/")?;
    /// println!("{} lines", lines.count()?);
    /// # Ok(()) }
    /// ```
    pub fn text_file(&mut self, path: &str) -> Result<Dataset<String>> {
        Ok(Dataset::new(LNode::TextFile {
            paths: vec![path.to_string()],
            decode: fn_ref(rows::decode_lines as fn(&RecordBatch) -> Result<Rows> as usize),
        }))
    }
}

/// A node of the lineage a `Dataset` stands for.
enum LNode {
    TextFile {
        paths: Vec<String>,
        decode: u32,
    },
    Narrow {
        parent: Rc<LNode>,
        apply: u32,
        name: &'static str,
    },
    Shuffle {
        parent: Rc<LNode>,
        partitions: Option<u32>,
        write: u32,
        read: u32,
        name: &'static str,
    },
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

type ApplyFn = fn(Rows) -> Result<Rows>;

impl<T: Data> Dataset<T> {
    fn new(node: LNode) -> Self {
        Dataset {
            node: Rc::new(node),
            _t: PhantomData,
        }
    }

    fn narrow<U>(&self, apply: ApplyFn, name: &'static str) -> Dataset<U> {
        Dataset {
            node: Rc::new(LNode::Narrow {
                parent: self.node.clone(),
                apply: fn_ref(apply as usize),
                name,
            }),
            _t: PhantomData,
        }
    }

    /// One output row per input row.
    ///
    /// ```no_run
    /// # fn f(words: flint::Dataset<String>) {
    /// let lengths = words.map(|w: String| w.len() as u64);
    /// # }
    /// ```
    pub fn map<U: Data, F: Fn(T) -> U + Copy + 'static>(&self, f: F) -> Dataset<U> {
        let _ = f;
        self.narrow(apply_map::<T, U, F>, "map")
    }

    /// Zero or more output rows per input row.
    ///
    /// ```no_run
    /// # fn f(lines: flint::Dataset<String>) {
    /// let words = lines.flat_map(|l: String| l.split(' ').map(str::to_owned).collect::<Vec<_>>());
    /// # }
    /// ```
    pub fn flat_map<U: Data, I: IntoIterator<Item = U>, F: Fn(T) -> I + Copy + 'static>(
        &self,
        f: F,
    ) -> Dataset<U> {
        let _ = f;
        self.narrow(apply_flat_map::<T, U, I, F>, "flat_map")
    }

    /// The rows for which `f` is true.
    ///
    /// ```no_run
    /// # fn f(lines: flint::Dataset<String>) {
    /// let errors = lines.filter(|l: &String| l.contains("ERROR"));
    /// # }
    /// ```
    pub fn filter<F: Fn(&T) -> bool + Copy + 'static>(&self, f: F) -> Dataset<T> {
        let _ = f;
        self.narrow(apply_filter::<T, F>, "filter")
    }

    /// All rows, brought back to the driver program.
    ///
    /// ```no_run
    /// # fn f(ds: flint::Dataset<u64>) -> flint::Result<()> {
    /// let all: Vec<u64> = ds.collect()?;
    /// # Ok(()) }
    /// ```
    pub fn collect(&self) -> Result<Vec<T>> {
        let encode = fn_ref(encode_as_ipc::<T> as fn(Rows) -> Result<RecordBatch> as usize);
        match self.run(wit::Action::Collect(encode))? {
            wit::ActionResult::Rows(streams) => {
                let mut out = Vec::new();
                for s in streams {
                    for batch in rows::read_ipc(&s)? {
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

    /// Writes the rows as text, one `part-NNNNN` file per partition in the directory
    /// `path`, committed atomically: after a failure, `path` does not exist. An existing
    /// non-empty `path` is an error.
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
        let render = fn_ref(render_text::<T> as fn(Rows) -> Result<RecordBatch> as usize);
        self.run(wit::Action::SaveAsText(wit::SaveText {
            path: path.to_string(),
            render,
        }))?;
        Ok(())
    }

    fn run(&self, action: wit::Action) -> Result<wit::ActionResult> {
        let plan = flatten(&self.node);
        host::run_action(&plan, &action).map_err(Error::from_chain)
    }
}

impl<K: Key, V: Data> Dataset<(K, V)> {
    /// Merges the values of each key with `f` (associative and commutative), combining
    /// on the map side before the shuffle. `partitions` defaults to `shuffle.partitions`,
    /// else to the number of input partitions.
    ///
    /// ```no_run
    /// # fn f(pairs: flint::Dataset<(String, u64)>) {
    /// let counts = pairs.reduce_by_key(|a, b| a + b);
    /// # }
    /// ```
    pub fn reduce_by_key<F: Fn(V, V) -> V + Copy + 'static>(&self, f: F) -> Dataset<(K, V)> {
        self.reduce_by_key_into(None, f)
    }

    /// [`reduce_by_key`](Self::reduce_by_key) into `partitions` partitions.
    pub fn reduce_by_key_into<F: Fn(V, V) -> V + Copy + 'static>(
        &self,
        partitions: Option<u32>,
        f: F,
    ) -> Dataset<(K, V)> {
        let _ = f;
        let write =
            fn_ref(new_reduce_writer::<K, V, F> as fn(u32) -> Box<dyn ShuffleWriter> as usize);
        let read = fn_ref(new_reduce_reader::<K, V, F> as fn() -> Box<dyn ShuffleReader> as usize);
        Dataset {
            node: Rc::new(LNode::Shuffle {
                parent: self.node.clone(),
                partitions,
                write,
                read,
                name: "reduce_by_key",
            }),
            _t: PhantomData,
        }
    }
}

/// Lineage → plan nodes in topological order (shared ancestors once).
fn flatten(root: &Rc<LNode>) -> wit::Plan {
    fn visit(
        n: &Rc<LNode>,
        seen: &mut HashMap<*const LNode, u32>,
        out: &mut Vec<wit::PlanNode>,
    ) -> u32 {
        if let Some(i) = seen.get(&Rc::as_ptr(n)) {
            return *i;
        }
        let node = match &**n {
            LNode::TextFile { paths, decode } => wit::PlanNode::TextFile(wit::TextSource {
                paths: paths.clone(),
                min_partitions: 0,
                decode: *decode,
            }),
            LNode::Narrow {
                parent,
                apply,
                name,
            } => {
                let parent = visit(parent, seen, out);
                wit::PlanNode::Narrow(wit::NarrowOp {
                    parent,
                    apply: *apply,
                    name: name.to_string(),
                })
            }
            LNode::Shuffle {
                parent,
                partitions,
                write,
                read,
                name,
            } => {
                let parent = visit(parent, seen, out);
                wit::PlanNode::Shuffle(wit::ShuffleOp {
                    parent,
                    partitions: *partitions,
                    write: *write,
                    read: *read,
                    name: name.to_string(),
                })
            }
        };
        out.push(node);
        let i = out.len() as u32 - 1;
        seen.insert(Rc::as_ptr(n), i);
        i
    }
    let mut nodes = Vec::new();
    visit(root, &mut HashMap::new(), &mut nodes);
    wit::Plan { nodes }
}

fn apply_map<T: Data, U: Data, F: Fn(T) -> U>(rows: Rows) -> Result<Rows> {
    let f: F = conjure();
    Ok(Rows::new(
        rows.take::<T>()?.into_iter().map(f).collect::<Vec<U>>(),
    ))
}

fn apply_flat_map<T: Data, U: Data, I: IntoIterator<Item = U>, F: Fn(T) -> I>(
    rows: Rows,
) -> Result<Rows> {
    let f: F = conjure();
    Ok(Rows::new(
        rows.take::<T>()?
            .into_iter()
            .flat_map(f)
            .collect::<Vec<U>>(),
    ))
}

fn apply_filter<T: Data, F: Fn(&T) -> bool>(rows: Rows) -> Result<Rows> {
    let f: F = conjure();
    let mut v = rows.take::<T>()?;
    v.retain(f);
    Ok(Rows::new(v))
}

fn encode_as_ipc<T: Data>(rows: Rows) -> Result<RecordBatch> {
    rows::encode_rows::<T>(rows)
}

fn render_text<T: Data + ToText>(rows: Rows) -> Result<RecordBatch> {
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

/// Which reduce partition a key goes to; the same in every instance.
fn partition_of<K: Hash>(k: &K, partitions: u32) -> u32 {
    let mut h = FxHasher::default();
    k.hash(&mut h);
    // Fx's low bits are weak; fold the high half in.
    let x = h.finish();
    ((x ^ (x >> 32)) % partitions as u64) as u32
}

/// Merges values per key: the map-side combiner and the reduce-side merge alike.
struct Combiner<K, V, F> {
    map: FxHashMap<K, Option<V>>,
    _f: PhantomData<F>,
}

impl<K: Key, V: Data, F: Fn(V, V) -> V> Combiner<K, V, F> {
    fn new() -> Self {
        Combiner {
            map: FxHashMap::default(),
            _f: PhantomData,
        }
    }

    fn add(&mut self, f: &F, k: K, v: V) {
        let slot = self.map.entry(k).or_insert(None);
        *slot = Some(match slot.take() {
            Some(a) => f(a, v),
            None => v,
        });
    }

    fn drain(self) -> impl Iterator<Item = (K, V)> {
        self.map.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

struct ReduceWriter<K, V, F> {
    partitions: u32,
    combiner: Combiner<K, V, F>,
}

impl<K: Key, V: Data, F: Fn(V, V) -> V> ShuffleWriter for ReduceWriter<K, V, F> {
    fn push(&mut self, rows: Rows) -> Result<()> {
        let f: F = conjure();
        for (k, v) in rows.take::<(K, V)>()? {
            self.combiner.add(&f, k, v);
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<(u32, Vec<RecordBatch>)>> {
        let n = self.partitions.max(1);
        let mut parts: Vec<Vec<(K, V)>> = (0..n).map(|_| Vec::new()).collect();
        for (k, v) in self.combiner.drain() {
            parts[partition_of(&k, n) as usize].push((k, v));
        }
        let mut out = Vec::new();
        for (p, rows) in parts.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let batches = rows
                .chunks(BATCH_ROWS)
                .map(rows::encode_pairs)
                .collect::<Result<Vec<_>>>()?;
            out.push((p as u32, batches));
        }
        Ok(out)
    }
}

fn new_reduce_writer<K: Key, V: Data, F: Fn(V, V) -> V + 'static>(
    partitions: u32,
) -> Box<dyn ShuffleWriter> {
    Box::new(ReduceWriter::<K, V, F> {
        partitions,
        combiner: Combiner::new(),
    })
}

struct ReduceReader<K, V, F> {
    combiner: Combiner<K, V, F>,
}

impl<K: Key, V: Data, F: Fn(V, V) -> V> ShuffleReader for ReduceReader<K, V, F> {
    fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let f: F = conjure();
        let c = &mut self.combiner;
        rows::for_each_pair::<K, V>(batch, |k, v| c.add(&f, k, v))
    }

    fn finish(self: Box<Self>) -> Result<Vec<Rows>> {
        let mut out = Vec::new();
        let mut cur = Vec::with_capacity(BATCH_ROWS);
        for kv in self.combiner.drain() {
            cur.push(kv);
            if cur.len() == BATCH_ROWS {
                out.push(Rows::new(std::mem::replace(
                    &mut cur,
                    Vec::with_capacity(BATCH_ROWS),
                )));
            }
        }
        if !cur.is_empty() {
            out.push(Rows::new(cur));
        }
        Ok(out)
    }
}

fn new_reduce_reader<K: Key, V: Data, F: Fn(V, V) -> V + 'static>() -> Box<dyn ShuffleReader> {
    Box::new(ReduceReader::<K, V, F> {
        combiner: Combiner::new(),
    })
}
