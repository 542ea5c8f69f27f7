//! The `cargo fuzz` targets of `fuzz/`, run on stable as bounded property tests over
//! arbitrary bytes: no decoder of untrusted input may panic, and none may allocate what a
//! length field claims before the bytes are there.

use flint_protocol::fuzzing;
use flint_protocol::wire::{self, FromExecutor, Hello};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn wire_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::decode_everything(&data);
    }

    #[test]
    fn event_log_lines_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::decode_event_lines(&data);
    }

    #[test]
    fn event_log_like_json_never_panics(s in r#"\{"event":"(TaskEnded|JobStarted|ExecutorAdded)"[ -~]{0,200}\}"#) {
        fuzzing::decode_event_lines(s.as_bytes());
    }

    #[test]
    fn conf_files_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::parse_settings(&data);
    }

    #[test]
    fn conf_like_lines_never_panic(s in r"[a-z_.]{1,40} ?= ?[0-9a-z.]{0,12}(\n[a-z_.]{1,40} [0-9a-z]{0,8}){0,4}") {
        fuzzing::parse_settings(s.as_bytes());
    }

    /// Mutations of real messages: closer to what a confused or hostile peer sends.
    #[test]
    fn mutated_real_messages_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let msgs = [
            wire::encode_frame(&FromExecutor::Heartbeat { running: 3 }, wire::MAX_FRAME).unwrap(),
            wire::encode_frame(&Hello::Executor(wire::ExecutorHello {
                cores: 4,
                shuffle_addr: "127.0.0.1:1".into(),
                metrics_addr: Some("127.0.0.1:2".into()),
            }), wire::MAX_FRAME).unwrap(),
        ];
        for m in msgs {
            let mut m = m.clone();
            for (at, v) in &flips {
                let i = at % m.len();
                m[i] ^= v;
            }
            fuzzing::decode_everything(&m);
        }
    }
}

#[test]
fn huge_length_fields_are_errors() {
    // A frame claiming 4 GiB is refused from its prefix alone, before any allocation.
    assert!(wire::frame_len(u32::MAX.to_le_bytes(), wire::MAX_FRAME).is_err());
    // A body whose inner length claims 4 GiB with nothing behind it is an error; postcard
    // sizes its reservations by the bytes actually present (serde's cautious size hint).
    let claim = [0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(wire::decode_body::<Vec<u8>>(&claim).is_err());
    assert!(wire::decode_body::<Vec<String>>(&claim).is_err());
    let mut submit = vec![0u8]; // Hello::Submit, then a name of 4 GiB
    submit.extend(claim);
    assert!(wire::decode_body::<Hello>(&submit).is_err());
}
