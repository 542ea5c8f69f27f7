//! Values shared between the driver program and tasks: broadcast values (read-only,
//! shipped to each executor once) and accumulators (added to in tasks, read on the
//! driver).

use crate::bindings::flint::job::host;
use crate::{Data, Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::any::Any;
use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

/// A read-only value the driver program shares with every task: it travels to each
/// executor once, however many tasks read it (Spark's broadcast variables). Capture the
/// handle in a `*_with` closure; it serializes as its id.
///
/// ```no_run
/// # fn f(ctx: &mut flint::Context, xs: flint::Dataset<String>) -> flint::Result<()> {
/// use std::collections::HashSet;
/// let stop: HashSet<String> = ["a", "the"].iter().map(|s| s.to_string()).collect();
/// let stop = ctx.broadcast(&stop)?;
/// let kept = xs.filter_with(&stop, |stop: &flint::Broadcast<HashSet<String>>, w: &String| {
///     !stop.value().is_ok_and(|s| s.contains(w))
/// });
/// # Ok(()) }
/// ```
pub struct Broadcast<T> {
    id: u32,
    value: OnceCell<T>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Data> Broadcast<T> {
    pub(crate) fn register(value: &T) -> Result<Broadcast<T>> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| Error::from(e).context("serializing a broadcast value"))?;
        Ok(Broadcast {
            id: host::broadcast(&bytes).map_err(Error::from_chain)?,
            value: OnceCell::new(),
            _t: PhantomData,
        })
    }

    /// The value: fetched (by this executor, once) and decoded on first use in a task.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let b = ctx.broadcast(&vec![1u32, 2, 3])?;
    /// assert_eq!(b.value()?.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn value(&self) -> Result<&T> {
        if let Some(v) = self.value.get() {
            return Ok(v);
        }
        let bytes = host::broadcast_value(self.id)
            .map_err(|e| Error::msg(e).context(format!("reading broadcast {}", self.id)))?;
        let v: T = postcard::from_bytes(&bytes)
            .map_err(|e| Error::from(e).context(format!("decoding broadcast {}", self.id)))?;
        Ok(self.value.get_or_init(|| v))
    }
}

impl<T> Serialize for Broadcast<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.id.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Broadcast<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Broadcast {
            id: u32::deserialize(d)?,
            value: OnceCell::new(),
            _t: PhantomData,
        })
    }
}

/// A value tasks add to and the driver program reads: counts, sums, collections. Merging
/// must be associative and commutative.
///
/// ```
/// use flint::Mergeable;
/// let mut a = 3u64;
/// a.merge(4);
/// assert_eq!(a, 7);
/// let mut v = vec!["x".to_string()];
/// v.merge(vec!["y".to_string()]);
/// assert_eq!(v.len(), 2);
/// ```
pub trait Mergeable: Data + Default {
    fn merge(&mut self, other: Self);
}

macro_rules! mergeable_sum {
    ($($t:ty),*) => {$(
        impl Mergeable for $t {
            fn merge(&mut self, other: Self) {
                *self += other;
            }
        }
    )*};
}
mergeable_sum!(u32, u64, u128, usize, i32, i64, i128, isize, f32, f64);

impl<T: Data> Mergeable for Vec<T> {
    fn merge(&mut self, other: Self) {
        self.extend(other);
    }
}

impl<K: crate::Key, V: Mergeable> Mergeable for HashMap<K, V> {
    fn merge(&mut self, other: Self) {
        for (k, v) in other {
            self.entry(k).or_default().merge(v);
        }
    }
}

impl<K: Data + Ord, V: Mergeable> Mergeable for BTreeMap<K, V> {
    fn merge(&mut self, other: Self) {
        for (k, v) in other {
            self.entry(k).or_default().merge(v);
        }
    }
}

impl<A: Mergeable, B: Mergeable> Mergeable for (A, B) {
    fn merge(&mut self, other: Self) {
        self.0.merge(other.0);
        self.1.merge(other.1);
    }
}

type Encode = fn(&dyn Any) -> Result<Vec<u8>>;
/// A task's partial value of one accumulator, with how to encode it.
type Partial = (Box<dyn Any>, Encode);

