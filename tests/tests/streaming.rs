//! Results sent as DuckDB produces them (PROTOCOL §3b): past `--stream-results-above`, an
//! Arrow result leaves as one fragmented WebSocket message or a chunked HTTP body, whole and
//! correct on every door, with or without compression; the server holds a window of it, not
//! all of it; and a failure after the first bytes left closes the connection with its reason
//! instead of ending the result as if it were whole.

use std::io::{Read, Write};
use std::net::TcpStream;

use duckwire_tests::deflate_client::{DeflateClient, Received, BROWSER_OFFER};
use duckwire_tests::*;
use serde_json::json;

/// 1M rows of two BIGINT columns: 16 MB of Arrow, far past the tests' 64 KiB threshold.
const MILLION_ROWS: &str = "select range as i, range * 2 as j from range(1000000)";

const SMALL_THRESHOLD: &[&str] = &["--stream-results-above", "65536"];

/// Rows, and the sums of both columns (the values, not only their count, came through).
fn checked_rows(ipc: &[u8]) -> (usize, i64, i64) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    let batches = read_ipc(ipc);
    let mut sums = (0i64, 0i64);
    for batch in &batches {
        sums.0 += batch
            .column(0)
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .sum::<i64>();
        sums.1 += batch
            .column(1)
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .sum::<i64>();
    }
    (batches.iter().map(|b| b.num_rows()).sum(), sums.0, sums.1)
}

const MILLION_ROWS_CHECK: (usize, i64, i64) = (1_000_000, 499_999_500_000, 999_999_000_000);

fn post_arrow(server: &ServerProcess, sql: &str, extra_headers: &str) -> HttpAnswer {
    let body = json!({"type":"arrow","sql":sql}).to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    http(&server.addr, &request)
}

#[test]
fn results_past_the_threshold_arrive_whole_over_every_door() {
    let server = ServerProcess::start(SMALL_THRESHOLD);
    // SQLRooms: one binary message, the frame header first.
    let mut sqlrooms = server.connect();
    sqlrooms.send_json(json!({"type":"arrow","sql":MILLION_ROWS,"queryId":"s"}));
    let frame = sqlrooms.recv_binary();
    let (frame_header, ipc) = split_arrow_frame(&frame);
    assert_eq!(frame_header["queryId"], "s");
    assert_eq!(checked_rows(ipc), MILLION_ROWS_CHECK);
    // The connection goes on: a small result comes whole after it.
    let reply = sqlrooms.request(json!({"type":"json","sql":"select 42 as n","queryId":"t"}));
    assert_eq!(reply["data"], "[{\"n\":42}]");

    // Mosaic's socket: the bare IPC stream.
    let mut mosaic = Client::connect(&server.url("/mosaic"), &[]);
    mosaic.send_json(json!({"type":"arrow","sql":MILLION_ROWS}));
    assert_eq!(checked_rows(&mosaic.recv_binary()), MILLION_ROWS_CHECK);

    // REST: a chunked body; a small answer keeps its Content-Length.
    let (status, headers, body) = post_arrow(&server, MILLION_ROWS, "");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    assert_eq!(checked_rows(&body), MILLION_ROWS_CHECK);
    let (status, headers, body) = post_arrow(&server, "select 1 as one", "");
    assert_eq!(status, 200);
    assert!(header(&headers, "content-length").is_some());
    assert_eq!(read_ipc(&body)[0].num_rows(), 1);

    assert_eq!(server.metric("duckwire_results_streamed_total"), 3.0);
    let streamed = server.metric("duckwire_streamed_bytes_total");
    assert!(streamed > 3.0 * 16_000_000.0, "{streamed}");
}

/// 300 000 rows as JSON: about 8 MB of text, far past the tests' 64 KiB threshold.
const JSON_ROWS: &str = "select range as i, 'row ' || range as s from range(300000)";

/// Rows of `[{"i":…,"s":"row …"}, …]`, and the sum of `i` (checked against each `s`).
fn checked_json_rows(text: &str) -> (usize, i64) {
    let rows: Vec<serde_json::Value> = serde_json::from_str(text).expect("a JSON array");
    let mut sum = 0;
    for row in &rows {
        let i = row["i"].as_i64().expect("i");
        assert_eq!(row["s"], format!("row {i}"));
        sum += i;
    }
    (rows.len(), sum)
}

