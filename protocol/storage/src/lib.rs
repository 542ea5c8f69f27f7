//! Where Flint's data lives, shared by the driver (listing, inference) and the executors
//! (reading splits, writing parts): whole-file codecs, how CSV files are read, and object
//! storage (`s3://`) behind the same reader as local files, with the manifest that
//! commits an output there.

pub mod aws_profile;
pub mod codec;
pub mod csv;
pub mod hive;
pub mod manifest;
pub mod object;
