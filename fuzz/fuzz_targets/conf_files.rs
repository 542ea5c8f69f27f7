//! Config files and `--conf` pairs from arbitrary text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flint_protocol::fuzzing::parse_settings(data);
});