const JSON_ROWS_CHECK: (usize, i64) = (300_000, 44_999_850_000);

/// JSON is streamed as Arrow is (PROTOCOL §3b): one fragmented text message on the sockets
/// (SQLRooms' `json` reply with the rows escaped in its `data` string, Mosaic's bare rows),
/// a chunked `application/json` body over HTTP, compressed where compression applies.
#[test]
fn json_results_past_the_threshold_arrive_whole_over_every_door() {
    let mut flags = SMALL_THRESHOLD.to_vec();
    flags.extend(["--ws-compression", "on", "--http-compression", "on"]);
    let server = ServerProcess::start(&flags);
    let mut sqlrooms = server.connect();
    let reply = sqlrooms.request(json!({"type":"json","sql":JSON_ROWS,"queryId":"s"}));
    assert_eq!(
        (reply["type"].as_str(), reply["queryId"].as_str()),
        (Some("json"), Some("s"))
    );
    assert_eq!(
        checked_json_rows(reply["data"].as_str().unwrap()),
        JSON_ROWS_CHECK
    );
    // The connection goes on.
    let reply = sqlrooms.request(json!({"type":"json","sql":"select 42 as n","queryId":"t"}));
    assert_eq!(reply["data"], "[{\"n\":42}]");

    let mut mosaic = Client::connect(&server.url("/mosaic"), &[]);
    mosaic.send_json(json!({"type":"json","sql":JSON_ROWS}));
    let duckwire_tests::Received::Json(rows) = mosaic.recv() else {
        panic!("a text message")
    };
    assert_eq!(checked_json_rows(&rows.to_string()), JSON_ROWS_CHECK);

    let mut deflating = DeflateClient::connect(&server.url("/"), Some(BROWSER_OFFER)).unwrap();
    assert!(deflating.deflate());
    let query = json!({"type":"json","sql":JSON_ROWS,"queryId":"z"});
    deflating.send_text(&query.to_string()).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&deflating.recv().unwrap().text()).unwrap();
    assert_eq!(
        checked_json_rows(reply["data"].as_str().unwrap()),
        JSON_ROWS_CHECK
    );

    for encoding in [None, Some("gzip")] {
        let accept = encoding.map_or(String::new(), |e| format!("Accept-Encoding: {e}\r\n"));
        let body = json!({"type":"json","sql":JSON_ROWS}).to_string();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n{accept}\r\n{body}",
            body.len()
        );
        let (status, headers, body) = http(&server.addr, &request);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        let text = String::from_utf8(decode_body(encoding, &body)).unwrap();
        assert_eq!(checked_json_rows(&text), JSON_ROWS_CHECK, "{encoding:?}");
    }
    assert_eq!(server.metric("duckwire_results_streamed_total"), 5.0);
}

/// A result DuckDB starts producing after a second or more (an uncorrelated subquery that
/// counts 3·10^8 rows runs first), long enough for identical requests sent right after the
/// first to find it running; then 1M rows, streamed.
const SLOW_THEN_MILLION_ROWS: &str = "select range as i, range * 2 as j from range(1000000) \
     where (select count(*) from range(300000000) t(k) where k % 7 = 3) > 0";

/// The same as JSON text, fewer rows (about 5 MB).
const SLOW_THEN_JSON_ROWS: &str = "select range as i, range * 2 as j from range(200000) \
     where (select count(*) from range(300000000) t(k) where k % 7 = 3) > 0";

