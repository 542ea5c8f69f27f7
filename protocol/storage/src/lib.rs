//! Where Flint's data lives, shared by the driver (listing, inference) and the executors
//! (reading splits, writing parts): whole-file codecs, and how CSV files are read.

pub mod codec;
pub mod csv;
pub mod hive;
