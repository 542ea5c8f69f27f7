//! Flint's guest SDK: write a distributed job in Rust, compile it to WebAssembly.
//!
//! ```no_run
//! use flint::{Context, Result};
//!
//! #[flint::main]
//! fn main(ctx: &mut Context) -> Result<()> {
//!     let [input, output] = ctx.args()?;
//!     ctx.text_file(&input)?
//!         .flat_map(|line: String| line.split_ascii_whitespace().map(str::to_owned).collect::<Vec<_>>())
//!         .map(|w: String| (w, 1u64))
//!         .reduce_by_key(|a, b| a + b)
//!         .save_as_text(&output)?;
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! # How a job runs
//! A job crate is a `cdylib` built for `wasm32-wasip2`: one WebAssembly component
//! (`flint new NAME` makes one). The `flint` host instantiates it in two places:
//! - **on the driver**, where `main` runs. Transformations (`map`, `join`...) only record
//!   a plan; an action (`collect`, `count`, `save_as_*`...) sends the plan to the driver
//!   and blocks until the cluster ran it. A loop with an action inside is an iterative
//!   job (see the k-means and PageRank examples in `examples/`).
//! - **on executors**, once per task: the same component runs the fused narrow pipeline
//!   of one stage over one partition, batch by batch, in a fresh sandbox.
//!
//! The driver cuts the plan into stages at shuffles (`reduce_by_key`, `join`, `sort_by`,
//! `repartition`...), as Spark does; narrow operations (`map`, `filter`, `union`,
//! `coalesce`...) fuse into the stage that feeds them.
//!
//! # What runs where
//! Closures given to transformations run in tasks, on other machines, in other
//! instances of the component, where only the code exists. So a closure must not capture
//! variables (the compiler says so if it does); a value from the driver program goes
//! through the `*_with` forms, which serialize it into the plan:
//!
//! ```no_run
//! # fn f(ctx: &mut flint::Context) -> flint::Result<()> {
//! let [input, min] = ctx.args()?;
//! let min: usize = min.parse()?;
//! let long = ctx.text_file(&input)?.filter_with(&min, |min: &usize, l: &String| l.len() >= *min);
//! # Ok(()) }
//! ```
//!
//! Each closure is named on the wire by its entry in the component's function table,
//! which is the same in every instance of the same component.
//!
//! # Operations
//! - Sources ([`Context`]): `text_file`, `csv`/`csv_with`, `json_lines`, `parquet`,
//!   `arrow_ipc` (a file, a directory or a glob; large files split), `parallelize`,
//!   `range`.
//! - Narrow ([`Dataset`]): `map`, `filter`, `flat_map` (and `*_with`), `map_partitions`,
//!   `key_by`, `map_values`, `keys`, `values`, `sample`, `union`, `coalesce`.
//! - Wide: `reduce_by_key`, `aggregate_by_key`, `combine_by_key`, `group_by_key`,
//!   `distinct`, `join`, `left_outer_join`, `right_outer_join`, `full_outer_join`,
//!   `cogroup`, `sort_by`, `repartition`, `partition_by`; `with_partitions` sets a
//!   shuffle's partition count (default: the setting `shuffle.partitions`).
//! - Columnar ([`Frame`], from `parquet_frame` or `csv_frame`): `group_by(..).agg(..)`
//!   with [`Agg`]s (`count`, `count_of`, `sum`, `min`, `max`, `mean`), run a column at a
//!   time over Arrow batches with no closure per row; `join(&other, [keys])` (an inner
//!   equi-join, broadcast when one side is small); `with_column(name, col("a") * 2)`
//!   ([`Expr`]); `filter_columns`; `rows::<T>()` turns a frame into a typed `Dataset`.
//! - Actions: `collect`, `count`, `first`, `take` (partitions read in rounds, see
//!   [`Dataset::take`]), `top`, `reduce`, `fold`,
//!   `count_by_value`, `count_by_key`, `foreach_partition`, `save_as_text`,
//!   `save_as_csv`, `save_as_json_lines`, `save_as_parquet`, `save_as_arrow`.
//! - Keeping: `persist`, `cache`, `unpersist`.
//! - Sharing: [`Context::broadcast`] (a read-only value each executor fetches once) and
//!   [`Context::accumulator`] (tasks add, the driver program reads; each successful
//!   task counts once).
//!
//! # The boundary
//! The host and the job speak the WIT world `flint:job/flint-job` (`wit/flint.wit` in
//! this crate's folder, documented there): a `plan` of nodes (file and inline sources, narrow
//! ops, shuffles with one or more sides, unions, coalesces) and an `action` go to the
//! host's `run-action`; tasks are driven through `task.start`, `task.push` (per Arrow
//! IPC batch, tagged with its piece and shuffle side), `task.end-piece` and
//! `task.finish`. Every function in a plan is an `op`: a function-table index plus the
//! bytes of its captured value, both opaque to the host. File formats are parsed and
//! written by the host: the job sees Arrow batches.
//!
//! A job in another language implements that world. What is a Rust convenience: the
//! typed `Dataset<T>`, closures named by their function-table index, rows encoded with
//! postcard in a binary Arrow column (`row`, or `key` and `value` across a shuffle),
//! and typed columnar rows through `serde_arrow`. The host relies on none of them.

