//! Fault and abuse tests over the real server: disconnects mid-query, SIGTERM and SIGKILL
//! during writes and CRDT edits, slow readers, connection floods, garbage input.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duckwire_tests::*;
use serde_json::{json, Value};

#[test]
fn a_client_that_disconnects_mid_query_has_it_interrupted_and_others_are_served() {
    let server = ServerProcess::start(&["--threads", "2"]);
    let mut leaver = server.connect();
    // Two slow queries occupy both workers.
    for id in ["slow-1", "slow-2"] {
        leaver.send_json(json!({"type":"json","sql":SLOW_SQL,"queryId":id}));
    }
    assert_eq!(
        leaver.request(json!({"type":"subscribe","channel":"c"}))["type"],
        "subscribed"
    );
    leaver.close();
    // These can only run once the abandoned queries were interrupted (the reply wait is
    // bounded by REPLY_TIMEOUT, far below the slow query's minutes).
    let mut other = server.connect();
    for id in 0..4 {
        let reply = other.request(json!({"type":"json","sql":"select 1 as x","queryId":id}));
        assert_eq!(reply["data"], "[{\"x\":1}]");
    }
    // Both abandoned queries end as cancelled (the second worker may report a moment after
    // the first one served the queries above): wait for it, bounded.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let (_, _, metrics) = get(&server.addr, "/metrics", "");
        let metrics = String::from_utf8(metrics).unwrap();
        if metrics.contains("duckwire_queries_total{type=\"json\",outcome=\"cancelled\"} 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "abandoned queries not cancelled: {metrics}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Keeps inserting one row per `exec` until the server stops answering; returns the rows
/// the server acknowledged. Signals `progress` after each acknowledgement.
fn insert_until_stopped(url: String, progress: mpsc::Sender<()>) -> Vec<i64> {
    let mut client = Client::connect(&url, &[]);
    let mut acked = Vec::new();
    for i in 0.. {
        client.send_json(
            json!({"type":"exec","sql":format!("insert into log values ({i})"),"queryId":i}),
        );
        match client.recv() {
            Received::Json(reply) if reply["type"] == "ok" => {
                acked.push(i);
                let _ = progress.send(());
            }
            _ => break,
        }
    }
    acked
}

/// Keeps sending CRDT updates (key `k<i>`) to `room` until the server stops answering;
/// returns each acknowledged key with the time of its acknowledgement.
fn edit_until_stopped(
    url: String,
    room: &str,
    progress: mpsc::Sender<()>,
) -> Vec<(String, Instant)> {
    let mut client = Client::connect(&url, &[]);
    join_room(&mut client, room);
    let mut acked = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        client.send_binary(loro_update(&key, i));
        match client.recv() {
            Received::Json(reply) if reply["type"] == "crdt-update-ack" => {
                acked.push((key, Instant::now()));
                let _ = progress.send(());
            }
            _ => break,
        }
        // Pace the editor like a person typing fast, so the run spans the save window.
        thread::sleep(Duration::from_millis(5));
    }
    acked
}

fn rows_in_log(server: &ServerProcess) -> Vec<i64> {
    let mut client = server.connect();
    let reply = client
        .request(json!({"type":"json","sql":"select i from log order by i","queryId":"rows"}));
    let rows: Vec<Value> = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    rows.iter().map(|row| row["i"].as_i64().unwrap()).collect()
}

fn start_writers(server: &ServerProcess, room: &str) -> WriterRun {
    server
        .connect()
        .request(json!({"type":"exec","sql":"create table log(i bigint)","queryId":"ddl"}));
    let (sql_tx, sql_progress) = mpsc::channel();
    let (crdt_tx, crdt_progress) = mpsc::channel();
    let url = server.url("/");
    let sql = thread::spawn(move || insert_until_stopped(url, sql_tx));
    let (url, room) = (server.url("/"), room.to_string());
    let crdt = thread::spawn(move || edit_until_stopped(url, &room, crdt_tx));
    WriterRun {
        sql,
        crdt,
        sql_progress,
        crdt_progress,
    }
}

struct WriterRun {
    sql: thread::JoinHandle<Vec<i64>>,
    crdt: thread::JoinHandle<Vec<(String, Instant)>>,
    sql_progress: mpsc::Receiver<()>,
    crdt_progress: mpsc::Receiver<()>,
}

impl WriterRun {
    /// Waits until both writers had `n` acknowledgements.
    fn wait_for(&self, n: usize) {
        for _ in 0..n {
            self.sql_progress
                .recv_timeout(REPLY_TIMEOUT)
                .expect("SQL writes progress");
            self.crdt_progress
                .recv_timeout(REPLY_TIMEOUT)
                .expect("CRDT edits progress");
        }
    }
}

#[test]
fn sigterm_during_sql_writes_and_crdt_edits_loses_nothing_acknowledged() {
    let dir = temp_dir("fault-sigterm");
    let db = dir.join("app.duckdb");
    let args = ["--sync", "--db-path", db.to_str().unwrap()];
    let server = ServerProcess::start(&args);
    let run = start_writers(&server, "live");
    run.wait_for(30);
    assert!(server.terminate().success(), "SIGTERM exits 0 under load");
    let acked_rows = run.sql.join().unwrap();
    let acked_keys = run.crdt.join().unwrap();

    let server = ServerProcess::start(&args);
    let rows = rows_in_log(&server);
    for i in &acked_rows {
        assert!(rows.contains(i), "acknowledged row {i} lost");
    }
    let room = join_room(&mut server.connect(), "live");
    for (key, _) in &acked_keys {
        assert!(room.get(key).is_some(), "acknowledged CRDT edit {key} lost");
    }
}

/// Acknowledged means durable (PROTOCOL §6): SIGKILL in the middle of continuous SQL writes
/// and CRDT edits loses neither committed rows nor acknowledged edits, though the debounced
/// snapshot save never ran (edits never pause for 500 ms, and the kill comes before the 5 s
/// max-latency save).
#[test]
fn sigkill_loses_no_acknowledged_sql_write_or_crdt_edit() {
    let dir = temp_dir("fault-sigkill");
    let db = dir.join("app.duckdb");
    let args = ["--sync", "--db-path", db.to_str().unwrap()];
    let server = ServerProcess::start(&args);
    let run = start_writers(&server, "live");
    run.wait_for(1);
    let editing_since = Instant::now();
    while editing_since.elapsed() < Duration::from_secs(2) {
        run.crdt_progress
            .recv_timeout(REPLY_TIMEOUT)
            .expect("CRDT edits progress");
    }
    server.kill();
    let acked_rows = run.sql.join().unwrap();
    let acked_keys = run.crdt.join().unwrap();
    assert!(
        acked_keys.len() >= 20,
        "the run made edits: {}",
        acked_keys.len()
    );

    let server = ServerProcess::start(&args);
    let rows = rows_in_log(&server);
    for i in &acked_rows {
        assert!(rows.contains(i), "committed row {i} lost to SIGKILL");
    }
    let room = join_room(&mut server.connect(), "live");
    for (key, _) in &acked_keys {
        assert!(
            room.get(key).is_some(),
            "edit {key} was acknowledged, then lost to SIGKILL"
        );
    }
}

#[test]
fn a_reader_that_never_reads_is_closed_at_its_cap_without_growing_server_memory() {
    let cap = 4_000_000;
    let server = ServerProcess::start(&["--max-outbound-bytes-per-conn", &cap.to_string()]);
    let mut other = server.connect();
    other.request(json!({"type":"exec","sql":"select 1","queryId":"warm"}));
    let baseline = server.rss_bytes();

    // 300 results of 1 MB each: 300 MB if the server buffered them for this reader.
    let mut stalled = server.connect();
    for i in 0..300 {
        stalled
            .send_json(json!({"type":"json","sql":"select repeat('x', 1000000) as s","queryId":i}));
    }
    // Others are served meanwhile; the stalled connection is closed at its cap (its
    // queries are cancelled) without its results piling up in the server.
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut peak = baseline;
    loop {
        let reply = other.request(json!({"type":"json","sql":"select 1 as x","queryId":"live"}));
        assert_eq!(reply["data"], "[{\"x\":1}]");
        peak = peak.max(server.rss_bytes());
        let (_, _, metrics) = get(&server.addr, "/metrics", "");
        let metrics = String::from_utf8(metrics).unwrap();
        if !metrics.contains("duckwire_queries_total{type=\"json\",outcome=\"cancelled\"} 0\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled reader was never closed"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // When the reader finally reads, it finds the §7 close after what was sent.
    assert_eq!(stalled.recv_close(), Some(1008));
    peak = peak.max(server.rss_bytes());
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 150_000_000,
        "server memory grew by {growth} bytes for a reader capped at {cap}"
    );
    let reply = other.request(json!({"type":"json","sql":"select 1 as x","queryId":"after"}));
    assert_eq!(reply["data"], "[{\"x\":1}]");
}

#[test]
fn a_connection_flood_is_refused_past_max_connections_while_healthz_answers() {
    let server = ServerProcess::start(&["--max-connections", "64"]);
    let mut admitted = Vec::new();
    for i in 0..64 {
        let mut client = server.connect();
        assert_eq!(
            client.request(json!({"type":"exec","sql":"select 1","queryId":i}))["type"],
            "ok"
        );
        admitted.push(client);
    }
    for _ in 0..32 {
        let mut refused = server.connect();
        assert_eq!(refused.recv_close(), Some(1013));
        let (status, _, body) = get(&server.addr, "/healthz", "");
        assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    }
    // Everyone admitted is still served.
    for (i, client) in admitted.iter_mut().enumerate() {
        let reply = client.request(json!({"type":"json","sql":"select 2 as y","queryId":i}));
        assert_eq!(reply["data"], "[{\"y\":2}]");
    }
}

#[test]
fn garbage_binary_frames_get_errors_and_the_connection_survives() {
    let server = ServerProcess::start(&["--sync"]);
    let mut client = server.connect();
    let huge_header_length = [0xff, 0xff, 0xff, 0xff, b'{', b'}'].to_vec();
    let bad_header = [&7u32.to_be_bytes()[..], b"{\"type\"", b"rest"].concat();
    let framed_garbage_ipc = upload_frame("g", "t", b"definitely not arrow");
    let framed_unknown_type = [&12u32.to_be_bytes()[..], b"{\"type\":\"x\"}", b"p"].concat();
    for frame in [
        Vec::new(),
        vec![0],
        huge_header_length,
        bad_header,
        framed_unknown_type,
        (0..=255).collect(),
    ] {
        client.send_binary(frame.clone());
        let reply = client.recv_json();
        assert_eq!(reply["type"], "error", "for {frame:?}");
        assert!(!reply["error"].as_str().unwrap().is_empty());
    }
    client.send_binary(framed_garbage_ipc);
    let reply = client.recv_json();
    assert_eq!(
        (reply["type"].as_str(), reply["queryId"].as_str()),
        (Some("error"), Some("g"))
    );
    assert_eq!(
        client.request(json!({"type":"json","sql":"select 1 as x","queryId":"after"}))["data"],
        "[{\"x\":1}]"
    );
}

#[test]
fn malformed_http_gets_400_and_the_server_keeps_serving() {
    let server = ServerProcess::start(&[]);
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70_000));
    let requests: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        long_target.into_bytes(),
    ];
    for request in requests {
        let (status, _, _) = http_bytes(&server.addr, &request);
        assert!(
            status == 400 || status == 431,
            "{status} for {:?}",
            String::from_utf8_lossy(&request[..request.len().min(40)])
        );
    }
    // A client that sends half a request and hangs up does not hurt anyone either.
    {
        use std::io::Write;
        let mut half = std::net::TcpStream::connect(&server.addr).unwrap();
        half.write_all(b"GET /heal").unwrap();
    }
    let (status, _, body) = get(&server.addr, "/healthz", "");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
}