/// Identical persisted reads waiting for a result that streams read its stream (PROTOCOL
/// §3b): DuckDB runs once, every reader gets every row under its own query id, Arrow and
/// JSON alike, with or without compression.
#[test]
fn identical_persisted_reads_share_one_streamed_result() {
    let mut flags = SMALL_THRESHOLD.to_vec();
    flags.extend(["--ws-compression", "on"]);
    let server = ServerProcess::start(&flags);
    let persisted = |kind: &str, id: &str| {
        let sql = match kind {
            "json" => SLOW_THEN_JSON_ROWS,
            _ => SLOW_THEN_MILLION_ROWS,
        };
        json!({"type":kind,"sql":sql,"queryId":id,"persist":true})
    };
    let mut readers: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    for (reader, id) in readers.iter_mut().zip(["a", "b", "c"]) {
        reader.send_json(persisted("arrow", id));
    }
    // Each reader reads as a browser tab does, at once and on its own: the stream goes at
    // the pace of the slowest, so one client reading its connections one after the other
    // would wait for itself.
    std::thread::scope(|scope| {
        for (reader, id) in readers.iter_mut().zip(["a", "b", "c"]) {
            scope.spawn(move || {
                let frame = reader.recv_binary();
                let (frame_header, ipc) = split_arrow_frame(&frame);
                assert_eq!(frame_header["queryId"], id);
                assert_eq!(checked_rows(ipc), MILLION_ROWS_CHECK, "{id}");
            });
        }
    });
    assert_eq!(server.metric("duckwire_queries_shared_total"), 2.0);
    assert_eq!(
        server.metric("duckwire_cache_misses_total"),
        1.0,
        "run once"
    );

    // One socket asking twice: its second reply would wait behind the first, so it runs on
    // its own instead of reading the same stream (which would wait for itself).
    readers[0].send_json(persisted("arrow", "twice-1"));
    readers[0].send_json(persisted("arrow", "twice-2"));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let frame = readers[0].recv_binary();
        let (frame_header, ipc) = split_arrow_frame(&frame);
        assert_eq!(checked_rows(ipc), MILLION_ROWS_CHECK);
        ids.push(frame_header["queryId"].as_str().unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["twice-1", "twice-2"]);
    assert_eq!(
        server.metric("duckwire_queries_shared_total"),
        2.0,
        "not shared"
    );

    // JSON: the rows escaped into each reply's `data`, one reader compressing.
    let mut deflating = DeflateClient::connect(&server.url("/"), Some(BROWSER_OFFER)).unwrap();
    assert!(deflating.deflate());
    readers[0].send_json(persisted("json", "j1"));
    let query = persisted("json", "j2").to_string();
    deflating.send_text(&query).unwrap();
    let (plain, compressed) = std::thread::scope(|scope| {
        let plain = scope.spawn(|| readers[0].recv_json());
        let compressed: serde_json::Value =
            serde_json::from_str(&deflating.recv().unwrap().text()).unwrap();
        (plain.join().unwrap(), compressed)
    });
    for (reply, id) in [(plain, "j1"), (compressed, "j2")] {
        assert_eq!(reply["queryId"], id);
        let rows = checked_json_rows_of(reply["data"].as_str().unwrap());
        assert_eq!(rows, (200_000, 19_999_900_000), "{id}");
    }
    assert_eq!(server.metric("duckwire_queries_shared_total"), 3.0);
    assert_eq!(server.metric("duckwire_cache_misses_total"), 4.0);
}

/// Rows of `[{"i":…,"j":…}, …]` with `j = 2i`, and the sum of `i`.
fn checked_json_rows_of(text: &str) -> (usize, i64) {
    let rows: Vec<serde_json::Value> = serde_json::from_str(text).expect("a JSON array");
    let mut sum = 0;
    for row in &rows {
        let i = row["i"].as_i64().expect("i");
        assert_eq!(row["j"].as_i64(), Some(2 * i));
        sum += i;
    }
    (rows.len(), sum)
}

#[test]
fn streamed_results_are_compressed_on_the_socket_and_over_http() {
    let mut flags = SMALL_THRESHOLD.to_vec();
    flags.extend(["--ws-compression", "on", "--http-compression", "on"]);
    let server = ServerProcess::start(&flags);
    let mut client = DeflateClient::connect(&server.url("/"), Some(BROWSER_OFFER)).unwrap();
    assert!(client.deflate());
    let query = json!({"type":"arrow","sql":MILLION_ROWS,"queryId":"z"});
    client.send_text(&query.to_string()).unwrap();
    let frame = client.recv().unwrap().binary();
    let (frame_header, ipc) = split_arrow_frame(&frame);
    assert_eq!(frame_header["queryId"], "z");
    assert_eq!(checked_rows(ipc), MILLION_ROWS_CHECK);
    let before = server.metric("duckwire_ws_deflated_bytes_total");
    let after = server.metric("duckwire_ws_deflated_wire_bytes_total");
    assert!(
        before > 16_000_000.0 && after * 3.0 < before,
        "{after} of {before}"
    );

    for encoding in ["gzip", "zstd", "br"] {
        let accept = format!("Accept-Encoding: {encoding}\r\n");
        let (status, headers, body) = post_arrow(&server, MILLION_ROWS, &accept);
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-encoding"), Some(encoding));
        assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
        assert!(body.len() * 3 < 16_000_000, "{encoding}: {}", body.len());
        let ipc = decode_body(Some(encoding), &body);
        assert_eq!(checked_rows(&ipc), MILLION_ROWS_CHECK, "{encoding}");
    }
}

