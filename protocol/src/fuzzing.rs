//! The decoders that take untrusted input, as functions over arbitrary bytes: the
//! `cargo fuzz` targets in `fuzz/` call them (nightly, by hand), and
//! `protocol/tests/decoders.rs` runs them as property tests on stable in CI. Each must
//! return (an error is fine) without panicking.

use crate::conf::Conf;
use crate::events::Event;
use crate::wire::{
    self, EnrolReply, FetchModule, FetchReply, FetchResult, FetchSegments, FromExecutor, Hello,
    SubmitEvent, ToExecutor,
};

/// A frame as a peer sends it: a length prefix checked against the limit, then the body
/// decoded as every message type that arrives from the network.
pub fn decode_everything(data: &[u8]) {
    if data.len() >= 4 {
        let prefix = [data[0], data[1], data[2], data[3]];
        if let Ok(len) = wire::frame_len(prefix, wire::MAX_FRAME) {
            let body = &data[4..];
            let body = &body[..len.min(body.len())];
            decode_bodies(body);
        }
    }
    decode_bodies(data);
}

fn decode_bodies(body: &[u8]) {
    let _ = wire::decode_body::<Hello>(body);
    let _ = wire::decode_body::<ToExecutor>(body);
    let _ = wire::decode_body::<FromExecutor>(body);
    let _ = wire::decode_body::<FetchSegments>(body);
    let _ = wire::decode_body::<FetchModule>(body);
    let _ = wire::decode_body::<FetchReply>(body);
    let _ = wire::decode_body::<SubmitEvent>(body);
    let _ = wire::decode_body::<FetchResult>(body);
    let _ = wire::decode_body::<EnrolReply>(body);
    if let Ok(p) =
        <[u8; wire::preamble::LEN]>::try_from(body.get(..wire::preamble::LEN).unwrap_or(&[]))
    {
        let _ = wire::preamble::check(&p);
    }
}

/// Event-log lines, as `flint history` reads them.
pub fn decode_event_lines(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = serde_json::from_str::<Event>(line);
    }
}

/// A config file's text and each of its lines as a `--conf` pair.
pub fn parse_settings(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut c = Conf::default();
    let _ = c.merge_file("fuzz.conf", &text);
    for line in text.lines() {
        let _ = c.set_pair(line);
    }
    let _ = c.settings().job_policy();
}
