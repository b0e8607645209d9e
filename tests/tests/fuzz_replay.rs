//! Replays the fuzz seeds, the committed minimised corpora and every past finding through
//! the same harnesses the cargo-fuzz targets run, on the stable toolchain, so `cargo test`
//! catches a regression of anything fuzzing once found or covered. (It lives here, not in
//! the core, because the core does no IO, not even in its tests.)

use duckwire_core::Frame;
use duckwire_fuzzing::{self as fuzzing, crdt, session};
use duckwire_tests::{files_in, fuzz_dir};

/// The client traffic recorded from the official JS clients (`fuzz/traffic`).
fn recorded_traffic() -> Vec<Frame> {
    let traffic = fuzzing::traffic_frames(files_in(&fuzz_dir().join("traffic")));
    assert!(
        !traffic.is_empty(),
        "fuzz/traffic holds the recorded frames"
    );
    traffic
}

/// Every input of a target: seeds, the minimised corpus and past findings.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        for (name, bytes) in files_in(&fuzz_dir().join(kind).join(target)) {
            all.push((format!("{kind}/{target}/{name}"), bytes));
        }
    }
    all
}

fn replay(target: &str, harness: impl Fn(&[u8]) -> Result<(), String>) {
    let inputs = inputs(target);
    assert!(
        inputs.iter().any(|(name, _)| name.starts_with("seeds/")),
        "fuzz/seeds/{target} is missing: run `cargo run -p duckwire-tests --example fuzz_seeds`"
    );
    for (name, bytes) in &inputs {
        if let Err(violation) = harness(bytes) {
            panic!("{name}: {violation}");
        }
    }
}

#[test]
fn decode_corpus_replays_cleanly() {
    replay("decode", fuzzing::decode);
}

#[test]
fn state_machine_corpus_replays_cleanly() {
    let traffic = recorded_traffic();
    replay("state_machine", |data| session::run(data, &traffic));
}

#[test]
fn crdt_corpus_replays_cleanly() {
    let updates = fuzzing::crdt_updates(&recorded_traffic());
    assert!(!updates.is_empty(), "the recorded traffic has CRDT updates");
    replay("crdt", |data| crdt::run(data, &updates));
}

#[test]
fn ordered_corpus_replays_cleanly() {
    replay("ordered", duckwire_fuzzing::ordered::run);
}

#[test]
fn upload_corpus_replays_cleanly() {
    replay("upload", fuzzing::upload::run);
}

#[test]
fn websocket_corpus_replays_cleanly() {
    replay("websocket", fuzzing::websocket::run);
}

/// Corruptions of real upload streams as a new user's bad client would send them (bit
/// flips, truncations, overwritten lengths): each is decoded or refused, never a panic.
#[test]
fn corrupted_uploads_are_refused_not_panicked_on() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for valid in fuzzing::upload::seed_streams() {
        assert_eq!(fuzzing::upload::run(&valid), Ok(()));
        for round in 0..3_000 {
            let mut stream = valid.clone();
            match round % 3 {
                0 => {
                    for _ in 0..1 + next() % 4 {
                        let bit = next() as usize % (stream.len() * 8);
                        stream[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                1 => stream.truncate(next() as usize % stream.len()),
                _ => {
                    let at = next() as usize % (stream.len() - 4);
                    let value = [0u32, 1, 0x7fff_ffff, u32::MAX, next() as u32][round % 5];
                    stream[at..at + 4].copy_from_slice(&value.to_le_bytes());
                }
            }
            if let Err(violation) = fuzzing::upload::run(&stream) {
                panic!("round {round}: {violation}");
            }
        }
    }
}
