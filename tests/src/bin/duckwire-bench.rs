//! The benchmark: a Rust load generator for the servers duckwire is compared with, over the
//! protocols they share, plus the in-process floor (the same SQL through duckdb-rs and
//! duckwire's own IPC/JSON encoders, no network) measured in the same run.
//!
//!   duckwire-bench [--url ws://H:P/] [--mosaic-url ws://H:P/mosaic] [--http http://H:P/]
//!                  --pid PID --data tests/data [--floor] [--label L] [--json out.json]
//!   duckwire-bench --compare duckwire.json sqlrooms.json [mosaic.json]
//!   duckwire-bench --wan [--ws-deflate] [--accept-encoding gzip] --url … (scripts/bench/wan.sh)
//!
//! `--url` runs the SQLRooms WebSocket scenarios (duckwire, sqlrooms-server), `--mosaic-url`
//! Mosaic's WebSocket protocol (duckwire's `/mosaic`, Mosaic's servers on `/`), `--http` the
//! Mosaic REST scenarios on kept-alive connections. Scenario names start with the protocol, so
//! only like is compared with like. Every scenario reports median and p99 latency, queries/s,
//! MB/s and the server's peak RSS during the scenario (VmHWM after resetting it through
//! /proc/PID/clear_refs).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duckwire_core::Frame;
use duckwire_core::QueryKind;
use duckwire_smol::duckdb;
use duckwire_tests::deflate_client::{DeflateClient, Received, BROWSER_OFFER};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

struct Options {
    /// SQLRooms WebSocket protocol.
    url: Option<String>,
    /// Mosaic's WebSocket protocol.
    mosaic_url: Option<String>,
    /// Mosaic REST (`POST /`).
    http: Option<String>,
    pid: Option<u32>,
    data: String,
    floor: bool,
    label: String,
    json_out: Option<String>,
    quick: bool,
    /// Only scenarios whose name contains this (for profiling one path).
    only: Option<String>,
    /// Connections of the throughput scenario (each on its own client thread).
    connections: usize,
    /// Replicas sharing a Redis (`--replicas URL,URL,…`): the cross-replica scenarios.
    replicas: Vec<String>,
    /// `--wan`: the scenarios of the shaped-link benchmark (scripts/bench/wan.sh), with
    /// repetitions a slow link can afford.
    wan: bool,
    /// `--readers-at-once N`: only the scenarios of N clients sending the same big read at
    /// once (identical persisted reads sharing one run).
    readers_at_once: Option<usize>,
}

/// `--ws-deflate`: WebSocket clients offer permessage-deflate as a browser does.
static WS_DEFLATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// `--accept-encoding gzip|br|zstd`: REST clients ask for compressed answers and decode them.
static ACCEPT_ENCODING: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        url: None,
        mosaic_url: None,
        http: None,
        pid: None,
        data: "tests/data".into(),
        floor: false,
        label: "server".into(),
        json_out: None,
        quick: false,
        only: None,
        connections: 16,
        replicas: Vec::new(),
        wan: false,
        readers_at_once: None,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => options.url = Some(value()?),
            "--mosaic-url" => options.mosaic_url = Some(value()?),
            "--http" => options.http = Some(value()?),
            "--pid" => options.pid = Some(value()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--data" => options.data = value()?,
            "--floor" => options.floor = true,
            "--quick" => options.quick = true,
            "--wan" => options.wan = true,
            "--readers-at-once" => {
                let readers = value()?
                    .parse()
                    .map_err(|e| format!("--readers-at-once: {e}"))?;
                options.readers_at_once = Some(readers);
            }
            "--ws-deflate" => WS_DEFLATE.store(true, std::sync::atomic::Ordering::Relaxed),
            "--accept-encoding" => {
                let _ = ACCEPT_ENCODING.set(value()?);
            }
            "--label" => options.label = value()?,
            "--json" => options.json_out = Some(value()?),
            "--only" => options.only = Some(value()?),
            "--replicas" => {
                options.replicas = value()?.split(',').map(str::to_string).collect();
            }
            "--connections" => {
                options.connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?
            }
            "--compare" => {
                let files: Vec<String> = args.collect();
                if files.len() < 2 {
                    return Err("--compare needs duckwire.json and one or two others".into());
                }
                compare(&files)?;
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.url.is_none()
        && options.mosaic_url.is_none()
        && options.http.is_none()
        && options.replicas.is_empty()
    {
        return Err("give at least one of --url, --mosaic-url, --http, --replicas".into());
    }
    Ok(options)
}

fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("duckwire-bench: {e}");
            std::process::exit(2);
        }
    };
    let results = run_all(&options);
    print_table(&options.label, &results);
    if let Some(path) = &options.json_out {
        let value: Value = results.iter().map(Scenario::to_json).collect();
        std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).expect("write --json");
    }
}

/// One scenario's measurements.
struct Scenario {
    name: String,
    /// Per-operation latencies (a query, a suite, a fan-out).
    samples: Vec<Duration>,
    /// Operations (queries) completed and bytes received over `wall`.
    operations: u64,
    bytes: u64,
    wall: Duration,
    peak_rss: Option<u64>,
    /// Server CPU time (all its threads) per operation: unlike latency, it does not depend
    /// on how the VM schedules the client's and the server's wake-ups.
    server_cpu_per_op: Option<Duration>,
    floor: Option<Duration>,
}