/// The inbound budget (PROTOCOL §7): with both workers busy, one connection floods 4 MB
/// queries. The server stops reading it at its budget (TCP backpressure) instead of
/// buffering gigabytes or closing it; other connections are served meanwhile, and the
/// flooder's queries run once the workers are free.
#[test]
fn a_flood_of_large_queries_is_held_back_by_the_inbound_budget() {
    let budget: u64 = 16_000_000;
    let server = ServerProcess::start(&[
        "--threads",
        "2",
        "--max-inbound-bytes-per-conn",
        &budget.to_string(),
    ]);
    let mut other = server.connect();
    other.request(json!({"type":"exec","sql":"select 1","queryId":"warm"}));
    let baseline = server.rss_bytes();

    // Both workers busy, so the flood's queries queue up.
    let mut busy = server.connect();
    for id in ["slow-1", "slow-2"] {
        busy.send_json(json!({"type":"json","sql":SLOW_SQL,"queryId":id}));
    }
    let mut flooder = server.connect();
    let padding = "x".repeat(4_000_000);
    let mut sent = 0;
    for i in 0..800 {
        let query =
            json!({"type":"json","sql":format!("select {i} as n -- {padding}"),"queryId":i});
        if !flooder.send_text_within(&query.to_string(), Duration::from_secs(3)) {
            break;
        }
        sent += 1;
    }
    // 800 × 4 MB = 3.2 GB were offered; the server took its budget plus what the socket
    // buffers hold, then stopped reading.
    assert!(
        sent < 800,
        "the server read all {sent} floods: no backpressure"
    );
    let growth = server.rss_bytes().saturating_sub(baseline);
    // Budget, one frame read past it, the frame being decoded, and allocator slack.
    let bound = budget + 2 * 4_000_000 + 100_000_000;
    assert!(growth < bound, "RSS grew by {growth} bytes (bound {bound})");
    let (_, _, body) = get(&server.addr, "/metrics", "");
    let metrics = String::from_utf8(body).unwrap();
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("duckwire_inbound_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("duckwire_inbound_bytes");
    assert!(held >= budget && held < budget + 8_000_000, "held {held}");

    // Other connections are read and answered while the flooder is held back.
    assert_eq!(
        other.request(json!({"type":"subscribe","channel":"c"}))["type"],
        "subscribed"
    );
    // The workers free up: the flood's queued queries run (releasing the budget) and
    // everyone is served again.
    drop(busy);
    let reply = other.request(json!({"type":"json","sql":"select 2 as y","queryId":"after"}));
    assert_eq!(reply["data"], "[{\"y\":2}]");
    drop(flooder);
}

/// Dead peers are reclaimed (PROTOCOL §7): every WebSocket peer is pinged; one that answers
/// stays, one that never answers (a raw socket that completed the handshake and went
/// silent) is closed with 1001 after `--idle-timeout-ms`.
#[test]
fn silent_websocket_peers_are_pinged_then_closed_with_1001() {
    use std::io::{Read, Write};
    let server = ServerProcess::start(&["--ping-interval-ms", "100", "--idle-timeout-ms", "600"]);
    // A live client keeps talking (and, reading, answers pings) the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = {
        let (mut client, stop) = (server.connect(), stop.clone());
        thread::spawn(move || {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let reply =
                    client.request(json!({"type":"json","sql":"select 1 as x","queryId":answered}));
                assert_eq!(reply["data"], "[{\"x\":1}]");
                answered += 1;
            }
            answered
        })
    };
    let mut silent = std::net::TcpStream::connect(&server.addr).unwrap();
    silent.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    silent
        .write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    // Everything the server sends until it closes the socket.
    let mut received = Vec::new();
    let _ = silent.read_to_end(&mut received);
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(received.starts_with(b"HTTP/1.1 101"));
    let frames = &received[head_end..];
    // Server frames are unmasked: [0x89, 0] is an empty ping, 0x88 a close with its code.
    assert!(
        frames.windows(2).any(|w| w == [0x89, 0]),
        "pinged: {frames:?}"
    );
    let close = frames
        .iter()
        .position(|b| *b == 0x88)
        .expect("a close frame");
    let code = u16::from_be_bytes([frames[close + 2], frames[close + 3]]);
    assert_eq!(code, 1001);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(live.join().expect("the live client was served throughout") > 0);
}

#[test]
fn a_request_head_that_never_completes_is_answered_408() {
    use std::io::{Read, Write};
    let server = ServerProcess::start(&["--http-head-timeout-ms", "300"]);
    let mut slow = std::net::TcpStream::connect(&server.addr).unwrap();
    slow.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    slow.write_all(b"GET /healthz HT").unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
