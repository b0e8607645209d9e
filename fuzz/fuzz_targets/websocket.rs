//! WebSocket framing and permessage-deflate: any bytes decode the same however they arrive,
//! never past the cap, and our own frames read back as sent (`duckwire_fuzzing::websocket`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = duckwire_fuzzing::websocket::run(data) {
        panic!("{violation}");
    }
});