impl Scenario {
    /// A scenario that ran from `started` until now, without a floor yet.
    fn ended(
        name: &str,
        samples: Vec<Duration>,
        operations: u64,
        bytes: u64,
        started: Instant,
        rss: &Rss,
    ) -> Scenario {
        Scenario {
            name: name.to_string(),
            samples,
            operations,
            bytes,
            wall: started.elapsed(),
            peak_rss: rss.peak(),
            server_cpu_per_op: rss
                .cpu_since_reset()
                .map(|cpu| cpu.div_f64(operations.max(1) as f64)),
            floor: None,
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "median_s": self.percentile(0.5).as_secs_f64(),
            "p99_s": self.percentile(0.99).as_secs_f64(),
            "ops_per_s": self.operations as f64 / self.wall.as_secs_f64(),
            "mb_per_s": self.bytes as f64 / 1e6 / self.wall.as_secs_f64(),
            "peak_rss_bytes": self.peak_rss,
            "server_cpu_per_op_s": self.server_cpu_per_op.map(|d| d.as_secs_f64()),
            "floor_median_s": self.floor.map(|f| f.as_secs_f64()),
        })
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else {
        format!("{ms:.1} ms")
    }
}

fn print_table(label: &str, results: &[Scenario]) {
    println!("\n{label}");
    println!(
        "| scenario | median | p99 | ops/s | MB/s | peak RSS | server CPU/op | floor median | × floor |\n|---|---|---|---|---|---|---|---|---|"
    );
    for s in results {
        let median = s.percentile(0.5);
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} |",
            s.name,
            ms(median),
            ms(s.percentile(0.99)),
            s.operations as f64 / s.wall.as_secs_f64(),
            s.bytes as f64 / 1e6 / s.wall.as_secs_f64(),
            s.peak_rss
                .map(|b| format!("{:.0} MB", b as f64 / 1e6))
                .unwrap_or_default(),
            s.server_cpu_per_op.map(ms).unwrap_or_default(),
            s.floor.map(ms).unwrap_or_default(),
            s.floor
                .map(|f| format!("{:.2}", median.as_secs_f64() / f.as_secs_f64()))
                .unwrap_or_default(),
        );
    }
}

type Results = BTreeMap<String, Value>;

fn load(path: &str) -> Result<(String, Results), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let rows: Vec<Value> = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let label = std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((
        label,
        rows.into_iter()
            .map(|row| (row["name"].as_str().unwrap_or_default().to_string(), row))
            .collect(),
    ))
}

fn median_of(results: &Results, name: &str) -> Option<f64> {
    results.get(name)?["median_s"].as_f64()
}

/// Throughput scenarios compare ops/s; everything else medians. `other / ours`: above 1 means
/// duckwire is faster.
fn speedup(ours: &Value, other: &Value) -> Option<f64> {
    let name = ours["name"].as_str().unwrap_or_default();
    if name.contains("throughput") {
        Some(ours["ops_per_s"].as_f64()? / other["ops_per_s"].as_f64()?)
    } else {
        Some(other["median_s"].as_f64()? / ours["median_s"].as_f64()?)
    }
}

