//! The `flint` command line, and the embedded local cluster it and the benchmarks run.
//!
//! Neighbours: each subcommand is a thin call into the library of its role: the driver
//! (`flint-driver`), the executor (`flint-executor-host`), the submit client
//! (`flint-client`). [`local`] composes a driver and executors in one process over
//! loopback QUIC, the same code as separate processes.

pub mod cli;
pub mod job_crate;
pub mod local;
pub mod progress;

pub use cli::main;
