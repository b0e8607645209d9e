//! Input sequences over several connections, checked against the core's invariants after
//! every step (`duckwire_fuzzing::session`).
#![no_main]

mod traffic;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = duckwire_fuzzing::session::run(data, traffic::frames()) {
        panic!("{violation}");
    }
});