/// The three-way table and the targets of BENCHMARKS.md, each marked met or not.
fn compare(files: &[String]) -> Result<(), String> {
    let (_, ours) = load(&files[0])?;
    let others: Vec<(String, Results)> = files[1..]
        .iter()
        .map(|f| load(f))
        .collect::<Result<_, _>>()?;
    let secs = |v: Option<f64>| {
        v.map(|s| ms(Duration::from_secs_f64(s)))
            .unwrap_or_default()
    };
    print!("\n| scenario | duckwire |");
    for (label, _) in &others {
        print!(" {label} | × ({label} / duckwire) |");
    }
    println!(" × floor |");
    println!("|---|---|{}---|", "---|---|".repeat(others.len()));
    for (name, row) in &ours {
        print!("| {name} | {} |", secs(row["median_s"].as_f64()));
        for (_, other) in &others {
            match other.get(name) {
                Some(theirs) => print!(
                    " {} | {} |",
                    secs(theirs["median_s"].as_f64()),
                    speedup(row, theirs)
                        .map(|r| format!("{r:.2}×"))
                        .unwrap_or_default()
                ),
                None => print!(" — | — |"),
            }
        }
        let floor = row["floor_median_s"]
            .as_f64()
            .zip(row["median_s"].as_f64())
            .map(|(f, m)| format!("{:.2}", m / f))
            .unwrap_or_default();
        println!(" {floor} |");
    }
    println!(
        "\nthroughput rows compare ops/s (duckwire / other), all others medians (other / duckwire)"
    );

    println!("\n| target | measured | met |\n|---|---|---|");
    let target = |what: String, measured: Option<f64>, met: &dyn Fn(f64) -> bool| match measured {
        Some(value) => println!(
            "| {what} | {value:.2} | {} |",
            if met(value) { "met" } else { "NOT met" }
        ),
        None => println!("| {what} | not measured | — |"),
    };
    for (label, theirs) in &others {
        let shared: Vec<(&String, f64)> = ours
            .iter()
            .filter_map(|(name, row)| Some((name, speedup(row, theirs.get(name)?)?)))
            .collect();
        if label.contains("mosaic") && !shared.is_empty() {
            for (name, ratio) in &shared {
                target(format!("{name}: ≥ 1.0× {label}"), Some(*ratio), &|r| {
                    r >= 1.0
                });
            }
            let geomean =
                (shared.iter().map(|(_, r)| r.ln()).sum::<f64>() / shared.len() as f64).exp();
            target(
                format!(
                    "geometric mean over {} shared scenarios: ≥ 1.5× {label}",
                    shared.len()
                ),
                Some(geomean),
                &|r| r >= 1.5,
            );
        }
        if label.contains("sqlrooms") {
            let ratio = |name: &str| Some(median_of(theirs, name)? / median_of(&ours, name)?);
            target(
                format!("select 1, json: ≥ 10× {label}"),
                ratio("ws sqlrooms | select 1, json, sequential"),
                &|r| r >= 10.0,
            );
            target(
                format!("select 1, arrow: ≥ 10× {label}"),
                ratio("ws sqlrooms | select 1, arrow, sequential"),
                &|r| r >= 10.0,
            );
            target(
                format!("CRDT fan-out: ≥ 3× {label} (≤ ⅓ of its time)"),
                ratio("ws sqlrooms | CRDT fan-out: 1 update to 7 members"),
                &|r| r >= 3.0,
            );
            target(
                format!("cache hit: ≥ 3× {label}"),
                ratio("ws sqlrooms | cache hit (persist: true, group-by)"),
                &|r| r >= 3.0,
            );
        }
    }
    let over_floor = |name: &str| {
        let row = ours.get(name)?;
        Some(row["median_s"].as_f64()? / row["floor_median_s"].as_f64()?)
    };
    for (scenario, limit) in [
        ("ws sqlrooms | select 1, json, sequential", 1.2),
        ("ws sqlrooms | select 1, arrow, sequential", 1.2),
        ("ws sqlrooms | big Arrow: 5M rows × 2 bigint", 1.3),
        ("ws sqlrooms | big JSON: all flights rows", 1.5),
        ("ws sqlrooms | Mosaic suite (7 queries)", 1.15),
    ] {
        target(
            format!("{scenario}: ≤ {limit}× the floor"),
            over_floor(scenario),
            &|r| r <= limit,
        );
    }
    Ok(())
}

// --- the client side ---------------------------------------------------------------------

/// Which WebSocket protocol a [`Client`] speaks.
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    /// Queries carry ids; replies may come in any order.
    SqlRooms,
    /// Mosaic's socket protocol: no ids, replies in the order of the requests, Arrow as a
    /// bare IPC binary message.
    Mosaic,
}

/// A WebSocket connection: tungstenite, or our own client when deflate is offered.
enum WsSocket {
    Plain(Box<Socket>),
    Deflate(Box<DeflateClient>),
}

impl WsSocket {
    fn send_text(&mut self, text: String) {
        match self {
            WsSocket::Plain(socket) => socket.send(Message::Text(text.into())),
            WsSocket::Deflate(client) => client.send_text(&text).map_err(tungstenite::Error::Io),
        }
        .expect("send a query");
    }

    fn read(&mut self) -> Message {
        match self {
            WsSocket::Plain(socket) => socket.read().expect("read a reply"),
            WsSocket::Deflate(client) => match client.recv().expect("read a reply") {
                Received::Message(Frame::Text(text)) => Message::Text(text.into()),
                Received::Message(Frame::Binary(bytes)) => Message::Binary(bytes),
                Received::Pong(bytes) => Message::Pong(bytes),
                Received::Closed(code) => panic!("the server closed the connection: {code:?}"),
            },
        }
    }
}

/// A tungstenite socket without size limits, for the scenarios that drive it directly.
fn plain_socket(url: &str) -> Socket {
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (socket, _) = tungstenite::client::connect_with_config(url, Some(config), 3)
        .expect("connect to the server");
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_nodelay(true).expect("nodelay");
    }
    socket
}

/// A WebSocket client with queries in flight.
struct Client {
    socket: WsSocket,
    wire: Wire,
    next_id: u64,
    /// SQLRooms: sent-at by query id.
    by_id: BTreeMap<String, Instant>,
    /// Mosaic: sent-at in request order.
    in_order: VecDeque<Instant>,
}

impl Client {
    fn connect(url: &str, wire: Wire) -> Client {
        let socket = if WS_DEFLATE.load(std::sync::atomic::Ordering::Relaxed) {
            let client = DeflateClient::connect(url, Some(BROWSER_OFFER)).expect("connect");
            static DECLINED: std::sync::Once = std::sync::Once::new();
            if !client.deflate() {
                DECLINED.call_once(|| eprintln!("bench: {url} declined permessage-deflate"));
            }
            WsSocket::Deflate(Box::new(client))
        } else {
            WsSocket::Plain(Box::new(plain_socket(url)))
        };
        Client {
            socket,
            wire,
            next_id: 0,
            by_id: BTreeMap::new(),
            in_order: VecDeque::new(),
        }
    }

    fn in_flight(&self) -> usize {
        self.by_id.len() + self.in_order.len()
    }

