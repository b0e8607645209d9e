//! Any bytes, as a text or a binary frame, decode to a message or a clean error
//! (`duckwire_fuzzing::decode`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = duckwire_fuzzing::decode(data) {
        panic!("{violation}");
    }
});
