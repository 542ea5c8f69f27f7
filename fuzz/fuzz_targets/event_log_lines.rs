//! Event-log lines (what `flint history` reads) from arbitrary text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flint_protocol::fuzzing::decode_event_lines(data);
});