/// Only the window counts against `--max-outbound-bytes-per-conn`: a result four times the
/// cap goes through; held whole (`--stream-results-above none`), the cap closes the socket.
#[test]
fn a_result_larger_than_the_outbound_cap_streams_within_its_window() {
    let sql = "select range as i, range * 2 as j from range(2000000)";
    let cap = ["--max-outbound-bytes-per-conn", "8388608"];
    let server = ServerProcess::start(&cap);
    let mut client = server.connect();
    client.send_json(json!({"type":"arrow","sql":sql,"queryId":"big"}));
    let frame = client.recv_binary();
    let rows: usize = read_ipc(split_arrow_frame(&frame).1)
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 2_000_000);

    let held = ServerProcess::start(&[cap[0], cap[1], "--stream-results-above", "none"]);
    let mut client = held.connect();
    client.send_json(json!({"type":"arrow","sql":sql,"queryId":"big"}));
    assert_eq!(client.recv_close(), Some(1008));
}

/// DuckDB fails at row three million, long after the first bytes left.
const FAILS_LATE: &str = "select i, case when i = 3000000 then error('boom at three million') \
                          else i end as j from range(4000000) t(i)";

#[test]
fn a_failure_after_the_result_began_closes_the_socket_with_its_reason() {
    let server = ServerProcess::start(SMALL_THRESHOLD);
    let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
    let query = json!({"type":"arrow","sql":FAILS_LATE,"queryId":"late"});
    client.send_text(&query.to_string()).unwrap();
    match client.recv().unwrap() {
        Received::Closed(code) => assert_eq!(code, Some(1011)),
        other => panic!("a cut result must not arrive as a message: {other:?}"),
    }
    let reason = client.close_reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("query late failed after its result began: ") && reason.contains("boom"),
        "{reason}"
    );
    // Other connections and the server go on.
    let mut next = server.connect();
    let reply = next.request(json!({"type":"json","sql":"select 1 as n","queryId":"n"}));
    assert_eq!(reply["data"], "[{\"n\":1}]");
}

#[test]
fn a_failure_after_an_http_body_began_leaves_it_unended() {
    let server = ServerProcess::start(SMALL_THRESHOLD);
    let body = json!({"type":"arrow","sql":FAILS_LATE}).to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut wire = Vec::new();
    // The server drops the connection (kept alive otherwise) once the query failed.
    stream.read_to_end(&mut wire).unwrap();
    let split = head_end(&wire).expect("a head");
    let (status, headers) = parse_head(&wire[..split]);
    assert_eq!(status, 200, "the answer began before DuckDB failed");
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert!(wire.len() > split + 65536, "bytes left before the failure");
    assert!(
        !wire.ends_with(b"0\r\n\r\n"),
        "a failed result must not end as if it were whole"
    );
}

#[test]
fn a_cancel_after_the_result_began_closes_the_socket() {
    let server = ServerProcess::start(SMALL_THRESHOLD);
    let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
    // Larger than every buffer on the way: it cannot finish while the client reads nothing.
    let sql = "select range as i, range * 2 as j from range(40000000)";
    let query = json!({"type":"arrow","sql":sql,"queryId":"c"});
    client.send_text(&query.to_string()).unwrap();
    until("the result began", || {
        server.metric("duckwire_results_streamed_total") == 1.0
    });
    let cancel = json!({"type":"cancel","queryId":"c"});
    client.send_text(&cancel.to_string()).unwrap();
    match client.recv().unwrap() {
        Received::Closed(code) => assert_eq!(code, Some(1011)),
        other => panic!("a cancelled stream must not arrive whole: {other:?}"),
    }
    let reason = client.close_reason.clone().unwrap_or_default();
    assert_eq!(
        reason,
        "query c failed after its result began: Query was cancelled"
    );
}