mod columns;
mod context;
mod dataset;
mod error;
mod expr;
mod filter;
mod formats;
mod frame;
mod hash;
mod join;
mod ops;
mod rows;
mod shared;
mod spill;
mod task;
mod text;
mod trace;

pub use context::{Context, CsvOptions, Malformed};
pub use dataset::{
    CoGrouped, Codec, Data, Dataset, FullJoined, Key, SaveMode, StorageLevel, ToText, Writer,
};
pub use error::{Error, Result};
pub use expr::Expr;
pub use filter::{Column, Predicate, Value, col};
pub use flint_guest_macros::main;
pub use frame::{Agg, Batch, Frame, GroupedFrame};
pub use ops::Partition;
pub use shared::{Accumulator, Broadcast, Mergeable};
pub use task::{TaskContext, task_context};
pub use text::{Split, SplitAsciiWhitespace, Str};

/// The `flint:job` interface version this SDK speaks; the host checks it on load. Read
/// from the WIT world's package version (crate `flint-wit`), as the host reads it.
pub const INTERFACE_VERSION: u32 = flint_wit::INTERFACE_VERSION;

#[doc(hidden)]
pub mod __private {
    //! Used by `#[flint::main]`; not a stable API.
    pub use crate::INTERFACE_VERSION;
    pub use crate::bindings;
    pub use crate::bindings::export;
    pub use crate::bindings::exports::flint::job::job::Guest as JobGuest;
    pub use crate::bindings::exports::flint::job::task::AccumulatorUpdate;
    pub use crate::bindings::exports::flint::job::task::{Guest as TaskGuest, TaskSpec};
    pub use crate::bindings::flint::job::types::ErrorChain;
    pub use crate::task::{
        end_piece as task_end_piece, finish as task_finish, push as task_push, start as task_start,
    };

    /// The task's accumulator updates, after `finish`.
    pub fn task_take_accumulators() -> Vec<AccumulatorUpdate> {
        crate::shared::take_partials()
            .into_iter()
            .map(|(id, value)| AccumulatorUpdate { id, value })
            .collect()
    }

    /// Runs the user's `main` with the job's arguments.
    pub fn run_main(
        args: Vec<String>,
        user_main: fn(&mut crate::Context) -> crate::Result<()>,
    ) -> Result<(), ErrorChain> {
        let mut ctx = crate::Context::new(args);
        user_main(&mut ctx).map_err(crate::Error::into_chain)
    }
}

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/flint.wit",
        world: "flint-job",
        pub_export_macro: true,
        default_bindings_module: "::flint::__private::bindings",
        generate_all,
    });
}
