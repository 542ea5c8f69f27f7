//! Paths of the ready-made job components, built by this crate's build script:
//! the `wordcount` example and the test jobs of `udfs/guests/test-guests`.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
