//! Valid and invalid Loro updates into a room with three members
//! (`duckwire_fuzzing::crdt`).
#![no_main]

mod traffic;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = duckwire_fuzzing::crdt::run(data, traffic::crdt_updates()) {
        panic!("{violation}");
    }
});
