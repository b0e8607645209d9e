//! The long-room benchmark (BENCHMARKS.md, `scripts/bench/rooms.sh`): what a room costs as
//! its history grows, over the SQLRooms WebSocket protocol, against any server that speaks
//! it (duckwire, sqlrooms-server).
//!
//!   duckwire-rooms-bench page-loads --url ws://H:P/ --peers N [--pid PID] [--csv out.csv]
//!                        [--keep-member] [--reload-after-ms MS]
//!   duckwire-rooms-bench fan-out --url ws://H:P/ --members M [--edits E] [--resend-kib K]
//!
//! `page-loads`: N page loads in a row, as `@sqlrooms/crdt` does them: a new connection joins
//! the room, imports its snapshot into a new Loro peer, makes one small map edit, sends it,
//! waits for its `crdt-update-ack`, leaves. Per page load: the time from `crdt-join` to the
//! snapshot, the time from the edit to its ack, the snapshot's size; printed as medians over
//! windows of 300 page loads, and (with `--pid`) the server's resident memory. With
//! `--reload-after-ms`, it then waits that long (for the server to save and unload the idle
//! room: duckwire's `--room-idle-evict-ms`, checked on its `/metrics`), joins once more and
//! reports how long loading the room took and the resident memory the loaded room added.
//! `fan-out`: M members joined to one room; one edits, the time until every other member
//! received the change. With `--resend-kib`, meanwhile another client in a room of its own
//! sends a K KiB change again and again (a client re-sending its whole history): what the
//! server's check of large changes costs everybody else.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(url: &str) -> Socket {
    let (socket, _) = tungstenite::connect(url).expect("the server accepts a WebSocket");
    if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
        let _ = tcp.set_nodelay(true);
    }
    socket
}

