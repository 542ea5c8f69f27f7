//! Flint's wire protocol and the scheduling state machines, with no IO.
//!
//! Neighbours: `flint-driver` drives [`scheduler::Scheduler`] from its event loop and ships
//! [`wire`] messages over QUIC; `flint-executor-host` answers them. Nothing here touches a
//! socket, a file, a clock or a runtime: time arrives as an argument, IO happens outside.
//! That is what lets the DAG splitting and every scheduler transition be unit tested
//! deterministically.
//!
//! Layout:
//! - [`ids`]: the newtypes every other module speaks in (job, stage, task, executor).
//! - [`plan`]: the logical plan a job's `main` builds, and [`dag`], which cuts it into
//!   stages at shuffle boundaries.
//! - [`scheduler`]: DAG scheduler + task scheduler + map-output tracker as one state machine.
//! - [`wire`]: messages between driver, executors and submitters, and their framing.
//! - [`conf`]: Spark-style `key=value` settings with validation.

pub mod conf;
pub mod dag;
pub mod events;
pub mod fuzzing;
pub mod ids;
pub mod plan;
pub mod scheduler;
pub mod wire;

/// Whether two secrets (capabilities, token digests) are equal, compared without an
/// early exit, so the time taken says nothing about where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Version of the driver/executor/submit protocol, checked in every handshake.
pub const PROTOCOL_VERSION: u32 = 13;
