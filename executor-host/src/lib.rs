//! The executor host: runs Flint tasks in a wasmtime sandbox and serves shuffle data.
//!
//! Neighbours: `flint-protocol` defines what arrives ([`flint_protocol::wire`]); the
//! driver (`flint-driver`) sends tasks and also uses this crate's [`sandbox`] to run a
//! job's `main` and its [`tls`]/[`net`] pieces for its own endpoint.
//!
//! Layout:
//! - [`sandbox`]: engine, compiled-component cache, per-task stores with limits.
//! - [`tls`], [`net`]: the cluster CA, mutual-TLS QUIC configs, framed streams.
//! - [`input`]: Hadoop-style text splits turned into Arrow batches.
//! - [`shuffle`]: map output files, the segment server and the fetcher.
//! - [`runner`]: one task attempt, start to status.
//! - [`executor`]: the process role: registers, heartbeats, runs up to `cores` tasks.
//!
//! The one decision to know: the executor never accepts compiled code. It receives a
//! component's bytes (at most once, named by SHA-256), compiles them itself and caches
//! the artifact keyed by hash and engine configuration.

pub mod executor;
pub mod formats;
pub mod input;
pub mod metrics;
pub mod net;
pub mod runner;
pub mod sandbox;
pub mod shuffle;
pub mod tls;

pub use executor::{ExecutorConfig, ExecutorError, serve};
