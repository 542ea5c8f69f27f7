//! The executor role: runs Flint tasks in the Wasm sandbox, keeps and serves shuffle
//! data. One entry: [`serve`], given its [`ExecutorConfig`] (with the identity [`enrol`]
//! got from the driver), a bound endpoint and a shutdown token.
//!
//! Neighbours: `flint-protocol` defines what arrives ([`flint_protocol::wire`]); guests
//! run in `flint-sandbox`; connections go through `flint-transport`. The driver
//! (`flint-driver`) is a peer over the network, never a library here.
//!
//! Layout:
//! - [`executor`]: the process role: enrols, registers, heartbeats, runs up to `cores`
//!   tasks, serves stored results to the driver.
//! - [`runner`]: one task attempt, start to status.
//! - [`input`], [`formats`]: file splits turned into Arrow batches, and part files written.
//! - [`shuffle`]: map output files, the segment server (executors only) and the fetcher.
//! - [`results`]: results too large for a status, kept until the driver fetches them.
//! - [`metrics`]: counters, served in the Prometheus format.
//!
//! The one decision to know: the executor never accepts compiled code. It receives a
//! component's bytes (at most once, named by SHA-256), compiles them itself and caches
//! the artifact keyed by hash and engine configuration.

pub mod executor;
pub mod filter;
pub mod formats;
pub mod input;
pub mod memory;
pub mod metrics;
pub mod results;
pub mod runner;
pub mod shuffle;
pub mod statuses;

pub use executor::{ExecutorConfig, ExecutorError, enrol, serve};