    fn send(&mut self, kind: &str, sql: &str, persist: bool) {
        let mut message = json!({"type":kind,"sql":sql});
        if persist {
            message["persist"] = json!(true);
        }
        match self.wire {
            Wire::SqlRooms => {
                self.next_id += 1;
                let id = format!("q{}", self.next_id);
                message["queryId"] = json!(id);
                self.by_id.insert(id, Instant::now());
            }
            Wire::Mosaic => self.in_order.push_back(Instant::now()),
        }
        self.socket.send_text(message.to_string());
    }

    /// Reads until the reply of a query in flight: when it was sent and the reply's size.
    /// Panics on an error reply.
    fn recv(&mut self) -> (Instant, usize) {
        loop {
            let message = self.socket.read();
            let (text, bytes) = match &message {
                Message::Text(text) => (Some(text.as_str()), text.len()),
                Message::Binary(bytes) => (None, bytes.len()),
                _ => continue,
            };
            match self.wire {
                Wire::Mosaic => {
                    if let Some(text) = text {
                        if text.starts_with("{\"error\"") {
                            panic!("query failed: {text}");
                        }
                    }
                    return (self.in_order.pop_front().expect("a query in flight"), bytes);
                }
                Wire::SqlRooms => {
                    let id = match (text, &message) {
                        (Some(text), _) => {
                            // Only the envelope is decoded; a large `data` string is skipped,
                            // not copied, so the client does not dominate big-result timings.
                            let reply: Envelope = serde_json::from_str(text).expect("JSON reply");
                            if reply.kind == "error" {
                                panic!("query failed: {text}");
                            }
                            reply.query_id
                        }
                        (None, Message::Binary(frame)) => {
                            let n = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
                            let header: Value =
                                serde_json::from_slice(&frame[4..4 + n]).unwrap_or(Value::Null);
                            header["queryId"].clone()
                        }
                        _ => continue,
                    };
                    if let Some(sent) = id.as_str().and_then(|id| self.by_id.remove(id)) {
                        return (sent, bytes);
                    }
                }
            }
        }
    }

    fn query(&mut self, kind: &str, sql: &str, persist: bool) -> usize {
        self.send(kind, sql, persist);
        self.recv().1
    }
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "queryId", default)]
    query_id: Value,
}

/// Mosaic REST on one kept-alive HTTP/1.1 connection.
struct RestClient {
    reader: BufReader<TcpStream>,
    host: String,
}

impl RestClient {
    fn connect(base: &str) -> RestClient {
        let host = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let stream = TcpStream::connect(&host).expect("connect to the server over HTTP");
        stream.set_nodelay(true).expect("nodelay");
        RestClient {
            reader: BufReader::with_capacity(1 << 16, stream),
            host,
        }
    }

    /// `POST /` and reads the whole answer (Content-Length or chunked); returns the body's
    /// size. Panics unless the status is 200.
    fn query(&mut self, kind: &str, sql: &str, persist: bool) -> usize {
        let mut body = json!({"type":kind,"sql":sql});
        if persist {
            body["persist"] = json!(true);
        }
        let body = body.to_string();
        let accept = ACCEPT_ENCODING
            .get()
            .map(|encoding| format!("Accept-Encoding: {encoding}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{accept}Content-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("send a request");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status = line.get(9..12).unwrap_or_default().to_string();
        let (mut length, mut chunked, mut closes) = (None, false, false);
        let mut encoding = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("a header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length = value.parse().ok(),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => closes = value == "close",
                "content-encoding" => encoding = value,
                _ => {}
            }
        }
        assert!(!closes, "the server closed a kept-alive connection");
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line).expect("chunk size");
                let size = usize::from_str_radix(line.trim(), 16).expect("a chunk size");
                let mut chunk = vec![0u8; size + 2];
                self.reader.read_exact(&mut chunk).expect("a chunk");
                body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(length.unwrap_or(0), 0);
            self.reader.read_exact(&mut body).expect("a body");
        }
        // Decoded as a browser would, inside the timed part.
        let body =
            duckwire_tests::decode_body(Some(encoding.as_str()).filter(|e| !e.is_empty()), &body);
        if status != "200" {
            panic!(
                "query failed ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        body.len()
    }
}

struct Rss {
    pid: Option<u32>,
    /// The server's CPU time when the scenario's measured part began.
    cpu_at_reset: std::sync::atomic::AtomicU64,
}

impl Rss {
    fn new(pid: Option<u32>) -> Rss {
        Rss {
            pid,
            cpu_at_reset: Default::default(),
        }
    }

