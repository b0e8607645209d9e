//! What each deflate level costs and saves on real replies, as the server compresses them
//! (`MessageDeflater`, 256 KiB parts): MB/s of input per core and the compressed size, and
//! from those the time to deliver one MB at each link speed. Feeds BENCHMARKS.md's choice of
//! level for `--ws-compression`.
//!   cargo run --release -p duckwire-tests --example deflate_levels -- FILE…
//! (files: replies saved from a server, e.g. with `curl -d '{"type":"json","sql":…}'`)

use std::time::Instant;

use duckwire_core::websocket::MessageDeflater;

fn main() {
    // A fresh deflater per message (no context is kept between messages): its set-up cost.
    let small = vec![b'x'; 8 * 1024];
    let started = Instant::now();
    for _ in 0..1000 {
        let _ = MessageDeflater::new(1).part(&small, true).unwrap();
    }
    println!(
        "an 8 KiB reply with a fresh deflater: {:.1} µs",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut reused = MessageDeflater::new(1);
    let started = Instant::now();
    for _ in 0..1000 {
        let _ = reused.part(&small, true).unwrap();
    }
    println!(
        "the same with a deflater reused (reset after each message): {:.1} µs",
        started.elapsed().as_secs_f64() * 1e3
    );
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path).expect("a readable file");
        let mb = data.len() as f64 / 1e6;
        println!("{path}: {mb:.1} MB");
        println!("level | MB/s | ratio | s per MB at 50 / 10 Mbit/s (uncompressed: 0.16 / 0.80)");
        for level in [1, 2, 3, 6, 9] {
            let mut best = f64::MAX;
            let mut size = 0;
            for _ in 0..3 {
                let started = Instant::now();
                let mut deflater = MessageDeflater::new(level);
                let parts: Vec<&[u8]> = data.chunks(256 * 1024).collect();
                size = parts
                    .iter()
                    .enumerate()
                    .map(|(i, part)| deflater.part(part, i + 1 == parts.len()).unwrap().len())
                    .sum::<usize>();
                best = best.min(started.elapsed().as_secs_f64());
            }
            let ratio = data.len() as f64 / size as f64;
            let speed = mb / best;
            // Compressing and sending overlap (parts), so the slower of the two sets the pace.
            let at = |mbit: f64| (1.0 / speed).max(8.0 / mbit / ratio);
            println!(
                "{level} | {speed:.0} | {ratio:.2} | {:.3} / {:.3}",
                at(50.0),
                at(10.0)
            );
        }
    }
}
