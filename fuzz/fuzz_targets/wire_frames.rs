//! Every message type a peer can send, decoded from arbitrary bytes: errors, never panics,
//! never an allocation sized by an untrusted length.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flint_protocol::fuzzing::decode_everything(data);
});
