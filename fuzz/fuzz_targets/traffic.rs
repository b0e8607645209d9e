//! The recorded client traffic (`fuzz/traffic`), read once per fuzzing process.

use std::sync::OnceLock;

use duckwire_core::Frame;
use duckwire_fuzzing as fuzzing;

pub fn frames() -> &'static [Frame] {
    static FRAMES: OnceLock<Vec<Frame>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/traffic");
        let files = std::fs::read_dir(dir)
            .expect("fuzz/traffic")
            .map(|entry| {
                let entry = entry.expect("directory entry");
                let bytes = std::fs::read(entry.path()).expect("traffic file");
                (entry.file_name().to_string_lossy().into_owned(), bytes)
            })
            .collect();
        fuzzing::traffic_frames(files)
    })
}

#[allow(dead_code)]
pub fn crdt_updates() -> &'static [Vec<u8>] {
    static UPDATES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    UPDATES.get_or_init(|| fuzzing::crdt_updates(frames()))
}
