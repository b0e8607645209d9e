//! The benchmark: a Rust load generator for any server speaking the SQLRooms WebSocket
//! protocol (duckwire or the Python sqlrooms-server), plus the in-process floor (the same SQL
//! through duckdb-rs and duckwire's own IPC/JSON encoders, no network) measured in the same run.
//!
//!   duckwire-bench --url ws://127.0.0.1:4000 --pid PID --data tests/data [--floor]
//!                  [--label duckwire] [--json out.json]
//!   duckwire-bench --compare duckwire.json reference.json
//!
//! Every scenario reports median and p99 latency, queries/s, MB/s and the server's peak RSS
//! during the scenario (VmHWM after resetting it through /proc/PID/clear_refs).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use duckwire_core::QueryKind;
use duckwire_smol::duckdb;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

struct Options {
    url: String,
    pid: Option<u32>,
    data: String,
    floor: bool,
    label: String,
    json_out: Option<String>,
    quick: bool,
    /// Only scenarios whose name contains this (for profiling one path).
    only: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        url: "ws://127.0.0.1:4000".into(),
        pid: None,
        data: "tests/data".into(),
        floor: false,
        label: "server".into(),
        json_out: None,
        quick: false,
        only: None,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => options.url = value()?,
            "--pid" => options.pid = Some(value()?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--data" => options.data = value()?,
            "--floor" => options.floor = true,
            "--quick" => options.quick = true,
            "--label" => options.label = value()?,
            "--json" => options.json_out = Some(value()?),
            "--only" => options.only = Some(value()?),
            "--compare" => {
                let ours = value()?;
                let reference = args.next().ok_or("--compare needs two files")?;
                compare(&ours, &reference)?;
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
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
    name: &'static str,
    /// Per-operation latencies (a query, a suite, a fan-out).
    samples: Vec<Duration>,
    /// Operations (queries) completed and bytes received over `wall`.
    operations: u64,
    bytes: u64,
    wall: Duration,
    peak_rss: Option<u64>,
    floor: Option<Duration>,
}

impl Scenario {
    /// A scenario that ran from `started` until now, without a floor yet.
    fn ended(
        name: &'static str,
        samples: Vec<Duration>,
        operations: u64,
        bytes: u64,
        started: Instant,
        rss: &Rss,
    ) -> Scenario {
        Scenario {
            name,
            samples,
            operations,
            bytes,
            wall: started.elapsed(),
            peak_rss: rss.peak(),
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
        "| scenario | median | p99 | ops/s | MB/s | peak RSS | floor median | × floor |\n|---|---|---|---|---|---|---|---|"
    );
    for s in results {
        let median = s.percentile(0.5);
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} |",
            s.name,
            ms(median),
            ms(s.percentile(0.99)),
            s.operations as f64 / s.wall.as_secs_f64(),
            s.bytes as f64 / 1e6 / s.wall.as_secs_f64(),
            s.peak_rss
                .map(|b| format!("{:.0} MB", b as f64 / 1e6))
                .unwrap_or_default(),
            s.floor.map(ms).unwrap_or_default(),
            s.floor
                .map(|f| format!("{:.2}", median.as_secs_f64() / f.as_secs_f64()))
                .unwrap_or_default(),
        );
    }
}

fn compare(ours: &str, reference: &str) -> Result<(), String> {
    let load = |path: &str| -> Result<BTreeMap<String, Value>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let rows: Vec<Value> = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        Ok(rows
            .into_iter()
            .map(|row| (row["name"].as_str().unwrap_or_default().to_string(), row))
            .collect())
    };
    let (ours, reference) = (load(ours)?, load(reference)?);
    println!("\n| scenario | median: reference / duckwire | ops/s: duckwire / reference |\n|---|---|---|");
    for (name, row) in &ours {
        let Some(other) = reference.get(name) else {
            continue;
        };
        let ratio = |a: &Value, b: &Value| a.as_f64().zip(b.as_f64()).map(|(a, b)| a / b);
        println!(
            "| {name} | {} | {} |",
            ratio(&other["median_s"], &row["median_s"])
                .map(|r| format!("{r:.1}×"))
                .unwrap_or_default(),
            ratio(&row["ops_per_s"], &other["ops_per_s"])
                .map(|r| format!("{r:.1}×"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

// --- the client side ---------------------------------------------------------------------

fn connect(url: &str) -> Socket {
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

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "queryId", default)]
    query_id: Value,
}

/// Reads until the reply for `id`; returns its size in bytes. Panics on an error reply.
fn read_reply(socket: &mut Socket, id: &Value) -> usize {
    loop {
        match socket.read().expect("read a reply") {
            Message::Text(text) => {
                // Only the envelope is decoded; a large `data` string is skipped, not copied,
                // so the client does not dominate big-result timings.
                let reply: Envelope = serde_json::from_str(text.as_str()).expect("JSON reply");
                if reply.kind == "error" {
                    panic!("query failed: {}", text.as_str());
                }
                if &reply.query_id == id {
                    return text.len();
                }
            }
            Message::Binary(bytes) => {
                let n = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                let header: Value = serde_json::from_slice(&bytes[4..4 + n]).unwrap_or(Value::Null);
                if &header["queryId"] == id {
                    return bytes.len();
                }
            }
            _ => {}
        }
    }
}

fn send_query(socket: &mut Socket, kind: &str, sql: &str, id: &Value, persist: bool) {
    let mut message = json!({"type":kind,"sql":sql,"queryId":id});
    if persist {
        message["persist"] = json!(true);
    }
    socket
        .send(Message::Text(message.to_string().into()))
        .expect("send a query");
}

fn query(socket: &mut Socket, kind: &str, sql: &str, id: u64) -> usize {
    let id = json!(format!("q{id}"));
    send_query(socket, kind, sql, &id, false);
    read_reply(socket, &id)
}

struct Rss {
    pid: Option<u32>,
}

impl Rss {
    fn reset(&self) {
        if let Some(pid) = self.pid {
            // "5" resets the peak RSS (VmHWM) of the process (Linux ≥ 4.0).
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
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

/// Runs `count` sequential queries of `sql` and times each.
fn sequential(
    name: &'static str,
    url: &str,
    rss: &Rss,
    kind: &str,
    sql: &str,
    count: usize,
) -> Scenario {
    let mut socket = connect(url);
    for i in 0..count.min(50) as u64 {
        query(&mut socket, kind, sql, i); // warm-up
    }
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count);
    let mut bytes = 0;
    for i in 0..count as u64 {
        let t = Instant::now();
        bytes += query(&mut socket, kind, sql, 1000 + i) as u64;
        samples.push(t.elapsed());
    }
    Scenario::ended(name, samples, count as u64, bytes, started, rss)
}

/// `connections` sockets, each keeping `window` queries in flight until it sent `per_conn`.
fn throughput(
    url: &str,
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
                let mut socket = connect(&url);
                let mut sent_at: BTreeMap<String, Instant> = BTreeMap::new();
                let mut samples = Vec::with_capacity(per_conn);
                let (mut sent, mut bytes) = (0, 0u64);
                while samples.len() < per_conn {
                    while sent < per_conn && sent_at.len() < window {
                        let id = format!("t{sent}");
                        send_query(&mut socket, "arrow", "select 1 as x", &json!(id), false);
                        sent_at.insert(id, Instant::now());
                        sent += 1;
                    }
                    if let Message::Binary(frame) = socket.read().expect("read") {
                        let n = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
                        let header: Value = serde_json::from_slice(&frame[4..4 + n]).unwrap();
                        let id = header["queryId"].as_str().unwrap_or_default();
                        if let Some(at) = sent_at.remove(id) {
                            samples.push(at.elapsed());
                            bytes += frame.len() as u64;
                        }
                    }
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
    Scenario::ended(
        "throughput: select 1, 16 conns × 16 in flight",
        samples,
        operations,
        bytes,
        started,
        rss,
    )
}

fn repeated(
    name: &'static str,
    url: &str,
    rss: &Rss,
    queries: &[(&str, &str)],
    reps: usize,
) -> Scenario {
    let mut socket = connect(url);
    for (i, (kind, sql)) in queries.iter().enumerate() {
        query(&mut socket, kind, sql, i as u64); // warm-up
    }
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut bytes = 0;
    let mut id = 100;
    for _ in 0..reps {
        let t = Instant::now();
        for (kind, sql) in queries {
            id += 1;
            bytes += query(&mut socket, kind, sql, id) as u64;
        }
        samples.push(t.elapsed());
    }
    Scenario::ended(
        name,
        samples,
        (reps * queries.len()) as u64,
        bytes,
        started,
        rss,
    )
}

fn cache_hits(url: &str, rss: &Rss, reps: usize) -> Scenario {
    let sql = "select floor(delay / 10) * 10 as bin, count(*) as n, avg(distance) as d from flights group by 1 order by 1";
    let mut socket = connect(url);
    let miss = json!("miss");
    send_query(&mut socket, "arrow", sql, &miss, true);
    read_reply(&mut socket, &miss);
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut bytes = 0;
    for i in 0..reps {
        let id = json!(format!("hit{i}"));
        let t = Instant::now();
        send_query(&mut socket, "arrow", sql, &id, true);
        bytes += read_reply(&mut socket, &id) as u64;
        samples.push(t.elapsed());
    }
    Scenario::ended(
        "cache hit (persist: true, group-by)",
        samples,
        reps as u64,
        bytes,
        started,
        rss,
    )
}

fn crdt_fanout(url: &str, rss: &Rss, reps: usize) -> Scenario {
    let room = format!("fanout-{}", std::process::id());
    let mut members: Vec<Socket> = (0..8).map(|_| connect(url)).collect();
    for socket in &mut members {
        let join = json!({"type":"crdt-join","roomId":room,"clientId":"bench"});
        socket.send(Message::Text(join.to_string().into())).unwrap();
        // crdt-joined, then crdt-snapshot.
        let mut seen = 0;
        while seen < 2 {
            if let Message::Text(_) = socket.read().unwrap() {
                seen += 1;
            }
        }
    }
    let doc = loro::LoroDoc::new();
    let mut version = doc.oplog_vv();
    rss.reset();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut bytes = 0;
    for i in 0..reps {
        doc.get_map("m")
            .insert(&format!("k{}", i % 50), i as i64)
            .unwrap();
        doc.commit();
        let update = doc.export(loro::ExportMode::updates(&version)).unwrap();
        version = doc.oplog_vv();
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
    Scenario::ended(
        "CRDT fan-out: 1 update to 7 members",
        samples,
        reps as u64,
        bytes,
        started,
        rss,
    )
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
    let url = options.url.as_str();
    let rss = Rss { pid: options.pid };
    let scale = |n: usize| if options.quick { (n / 10).max(3) } else { n };
    let mut setup = connect(url);
    for (i, sql) in setup_sql(&options.data).iter().enumerate() {
        query(&mut setup, "exec", sql, i as u64);
    }
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
    let mut add = |name: &str, run: &mut dyn FnMut() -> Scenario| {
        if wanted(name) {
            results.push(run());
        }
    };
    for kind in ["json", "arrow"] {
        let select_one: &[(&str, &str)] = &[(kind, "select 1 as x")];
        let name = if kind == "json" {
            "select 1, json, sequential"
        } else {
            "select 1, arrow, sequential"
        };
        add(name, &mut || {
            let mut s = sequential(name, url, &rss, kind, "select 1 as x", scale(2000));
            s.floor = floor_of(select_one, 2000);
            s
        });
    }
    add("throughput", &mut || {
        throughput(url, &rss, 16, 16, scale(400))
    });
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
    for (name, queries, reps, floor_reps) in suites {
        add(name, &mut || {
            let mut s = repeated(name, url, &rss, queries, scale(reps));
            s.floor = floor_of(queries, floor_reps);
            s
        });
    }
    add("cache hit", &mut || cache_hits(url, &rss, scale(500)));
    add("CRDT", &mut || crdt_fanout(url, &rss, scale(300)));
    results
}