    fn reset(&self) {
        if let Some(pid) = self.pid {
            // "5" resets the peak RSS (VmHWM) of the process (Linux ≥ 4.0).
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        if let Some(cpu) = self.cpu() {
            self.cpu_at_reset
                .store(cpu, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Nanoseconds the server's threads have run, from the scheduler's own accounting
    /// (`/proc/PID/task/*/schedstat`, ns resolution; `/proc/PID/stat` counts 10 ms ticks). A
    /// thread that exited meanwhile is not counted, which only matters for thread churn.
    fn cpu(&self) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid?)).ok()?;
        let mut total = 0;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Some(total)
    }

    /// Server CPU time since [`reset`](Self::reset).
    fn cpu_since_reset(&self) -> Option<Duration> {
        let now = self.cpu()?;
        let then = self.cpu_at_reset.load(std::sync::atomic::Ordering::SeqCst);
        Some(Duration::from_nanos(now.saturating_sub(then)))
    }

    fn peak(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
}

/// Where and how a scenario talks to the server.
#[derive(Clone)]
enum Door {
    Ws(String, Wire),
    Rest(String),
}

/// One connection through a [`Door`].
enum Connection {
    Ws(Box<Client>),
    Rest(RestClient),
}

impl Connection {
    fn open(door: &Door) -> Connection {
        match door {
            Door::Ws(url, wire) => Connection::Ws(Box::new(Client::connect(url, *wire))),
            Door::Rest(base) => Connection::Rest(RestClient::connect(base)),
        }
    }

    fn query(&mut self, kind: &str, sql: &str, persist: bool) -> usize {
        match self {
            Connection::Ws(client) => client.query(kind, sql, persist),
            Connection::Rest(client) => client.query(kind, sql, persist),
        }
    }
}

/// Runs `count` sequential queries of `sql` and times each.
fn sequential(name: &str, door: &Door, rss: &Rss, kind: &str, sql: &str, count: usize) -> Scenario {
    let mut conn = Connection::open(door);
    for _ in 0..count.min(50) {
        conn.query(kind, sql, false); // warm-up
    }
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count);
    let mut bytes = 0;
    for _ in 0..count {
        let t = Instant::now();
        bytes += conn.query(kind, sql, false) as u64;
        samples.push(t.elapsed());
    }
    Scenario::ended(name, samples, count as u64, bytes, started, rss)
}

/// `connections` sockets, each on its own thread keeping `window` queries in flight until it
/// sent `per_conn`.
fn throughput(
    name: &str,
    url: &str,
    wire: Wire,
    rss: &Rss,
    connections: usize,
    window: usize,
    per_conn: usize,
) -> Scenario {
    rss.reset();
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let mut client = Client::connect(&url, wire);
                let mut samples = Vec::with_capacity(per_conn);
                let (mut sent, mut bytes) = (0, 0u64);
                while samples.len() < per_conn {
                    while sent < per_conn && client.in_flight() < window {
                        client.send("arrow", "select 1 as x", false);
                        sent += 1;
                    }
                    let (at, size) = client.recv();
                    samples.push(at.elapsed());
                    bytes += size as u64;
                }
                (samples, bytes)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut bytes = 0;
    for thread in threads {
        let (s, b) = thread.join().expect("a connection thread");
        samples.extend(s);
        bytes += b;
    }
    let operations = samples.len() as u64;
    Scenario::ended(name, samples, operations, bytes, started, rss)
}

/// `clients` connections, each on its own thread, each running the queries one after another
/// `reps` times; a sample is one pass of one client.
fn repeated(
    name: &str,
    door: &Door,
    rss: &Rss,
    queries: &[(&str, &str)],
    reps: usize,
    clients: usize,
) -> Scenario {
    let queries: Vec<(String, String)> = queries
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect();
    let mut conns: Vec<Connection> = (0..clients).map(|_| Connection::open(door)).collect();
    for conn in &mut conns {
        for (kind, sql) in &queries {
            conn.query(kind, sql, false); // warm-up
        }
    }
    rss.reset();
    let started = Instant::now();
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let queries = queries.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut bytes = 0;
                for _ in 0..reps {
                    let t = Instant::now();
                    for (kind, sql) in &queries {
                        bytes += conn.query(kind, sql, false) as u64;
                    }
                    samples.push(t.elapsed());
                }
                (samples, bytes)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut bytes = 0;
    for thread in threads {
        let (s, b) = thread.join().expect("a client thread");
        samples.extend(s);
        bytes += b;
    }
    let operations = (reps * queries.len() * clients) as u64;
    Scenario::ended(name, samples, operations, bytes, started, rss)
}

/// `readers` connections send the same query at the same moment, `reps` times; a sample is
/// one reader's time to its whole result. With `persist`, identical requests may share one
/// run (duckwire: one DuckDB run whose stream every reader reads).
#[allow(clippy::too_many_arguments)]
fn readers_at_once(
    name: &str,
    door: &Door,
    rss: &Rss,
    kind: &str,
    sql: &str,
    persist: bool,
    readers: usize,
    reps: usize,
) -> Scenario {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(readers));
    let mut conns: Vec<Connection> = (0..readers).map(|_| Connection::open(door)).collect();
    conns[0].query(kind, sql, false); // warm-up
    rss.reset();
    let started = Instant::now();
    let threads: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (kind, sql, barrier) = (kind.to_string(), sql.to_string(), barrier.clone());
            std::thread::spawn(move || {
                let (mut samples, mut bytes) = (Vec::new(), 0u64);
                for _ in 0..reps {
                    barrier.wait();
                    let t = Instant::now();
                    bytes += conn.query(&kind, &sql, persist) as u64;
                    samples.push(t.elapsed());
                }
                (samples, bytes)
            })
        })
        .collect();
    let (mut samples, mut bytes) = (Vec::new(), 0);
    for thread in threads {
        let (s, b) = thread.join().expect("a reader thread");
        samples.extend(s);
        bytes += b;
    }
    Scenario::ended(name, samples, (reps * readers) as u64, bytes, started, rss)
}

