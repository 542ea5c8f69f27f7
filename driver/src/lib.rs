//! The Flint driver: runs a job's driver program in a sandbox, turns each action into a
//! DAG of stages, schedules tasks on executors and commits output.
//!
//! Neighbours: the scheduling logic itself is the IO-free state machine of
//! `flint_protocol::scheduler`; this crate is its IO shell. Executors are
//! `flint_executor_host`; the sandbox used for driver programs is the same as theirs.
//!
//! Layout:
//! - [`cluster`]: the event loop that owns the scheduler and talks to executors.
//! - [`app`]: one submitted application: its `main`, and `run-action` for each action.
//! - [`splits`], [`output`]: input splits; atomic output commit.
//! - [`server`]: the driver's QUIC endpoint (executors and submitters connect to it).
//! - [`client`], [`local`], [`cli`]: submitting, the embedded local cluster, the `flint` CLI.
//! - [`tenants`]: who may submit (API tokens), their quotas and allowed paths.
//! - [`ui`]: scheduler events folded into the web UI's state and appended to the event
//!   log; the UI and its JSON API, live or replayed by `flint history`.
//!
//! The one decision to know: local mode is the same code over loopback QUIC, with the
//! same certificates, not a second path.

pub mod app;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod local;
pub mod output;
pub mod progress;
pub mod server;
pub mod splits;
pub mod tenants;
pub mod ui;
