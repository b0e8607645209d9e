//! Any bytes, as a text or binary frame, decode to a message or a clean error — never a panic.
#![no_main]

use bytes::Bytes;
use duckwire_core::{decode_client_frame, Frame, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = decode_client_frame(&Frame::Binary(Bytes::copy_from_slice(data)), &limits);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_client_frame(&Frame::Text(text.to_string()), &limits);
    }
});
