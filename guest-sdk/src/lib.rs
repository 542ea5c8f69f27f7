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
//! A job crate is a `cdylib` built for `wasm32-wasip2`: one WebAssembly component. The
//! `flint` host instantiates it in two places:
//! - **on the driver**, where `main` runs. Transformations (`map`, `reduce_by_key`...) only
//!   record a plan; an action (`collect`, `count`, `save_as_text`) sends the plan to the
//!   driver and blocks until the cluster ran it. A loop with `collect` inside is an
//!   iterative job.
//! - **on executors**, once per task: the same component runs the fused narrow pipeline of
//!   one stage over one partition, batch by batch, in a fresh sandbox.
//!
//! Closures given to transformations must not capture anything (the compiler says so if
//! they do): a task runs in another instance, on another machine, where only the code
//! exists. Each closure is named on the wire by its entry in the component's function
//! table, which is the same in every instance of the same component.
//!
//! # The boundary
//! The host and the job speak the WIT world `flint:job/flint-job` (in `wit/flint.wit`):
//! control and errors as WIT types, rows as Arrow IPC streams. Rows of a `Dataset<T>`
//! travel as one binary column of postcard-encoded `T` (keys and values in two columns
//! across a shuffle). The typed `Dataset` API and the closure trick are Rust
//! conveniences; another language could implement the same world.

mod context;
mod dataset;
mod error;
mod formats;
mod ops;
mod rows;
mod task;

pub use context::{Context, CsvOptions, Malformed};
pub use dataset::{CoGrouped, Data, Dataset, FullJoined, Key, ToText};
pub use error::{Error, Result};
pub use flint_guest_macros::main;
pub use task::{TaskContext, task_context};

/// The `flint:job` interface version this SDK speaks; the host checks it on load.
pub const INTERFACE_VERSION: u32 = 3;

#[doc(hidden)]
pub mod __private {
    //! Used by `#[flint::main]`; not a stable API.
    pub use crate::INTERFACE_VERSION;
    pub use crate::bindings;
    pub use crate::bindings::export;
    pub use crate::bindings::exports::flint::job::job::Guest as JobGuest;
    pub use crate::bindings::exports::flint::job::task::{Chunk, Guest as TaskGuest, TaskSpec};
    pub use crate::bindings::flint::job::types::ErrorChain;
    pub use crate::task::{
        end_piece as task_end_piece, finish as task_finish, push as task_push, start as task_start,
    };

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
        path: "wit",
        world: "flint-job",
        pub_export_macro: true,
        default_bindings_module: "::flint::__private::bindings",
        generate_all,
    });
}