fn next_text(socket: &mut Socket) -> Value {
    loop {
        if let Message::Text(text) = socket.read().expect("the server answers") {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

/// Joins `room`; the snapshot the server sent.
fn join(socket: &mut Socket, room: &str) -> Vec<u8> {
    let join = json!({"type":"crdt-join","roomId":room});
    socket.send(Message::Text(join.to_string().into())).unwrap();
    loop {
        let message = next_text(socket);
        match message["type"].as_str() {
            Some("crdt-snapshot") => {
                let data = message["data"].as_str().expect("snapshot data");
                return base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .expect("base64");
            }
            Some("crdt-joined") => continue,
            _ => panic!("unexpected reply to crdt-join: {message}"),
        }
    }
}

fn resident_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// duckwire's count of rooms in memory (`duckwire_crdt_rooms` on `/metrics`), if the server
/// has it.
fn rooms_in_memory(url: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut stream = TcpStream::connect(host).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with("duckwire_crdt_rooms "))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// After the page loads: the room left memory, then one more join loads it.
fn reload(url: &str, room: &str, pid: Option<u32>, wait: Duration) {
    std::thread::sleep(wait);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rooms_in_memory(url).is_some_and(|rooms| rooms > 0.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let unloaded = rooms_in_memory(url).map_or("unknown".into(), |n| format!("{n}"));
    // The allocator hands freed pages back after a short delay: both readings wait for it.
    let settle = Duration::from_secs(3);
    std::thread::sleep(settle);
    let before = resident_kib(pid);
    let mut socket = connect(url);
    let started = Instant::now();
    let snapshot = join(&mut socket, room);
    let load = started.elapsed();
    std::thread::sleep(settle);
    let after = resident_kib(pid);
    let added = match (before, after) {
        (Some(before), Some(after)) => format!(
            "{} → {} MiB ({:+} KiB)",
            before / 1024,
            after / 1024,
            after as i64 - before as i64
        ),
        _ => "-".into(),
    };
    println!(
        "| reload (rooms in memory before: {unloaded}) | join {:.2} ms | {} KB | server RSS {added} |",
        load.as_secs_f64() * 1e3,
        snapshot.len() / 1024
    );
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn page_loads(
    url: &str,
    peers: usize,
    pid: Option<u32>,
    csv: Option<&str>,
    keep_member: bool,
    reload_after: Option<Duration>,
) {
    let room = format!("long-room-{}", std::process::id());
    // With `--keep-member`, one member stays joined throughout (it never reads: its relays
    // wait in its socket), so the room never empties between page loads.
    let _member = keep_member.then(|| {
        let mut socket = connect(url);
        join(&mut socket, &room);
        socket
    });
    let window = 300.min(peers);
    let (mut acks, mut joins) = (Vec::new(), Vec::new());
    let mut rows = vec!["page_load,join_us,ack_us,snapshot_bytes".to_string()];
    let rss_before = resident_kib(pid);
    println!("| past peers | join (median) | edit → ack (median) | snapshot | server RSS |");
    println!("|---|---|---|---|---|");
    for load in 1..=peers {
        let mut socket = connect(url);
        let joined = Instant::now();
        let snapshot = join(&mut socket, &room);
        let join_time = joined.elapsed();
        let doc = loro::LoroDoc::new();
        doc.set_peer_id(1_000_000 + load as u64).unwrap();
        doc.import(&snapshot).expect("a snapshot Loro imports");
        let version = doc.oplog_vv();
        doc.get_map("settings").insert("k", load as i64).unwrap();
        doc.commit();
        let update = doc.export(loro::ExportMode::updates(&version)).unwrap();
        let sent = Instant::now();
        socket.send(Message::Binary(update.into())).unwrap();
        loop {
            let reply = next_text(&mut socket);
            match reply["type"].as_str() {
                Some("crdt-update-ack") => break,
                Some("error") => panic!("edit refused: {reply}"),
                _ => continue,
            }
        }
        let ack_time = sent.elapsed();
        let _ = socket.close(None);
        acks.push(ack_time);
        joins.push(join_time);
        rows.push(format!(
            "{load},{},{},{}",
            join_time.as_micros(),
            ack_time.as_micros(),
            snapshot.len()
        ));
        if load % window == 0 || load == peers {
            let rss = match (resident_kib(pid), rss_before) {
                (Some(now), Some(before)) => {
                    format!("{} MiB (+{} KiB)", now / 1024, now.saturating_sub(before))
                }
                _ => "-".into(),
            };
            let checkpoint = [
                300, 1_000, 2_100, 3_000, 5_100, 10_200, 20_100, 30_000, 50_100,
            ];
            if checkpoint.contains(&load) || load == peers {
                println!(
                    "| {load} | {:.2} ms | {:.2} ms | {} KB | {rss} |",
                    median(&mut joins).as_secs_f64() * 1e3,
                    median(&mut acks).as_secs_f64() * 1e3,
                    snapshot.len() / 1024
                );
            }
            acks.clear();
            joins.clear();
        }
    }
    if let Some(path) = csv {
        std::fs::write(path, rows.join("\n") + "\n").expect("the CSV is written");
    }
    if let Some(wait) = reload_after {
        reload(url, &room, pid, wait);
    }
}

/// A client in a room of its own that sends one `kib` KiB change (a long text from one peer,
/// the same bytes each time, as a client re-sending its whole history would) and waits for
/// its ack, again and again until `stop`: what checking a large change costs the others.
fn resend_large_change(
    url: &str,
    kib: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let mut socket = connect(url);
    join(&mut socket, &format!("resender-{}", std::process::id()));
    let doc = loro::LoroDoc::new();
    doc.set_peer_id(99).unwrap();
    doc.get_text("t")
        .insert(0, &"x".repeat(kib * 1024))
        .unwrap();
    doc.commit();
    let change = doc.export(loro::ExportMode::all_updates()).unwrap();
    std::thread::spawn(move || {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            socket.send(Message::Binary(change.clone().into())).unwrap();
            while next_text(&mut socket)["type"] != "crdt-update-ack" {}
            sent += 1;
        }
        sent
    })
}

fn fan_out(url: &str, members: usize, edits: usize, resend_kib: Option<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let resender = resend_kib.map(|kib| resend_large_change(url, kib, stop.clone()));
    let room = format!("fan-out-{}-{members}", std::process::id());
    let mut sockets: Vec<Socket> = (0..members).map(|_| connect(url)).collect();
    for socket in &mut sockets {
        join(socket, &room);
    }
    let doc = loro::LoroDoc::new();
    let mut samples = Vec::new();
    for edit in 0..edits {
        let version = doc.oplog_vv();
        doc.get_map("m").insert("k", edit as i64).unwrap();
        doc.commit();
        let update = doc.export(loro::ExportMode::updates(&version)).unwrap();
        let sent = Instant::now();
        sockets[0].send(Message::Binary(update.into())).unwrap();
        for other in &mut sockets[1..] {
            while !matches!(other.read().expect("a relay"), Message::Binary(_)) {}
        }
        samples.push(sent.elapsed());
        loop {
            if next_text(&mut sockets[0])["type"] == "crdt-update-ack" {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let resent = resender.map(|thread| thread.join().expect("the resender"));
    let mut sorted = samples.clone();
    sorted.sort();
    println!(
        "| fan-out to {} | {:.2} ms | {:.2} ms |{}",
        members - 1,
        median(&mut samples).as_secs_f64() * 1e3,
        sorted[sorted.len() * 99 / 100].as_secs_f64() * 1e3,
        resent.map_or(String::new(), |n| format!(
            " {n} large changes resent meanwhile |"
        ))
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let url = option("--url").expect("--url ws://HOST:PORT/");
    match args.get(1).map(String::as_str) {
        Some("page-loads") => page_loads(
            &url,
            option("--peers").map_or(3_000, |n| n.parse().expect("a number")),
            option("--pid").map(|p| p.parse().expect("a pid")),
            option("--csv").as_deref(),
            args.iter().any(|a| a == "--keep-member"),
            option("--reload-after-ms")
                .map(|ms| Duration::from_millis(ms.parse().expect("milliseconds"))),
        ),
        Some("fan-out") => fan_out(
            &url,
            option("--members").map_or(100, |n| n.parse().expect("a number")),
            option("--edits").map_or(50, |n| n.parse().expect("a number")),
            option("--resend-kib").map(|n| n.parse().expect("a number")),
        ),
        _ => panic!("usage: duckwire-rooms-bench page-loads|fan-out --url ws://H:P/ …"),
    }
}
