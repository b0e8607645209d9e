//! Any bytes as an `uploadArrow` payload: decoded to batches or refused with an error, never
//! a panic (`duckwire_fuzzing::upload`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = duckwire_fuzzing::upload::run(data) {
        panic!("{violation}");
    }
});
