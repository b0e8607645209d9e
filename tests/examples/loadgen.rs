//! A small WebSocket load generator for side-by-side measurements (duckwire vs the Python
//! sqlrooms-server): C connections, each keeping W queries in flight until it sent Q.
//!
//! cargo run --release -p duckwire-tests --example loadgen -- ws://127.0.0.1:4000 json 8 2000 16 "select 1 as x"

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: loadgen URL arrow|json CONNECTIONS QUERIES_PER_CONN WINDOW SQL");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let kind = args[2].clone();
    let connections: usize = args[3].parse().expect("connections");
    let per_conn: usize = args[4].parse().expect("queries per connection");
    let window: usize = args[5].parse().expect("window");
    let sql = args[6].clone();

    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let (url, kind, sql) = (url.clone(), kind.clone(), sql.clone());
            std::thread::spawn(move || run_connection(&url, &kind, &sql, c, per_conn, window))
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut bytes = 0usize;
    for t in threads {
        let (l, b) = t.join().expect("connection thread");
        latencies.extend(l);
        bytes += b;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "{} queries in {:.2}s: {:.0} q/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} MB received",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        bytes as f64 / 1e6
    );
}

fn run_connection(
    url: &str,
    kind: &str,
    sql: &str,
    c: usize,
    total: usize,
    window: usize,
) -> (Vec<Duration>, usize) {
    let (mut socket, _) = tungstenite::connect(url).expect("connect");
    let mut sent_at = std::collections::HashMap::new();
    let mut latencies = Vec::with_capacity(total);
    let (mut sent, mut bytes) = (0usize, 0usize);
    while latencies.len() < total {
        while sent < total && sent - latencies.len() < window {
            let id = format!("c{c}-{sent}");
            socket
                .send(Message::Text(
                    json!({"type":kind,"sql":sql,"queryId":id})
                        .to_string()
                        .into(),
                ))
                .expect("send");
            sent_at.insert(id, Instant::now());
            sent += 1;
        }
        let message = socket.read().expect("read");
        bytes += message.len();
        let id = match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("json");
                if value["type"] == "error" {
                    panic!("server error: {value}");
                }
                value["queryId"].as_str().map(str::to_string)
            }
            Message::Binary(frame) => {
                let n = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
                let header: Value = serde_json::from_slice(&frame[4..4 + n]).expect("header");
                header["queryId"].as_str().map(str::to_string)
            }
            _ => None,
        };
        if let Some(started) = id.and_then(|id| sent_at.remove(&id)) {
            latencies.push(started.elapsed());
        }
    }
    (latencies, bytes)
}