fn cache_hits(name: &str, door: &Door, rss: &Rss, reps: usize) -> Scenario {
    let sql = "select floor(delay / 10) * 10 as bin, count(*) as n, avg(distance) as d from flights group by 1 order by 1";
    let mut conn = Connection::open(door);
    conn.query("arrow", sql, true); // the miss that fills the cache
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut bytes = 0;
    for _ in 0..reps {
        let t = Instant::now();
        bytes += conn.query("arrow", sql, true) as u64;
        samples.push(t.elapsed());
    }
    Scenario::ended(name, samples, reps as u64, bytes, started, rss)
}

/// Joins `room` and waits for `crdt-joined`, then `crdt-snapshot`.
fn join_bench_room(socket: &mut Socket, room: &str) {
    let join = json!({"type":"crdt-join","roomId":room,"clientId":"bench"});
    socket.send(Message::Text(join.to_string().into())).unwrap();
    let mut seen = 0;
    while seen < 2 {
        if let Message::Text(_) = socket.read().unwrap() {
            seen += 1;
        }
    }
}

/// One Loro peer typing: each edit sets one of 50 keys and yields the update since the
/// previous edit.
struct Editor {
    doc: loro::LoroDoc,
    version: loro::VersionVector,
}

impl Editor {
    fn new() -> Editor {
        let doc = loro::LoroDoc::new();
        let version = doc.oplog_vv();
        Editor { doc, version }
    }

    fn edit(&mut self, i: usize) -> Vec<u8> {
        self.doc
            .get_map("m")
            .insert(&format!("k{}", i % 50), i as i64)
            .unwrap();
        self.doc.commit();
        let update = self
            .doc
            .export(loro::ExportMode::updates(&self.version))
            .unwrap();
        self.version = self.doc.oplog_vv();
        update
    }
}

/// One update from member 0 to 7 others; member `i` connects to `urls[i % urls.len()]`
/// (one server, or replicas sharing a Redis).
fn crdt_fanout(name: &str, urls: &[String], rss: &Rss, reps: usize) -> Scenario {
    let room = format!("fanout-{}-{}", std::process::id(), urls.len());
    let mut members: Vec<Socket> = (0..8)
        .map(|i| plain_socket(&urls[i % urls.len()]))
        .collect();
    for socket in &mut members {
        join_bench_room(socket, &room);
    }
    let mut editor = Editor::new();
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut bytes = 0;
    for i in 0..reps {
        let update = editor.edit(i);
        let t = Instant::now();
        members[0].send(Message::Binary(update.into())).unwrap();
        for other in &mut members[1..] {
            loop {
                if let Message::Binary(b) = other.read().unwrap() {
                    bytes += b.len() as u64;
                    break;
                }
            }
        }
        samples.push(t.elapsed());
        // The sender's ack.
        loop {
            if let Message::Text(_) = members[0].read().unwrap() {
                break;
            }
        }
    }
    Scenario::ended(name, samples, reps as u64, bytes, started, rss)
}

/// Acknowledged CRDT edits per second: `editors` clients, each alone in its own room, each
/// keeping `window` edits in flight (a burst of typing); an edit counts when its
/// `crdt-update-ack` arrives (in cluster mode, after its append to the room's Redis Stream).
fn crdt_edit_throughput(
    name: &str,
    url: &str,
    rss: &Rss,
    editors: usize,
    window: usize,
    per_editor: usize,
) -> Scenario {
    rss.reset();
    let started = Instant::now();
    let threads: Vec<_> = (0..editors)
        .map(|e| {
            let url = url.to_string();
            let room = format!("edits-{}-{e}-{name}", std::process::id());
            std::thread::spawn(move || {
                let mut socket = plain_socket(&url);
                join_bench_room(&mut socket, &room);
                let mut editor = Editor::new();
                let mut in_flight = VecDeque::new();
                let (mut sent, mut samples) = (0, Vec::with_capacity(per_editor));
                while samples.len() < per_editor {
                    while sent < per_editor && in_flight.len() < window {
                        let update = editor.edit(sent);
                        in_flight.push_back(Instant::now());
                        socket.send(Message::Binary(update.into())).unwrap();
                        sent += 1;
                    }
                    if let Message::Text(text) = socket.read().unwrap() {
                        let reply: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(reply["type"], "crdt-update-ack", "{reply}");
                        samples.push(in_flight.pop_front().expect("an edit in flight").elapsed());
                    }
                }
                samples
            })
        })
        .collect();
    let samples: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("an editor"))
        .collect();
    let operations = samples.len() as u64;
    Scenario::ended(name, samples, operations, 0, started, rss)
}

