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
