//! Cross-process tests of the `flint` binary: real processes, real QUIC, real wasmtime.

mod bad_input;
mod chaos;
mod cluster;
mod data;
mod examples;
mod faults;
mod hostile;
mod multiprocess;
mod spill;
mod tenants;
mod trust;
mod ui;
mod util;
mod wordcount;