/// Held whole, a 200 MB result takes 200 MB of the server's memory; streamed, a window.
#[test]
fn a_streamed_result_does_not_grow_the_server_with_its_size() {
    let sql = "select range as a, range as b, range as c, range as d from range(6250000)";
    let mut peaks = Vec::new();
    for threshold in ["4194304", "none"] {
        let server = ServerProcess::start(&["--stream-results-above", threshold]);
        // Warm: DuckDB's own buffers and the worker's first allocations.
        assert_eq!(post_arrow(&server, "select 1 as one", "").0, 200);
        let before = server.peak_rss_bytes();
        let (status, _, body) = post_arrow(&server, sql, "");
        assert_eq!(status, 200);
        assert!(body.len() > 200_000_000, "{}", body.len());
        peaks.push(server.peak_rss_bytes().saturating_sub(before));
    }
    let (streamed, held) = (peaks[0], peaks[1]);
    assert!(held > 200_000_000, "held whole: +{held} bytes");
    assert!(
        streamed < 64 * 1024 * 1024,
        "streamed: +{streamed} bytes (held: +{held})"
    );
}

/// A peer that goes away (no close frame) while its result streams: the query stops and the
/// connection is let go (its socket closed), whether the writer was sending a piece (the
/// socket fails) or waiting for the next one from a slow query (the stream is cut by the
/// interrupt).
#[test]
fn a_peer_that_vanishes_mid_stream_leaves_nothing_behind() {
    let server = ServerProcess::start(SMALL_THRESHOLD);
    // Before any connection: the metrics requests below each leave a socket for a moment.
    let fds = server.open_fds();
    let fast = "select range as i, range * 2 as j from range(40000000)";
    // About a millisecond per DuckDB chunk: the writer mostly waits for the next piece.
    let slow = "select range as i, hash(repeat(range::varchar, 2000)) as h from range(3000000)";
    for (n, sql) in [fast, slow].into_iter().enumerate() {
        let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
        let query = json!({"type":"arrow","sql":sql,"queryId":"v"});
        client.send_text(&query.to_string()).unwrap();
        until("the result began", || {
            server.metric("duckwire_results_streamed_total") == (n + 1) as f64
        });
        client.stream().shutdown(std::net::Shutdown::Both).unwrap();
        drop(client);
        // Only the HTTP connection asking for the metrics is open then.
        until("the connection is gone", || {
            server.metric("duckwire_connections_open") == 1.0
        });
        until("its socket is closed", || server.open_fds() <= fds);
    }
    // Nothing is stuck: the server answers.
    let mut next = server.connect();
    let reply = next.request(json!({"type":"json","sql":"select 1 as n","queryId":"n"}));
    assert_eq!(reply["data"], "[{\"n\":1}]");
}

/// A reader that stops reading holds its own query, not a DuckDB worker: the query timeout
/// ends the stream even while the worker waits for room in the window. One worker here, so
/// the next query on another connection runs only if that worker was let go.
#[test]
fn a_stalled_reader_lets_its_worker_go_at_the_query_timeout() {
    let mut flags = SMALL_THRESHOLD.to_vec();
    flags.extend(["--threads", "1", "--query-timeout-ms", "1000"]);
    let server = ServerProcess::start(&flags);
    let mut stalled = DeflateClient::connect(&server.url("/"), None).unwrap();
    let sql = "select range as i, range * 2 as j from range(100000000)";
    let query = json!({"type":"arrow","sql":sql,"queryId":"s"});
    stalled.send_text(&query.to_string()).unwrap();
    until("the result began", || {
        server.metric("duckwire_results_streamed_total") == 1.0
    });
    // The stalled client reads nothing; the other one gets its answer once the timeout
    // freed the only worker.
    let mut other = server.connect();
    let reply = other.request(json!({"type":"json","sql":"select 7 as n","queryId":"o"}));
    assert_eq!(reply["data"], "[{\"n\":7}]");
    drop(stalled);
}
