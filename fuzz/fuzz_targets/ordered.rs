//! Mosaic sockets and HTTP connections: answers in request order, each request answered once
//! (`duckwire_fuzzing::ordered`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = duckwire_fuzzing::ordered::run(data) {
        panic!("invariant violated: {violation}");
    }
});
