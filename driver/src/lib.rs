//! The driver role: runs each application's driver program in a sandbox, turns each
//! action into a DAG of stages, schedules tasks on executors and commits output. One
//! entry: [`serve`], given its [`DriverConfig`], a bound endpoint and a shutdown token.
//!
//! Neighbours: the scheduling logic itself is the IO-free state machine of
//! `flint_protocol::scheduler`; this crate is its IO shell. Guest code runs in
//! `flint-sandbox`; connections go through `flint-transport`. The executor role
//! (`flint-executor-host`) is a peer reached over the network, never a library here.
//!
//! Layout:
//! - [`server`]: the endpoint: who may connect as what, enrolment, submissions.
//! - [`cluster`]: the event loop that owns the scheduler and talks to executors.
//! - [`app`]: one submitted application: its `main`, and each action's job, within the
//!   application's bounds.
//! - [`splits`], [`output`]: input splits; atomic output commit.
//! - [`tenants`]: who may submit (API tokens), their quotas and allowed paths.
//! - [`ui`]: scheduler events folded into the web UI's state and appended to the event
//!   log; the UI and its JSON API, live or replayed by `flint history`.
//!
//! The one decision to know: nothing a tenant's program or a peer sends may cost the
//! driver unbounded memory, time or stack. Every such input meets a bound (a setting,
//! a tenant quota, or a protocol limit) before the driver spends on it, and hitting one
//! is a typed error for that application alone.

pub mod app;
pub mod cluster;
mod components;
pub mod output;
pub mod server;
pub mod splits;
pub mod tenants;
pub mod ui;

pub use server::{Credentials, DriverConfig, DriverError, UiConfig, serve};