thread_local! {
    /// In a task: this task's partial value per accumulator.
    static PARTIALS: RefCell<BTreeMap<u32, Partial>> = RefCell::new(BTreeMap::new());
    /// In the driver program: each accumulator's total so far.
    static TOTALS: RefCell<HashMap<u32, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

fn encode<A: Mergeable>(a: &dyn Any) -> Result<Vec<u8>> {
    let a = a
        .downcast_ref::<A>()
        .ok_or_else(|| Error::msg("internal: accumulator of another type"))?;
    Ok(postcard::to_stdvec(a)?)
}

/// Forgets the partial values of a previous task (a new task starts).
pub(crate) fn reset_partials() {
    PARTIALS.with(|p| p.borrow_mut().clear());
}

/// The task's partial values, encoded, for the host.
pub(crate) fn take_partials() -> Vec<(u32, Vec<u8>)> {
    let all = PARTIALS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    all.into_iter()
        .filter_map(|(id, (v, enc))| enc(&*v).ok().map(|b| (id, b)))
        .collect()
}

/// An accumulator of `A` (Spark's `AccumulatorV2`): tasks [`add`](Self::add), the
/// driver program reads the [`value`](Self::value). Each successful task's additions
/// count once, even when the task ran more than once (a retry or a speculative copy);
/// additions of a map task that reruns to recompute lost output count again, as in Spark.
/// Capture the handle in a `*_with` closure.
///
/// ```no_run
/// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
/// let bad = ctx.accumulator::<u64>();
/// let nums = ctx
///     .text_file("numbers.txt")?
///     .flat_map_with(&bad, |bad: &flint::Accumulator<u64>, l: String| match l.trim().parse::<i64>() {
///         Ok(n) => Some(n),
///         Err(_) => { bad.add(1); None }
///     });
/// let sum: i64 = nums.fold(0, |a, b| a + b)?;
/// println!("sum {sum}, {} bad lines", bad.value()?);
/// # Ok(()) }
/// ```
pub struct Accumulator<A> {
    id: u32,
    _a: PhantomData<fn() -> A>,
}

impl<A> Clone for Accumulator<A> {
    fn clone(&self) -> Self {
        Accumulator {
            id: self.id,
            _a: PhantomData,
        }
    }
}

impl<A: Mergeable> Accumulator<A> {
    pub(crate) fn new() -> Accumulator<A> {
        thread_local! {
            static NEXT: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
        }
        let id = NEXT.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        Accumulator {
            id,
            _a: PhantomData,
        }
    }

    /// Adds `v`: in a task, to the task's partial value; in the driver program, to the
    /// total directly.
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) {
    /// let seen = ctx.accumulator::<u64>();
    /// seen.add(1);
    /// # }
    /// ```
    pub fn add(&self, v: A) {
        if crate::task_context().is_some() {
            PARTIALS.with(|p| {
                let mut p = p.borrow_mut();
                let (slot, _) = p
                    .entry(self.id)
                    .or_insert_with(|| (Box::new(A::default()), encode::<A> as Encode));
                if let Some(a) = slot.downcast_mut::<A>() {
                    a.merge(v);
                }
            });
        } else {
            TOTALS.with(|t| {
                let mut t = t.borrow_mut();
                let slot = t.entry(self.id).or_insert_with(|| Box::new(A::default()));
                if let Some(a) = slot.downcast_mut::<A>() {
                    a.merge(v);
                }
            });
        }
    }

    /// The total: every successful task's additions so far, merged (driver program only).
    ///
    /// ```no_run
    /// # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
    /// let n = ctx.accumulator::<u64>();
    /// assert_eq!(n.value()?, 0);
    /// # Ok(()) }
    /// ```
    pub fn value(&self) -> Result<A>
    where
        A: Clone,
    {
        if crate::task_context().is_some() {
            return Err(Error::msg(
                "an accumulator's value is read in the driver program, not in a task",
            ));
        }
        let updates = host::accumulator_updates(self.id);
        TOTALS.with(|t| {
            let mut t = t.borrow_mut();
            let slot = t.entry(self.id).or_insert_with(|| Box::new(A::default()));
            let total = slot
                .downcast_mut::<A>()
                .ok_or_else(|| Error::msg("internal: accumulator of another type"))?;
            for u in updates {
                let part: A = postcard::from_bytes(&u)
                    .map_err(|e| Error::from(e).context("decoding an accumulator update"))?;
                total.merge(part);
            }
            Ok(total.clone())
        })
    }
}

impl<A> Serialize for Accumulator<A> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.id.serialize(s)
    }
}

impl<'de, A> Deserialize<'de> for Accumulator<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Accumulator {
            id: u32::deserialize(d)?,
            _a: PhantomData,
        })
    }
}
