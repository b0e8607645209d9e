//! Replays the fuzz seeds, the committed minimised corpora and every past finding through
//! the same harnesses the cargo-fuzz targets run, on the stable toolchain, so `cargo test`
//! catches a regression of anything fuzzing once found or covered.

use std::path::{Path, PathBuf};

use crate::fuzzing::{self, crdt, session};
use crate::Frame;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|entry| {
            let entry = entry.expect("a readable directory entry");
            let bytes = std::fs::read(entry.path()).expect("a readable corpus file");
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// The client traffic recorded from the official JS clients (`fuzz/traffic`).
pub(crate) fn recorded_traffic() -> Vec<Frame> {
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
        "fuzz/seeds/{target} is missing: run the fuzz_seeds example"
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