/// Replicas sharing a Redis: a CRDT update to 7 members spread over them, and a notify
/// from a client on the first replica to a subscriber on the last, each also with every
/// client on the first replica (the same-process baseline, same run).
fn cross_replica(options: &Options, rss: &Rss, scale: impl Fn(usize) -> usize) -> Vec<Scenario> {
    let replicas = &options.replicas;
    let one = std::slice::from_ref(&replicas[0]);
    let n = replicas.len();
    vec![
        crdt_fanout(
            "cluster | CRDT fan-out: 1 update to 7 members on one replica",
            one,
            rss,
            scale(300),
        ),
        crdt_fanout(
            &format!("cluster | CRDT fan-out: 1 update to 7 members over {n} replicas"),
            replicas,
            rss,
            scale(300),
        ),
        crdt_edit_throughput(
            "cluster | throughput: acknowledged CRDT edits, 16 editors × 16 in flight",
            &replicas[0],
            rss,
            16,
            16,
            scale(300),
        ),
        notify_latency(
            "cluster | notify to a subscriber on the same replica",
            &replicas[0],
            &replicas[0],
            rss,
            scale(1000),
        ),
        notify_latency(
            "cluster | notify to a subscriber on another replica",
            &replicas[0],
            &replicas[n - 1],
            rss,
            scale(1000),
        ),
    ]
}

/// A notify from a client on `from` until a subscriber on `to` has it.
fn notify_latency(name: &str, from: &str, to: &str, rss: &Rss, reps: usize) -> Scenario {
    let channel = format!("bench-{}-{name}", std::process::id());
    let mut sender = plain_socket(from);
    let mut receiver = plain_socket(to);
    let subscribe = json!({"type":"subscribe","channel":channel});
    receiver
        .send(Message::Text(subscribe.to_string().into()))
        .unwrap();
    // `subscribed` comes once the subscription holds everywhere.
    while !matches!(receiver.read().unwrap(), Message::Text(_)) {}
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::with_capacity(reps);
    let mut bytes = 0;
    for i in 0..reps {
        let notify = json!({"type":"notify","channel":channel,"payload":i});
        let t = Instant::now();
        sender
            .send(Message::Text(notify.to_string().into()))
            .unwrap();
        loop {
            if let Message::Text(text) = receiver.read().unwrap() {
                bytes += text.len() as u64;
                break;
            }
        }
        samples.push(t.elapsed());
        // The sender's echo and ack.
        let mut seen = 0;
        while seen < 2 {
            if let Message::Text(_) = sender.read().unwrap() {
                seen += 1;
            }
        }
    }
    Scenario::ended(name, samples, reps as u64, bytes, started, rss)
}

// --- the floor: the same SQL in-process -----------------------------------------------

struct Floor {
    conn: duckdb::Connection,
}

impl Floor {
    fn new(data: &str) -> Floor {
        let conn = duckdb::Connection::open_in_memory().expect("in-memory DuckDB");
        for statement in setup_sql(data) {
            conn.execute_batch(&statement).expect("floor setup");
        }
        Floor { conn }
    }

    fn run(&self, kind: &str, sql: &str) {
        let kind = if kind == "json" {
            QueryKind::Json
        } else {
            QueryKind::Arrow
        };
        let header = Bytes::from_static(b"\0\0\0\x02{}");
        duckwire_smol::executor::run_sql(&self.conn, kind, sql, &header).expect("floor query");
    }

    /// Median time of `reps` runs of the queries, one after another.
    fn median(&self, queries: &[(&str, &str)], reps: usize) -> Duration {
        for (kind, sql) in queries {
            self.run(kind, sql);
        }
        let mut samples: Vec<Duration> = (0..reps)
            .map(|_| {
                let t = Instant::now();
                for (kind, sql) in queries {
                    self.run(kind, sql);
                }
                t.elapsed()
            })
            .collect();
        samples.sort();
        samples[samples.len() / 2]
    }
}

fn setup_sql(data: &str) -> Vec<String> {
    vec![
        format!("create or replace table flights as select * from read_parquet('{data}/flights-200k.parquet')"),
        format!("create or replace table athletes as select * from read_parquet('{data}/athletes.parquet')"),
    ]
}

/// A scenario of queries run one after another as one operation: (name, queries,
/// repetitions, repetitions of the floor).
type Suite = (
    &'static str,
    &'static [(&'static str, &'static str)],
    usize,
    usize,
);

const BIG_ARROW: &str = "select range as i, range * 2 as j from range(5000000)";
const BIG_JSON: &str = "select * from flights";
/// The WAN benchmark's Arrow result: 16 MB, a fifth of BIG_ARROW, so a 10 Mbit/s link
/// carries it in seconds.
const WAN_ARROW: &str = "select range as i, range * 2 as j from range(1000000)";
const MOSAIC_SUITE: [(&str, &str); 7] = [
    ("arrow", "select count(*) as n from flights"),
    ("arrow", "select avg(delay) as d, count(*) as n from flights where distance > 1000 and time between 6 and 18"),
    ("arrow", "select floor(delay / 10) * 10 as bin, count(*) as n from flights group by 1 order by 1"),
    ("arrow", "select floor(time) as x, floor(delay / 20) * 20 as y, count(*) as n from flights group by 1, 2"),
    ("json", "select sport, count(*) as n, avg(height) as h, sum(gold) as gold from athletes group by sport order by n desc"),
    ("arrow", "select * from flights limit 10000"),
    ("arrow", "select * from athletes"),
];

fn run_all(options: &Options) -> Vec<Scenario> {
    let rss = Rss::new(options.pid);
    let scale = |n: usize| if options.quick { (n / 10).max(3) } else { n };
    // Load the data through whichever door there is.
    if !options.replicas.is_empty() {
        return cross_replica(options, &rss, scale);
    }
    let setup_door = match (&options.url, &options.mosaic_url, &options.http) {
        (Some(url), _, _) => Door::Ws(url.clone(), Wire::SqlRooms),
        (None, Some(url), _) => Door::Ws(url.clone(), Wire::Mosaic),
        (None, None, Some(base)) => Door::Rest(base.clone()),
        (None, None, None) => unreachable!("checked by parse_args"),
    };
    let mut setup = Connection::open(&setup_door);
    for sql in setup_sql(&options.data) {
        setup.query("exec", &sql, false);
    }
    drop(setup);
    let floor = options.floor.then(|| Floor::new(&options.data));
    let floor_of =
        |queries: &[(&str, &str)], reps: usize| floor.as_ref().map(|f| f.median(queries, reps));

    let wanted = |name: &str| {
        options
            .only
            .as_deref()
            .is_none_or(|only| name.contains(only))
    };
    let mut results = Vec::new();
    let mut add = |name: String, run: &mut dyn FnMut(&str) -> Scenario| {
        if wanted(&name) {
            results.push(run(&name));
        }
    };
    let mut doors = Vec::new();
    if let Some(url) = &options.url {
        doors.push(("ws sqlrooms", Door::Ws(url.clone(), Wire::SqlRooms)));
    }
    if let Some(url) = &options.mosaic_url {
        doors.push(("ws mosaic", Door::Ws(url.clone(), Wire::Mosaic)));
    }
    if let Some(base) = &options.http {
        doors.push(("rest", Door::Rest(base.clone())));
    }
    for (protocol, door) in &doors {
        if let Some(readers) = options.readers_at_once {
            // Identical big reads from several clients at once, each running on its own
            // (persist: false) and allowed to share (persist: true).
            for persist in [false, true] {
                add(
                    format!(
                        "{protocol} | big Arrow, {readers} readers at once, persist: {persist}"
                    ),
                    &mut |name| {
                        readers_at_once(
                            name,
                            door,
                            &rss,
                            "arrow",
                            BIG_ARROW,
                            persist,
                            readers,
                            scale(10),
                        )
                    },
                );
            }
            continue;
        }
        if options.wan {
            // Time to result over a shaped link: three runs of each (after one warm-up).
            add(
                format!("{protocol} | select 1, json, sequential"),
                &mut |name| sequential(name, door, &rss, "json", "select 1 as x", 20),
            );
            let suites: [(&str, &[(&str, &str)]); 3] = [
                ("big JSON: all flights rows", &[("json", BIG_JSON)]),
                ("Arrow: 1M rows × 2 bigint", &[("arrow", WAN_ARROW)]),
                ("Mosaic suite (7 queries)", &MOSAIC_SUITE),
            ];
            for (suite, queries) in suites {
                add(format!("{protocol} | {suite}"), &mut |name| {
                    repeated(name, door, &rss, queries, 3, 1)
                });
            }
            continue;
        }
        for kind in ["json", "arrow"] {
            let select_one: &[(&str, &str)] = &[(kind, "select 1 as x")];
            add(
                format!("{protocol} | select 1, {kind}, sequential"),
                &mut |name| {
                    let mut s = sequential(name, door, &rss, kind, "select 1 as x", scale(2000));
                    s.floor = floor_of(select_one, 2000);
                    s
                },
            );
        }
        if let Door::Ws(url, wire) = door {
            let connections = options.connections;
            add(
                format!("{protocol} | throughput: select 1, {connections} conns × 16 in flight"),
                &mut |name| throughput(name, url, *wire, &rss, connections, 16, scale(400)),
            );
        }
        let suites: [Suite; 3] = [
            (
                "big Arrow: 5M rows × 2 bigint",
                &[("arrow", BIG_ARROW)],
                10,
                5,
            ),
            ("big JSON: all flights rows", &[("json", BIG_JSON)], 10, 5),
            ("Mosaic suite (7 queries)", &MOSAIC_SUITE, 30, 15),
        ];
        for (suite, queries, reps, floor_reps) in suites {
            add(format!("{protocol} | {suite}"), &mut |name| {
                let mut s = repeated(name, door, &rss, queries, scale(reps), 1);
                s.floor = floor_of(queries, floor_reps);
                s
            });
        }
        if let Door::Rest(_) = door {
            // A browser opens up to 6 connections per host; a Mosaic page's queries spread
            // over them.
            add(
                format!("{protocol} | Mosaic suite, 6 parallel kept-alive clients"),
                &mut |name| repeated(name, door, &rss, &MOSAIC_SUITE, scale(30), 6),
            );
        } else {
            add(
                format!("{protocol} | cache hit (persist: true, group-by)"),
                &mut |name| cache_hits(name, door, &rss, scale(500)),
            );
        }
        if let Door::Ws(url, Wire::SqlRooms) = door {
            add(
                format!("{protocol} | CRDT fan-out: 1 update to 7 members"),
                &mut |name| crdt_fanout(name, std::slice::from_ref(url), &rss, scale(300)),
            );
        }
    }
    results
}
