//! The HTTP door goes through the core: one cache invalidation, metrics, auth for every
//! door; HTTP/1.1 keep-alive, pipelining in order, `Connection: close`, the idle timeout.

use duckwire_tests::*;
use serde_json::{json, Value};

fn rows(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

/// The issue's stale read: a persisted (cached) read after a write made over REST must see
/// the write.
#[test]
fn a_rest_write_invalidates_results_cached_over_websocket() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client.request(json!({"type":"exec","sql":"create table t(a int)","queryId":"c"}));
    let count =
        json!({"type":"json","sql":"select count(*) as n from t","persist":true,"queryId":"q1"});
    let before = client.request(count.clone());
    assert_eq!(before["data"], json!("[{\"n\":0}]"));
    let (status, _, body) = post_json(
        &server.addr,
        &json!({"type":"exec","sql":"insert into t values (1), (2)"}),
        "",
    );
    assert_eq!((status, rows(&body)), (200, json!({})));
    let after = client.request(
        json!({"type":"json","sql":"select count(*) as n from t","persist":true,"queryId":"q2"}),
    );
    assert_eq!(after["data"], json!("[{\"n\":2}]"), "stale cached result");
    // And the other way round: a REST persisted read sees a WebSocket write.
    let persisted = json!({"type":"json","sql":"select count(*) as n from t","persist":true});
    let (_, _, body) = post_json(&server.addr, &persisted, "");
    assert_eq!(rows(&body), json!([{"n": 2}]));
    client.request(json!({"type":"exec","sql":"insert into t values (3)","queryId":"w"}));
    let (_, _, body) = post_json(&server.addr, &persisted, "");
    assert_eq!(rows(&body), json!([{"n": 3}]));
}

#[test]
fn two_requests_are_answered_on_one_kept_alive_connection() {
    let server = ServerProcess::start(&[]);
    let mut http = HttpConnection::open(&server.addr);
    for n in 1..=2 {
        let request = json!({"type":"json","sql":format!("select {n} as n")});
        http.write(HttpConnection::post_request(&request, "").as_bytes());
        let (status, headers, body) = http.read_answer().expect("an answer");
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "connection"), Some("keep-alive"));
        assert_eq!(rows(&body), json!([{ "n": n }]));
    }
    http.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (status, _, body) = http.read_answer().expect("an answer");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
}

#[test]
fn pipelined_requests_are_answered_in_request_order() {
    let server = ServerProcess::start(&[]);
    let mut http = HttpConnection::open(&server.addr);
    // Seven requests in one write: each is framed out of the bytes left after the one
    // before (bodies by their Content-Length) and answered, in order. (The transport reads a
    // request only after answering the one before, so this checks framing, not concurrent
    // answers: those are the core's ordered slots, `http_tests` in duckwire-core.)
    let slow = json!({"type":"json","sql":"select count(*) as n from range(30000000)"});
    let mut pipelined = HttpConnection::post_request(&slow, "");
    for n in 0..5 {
        pipelined.push_str(&HttpConnection::post_request(
            &json!({"type":"json","sql":format!("select {n} as n")}),
            "",
        ));
    }
    pipelined.push_str("GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    http.write(pipelined.as_bytes());
    let (_, _, body) = http.read_answer().expect("first answer");
    assert_eq!(rows(&body), json!([{"n": 30000000}]));
    for n in 0..5 {
        let (_, _, body) = http.read_answer().expect("an answer");
        assert_eq!(rows(&body), json!([{ "n": n }]));
    }
    assert_eq!(http.read_answer().expect("the 404").0, 404);
}

#[test]
fn connection_close_is_honoured_and_http_1_0_closes_by_default() {
    let server = ServerProcess::start(&[]);
    let request = json!({"type":"json","sql":"select 1 as n"});
    let mut http = HttpConnection::open(&server.addr);
    http.write(HttpConnection::post_request(&request, "Connection: close\r\n").as_bytes());
    let (status, headers, _) = http.read_answer().expect("an answer");
    assert_eq!(
        (status, header(&headers, "connection")),
        (200, Some("close"))
    );
    assert!(
        http.read_answer().is_none(),
        "the server closes after answering"
    );

    let mut http = HttpConnection::open(&server.addr);
    http.write(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(http.read_answer().expect("an answer").0, 200);
    assert!(
        http.read_answer().is_none(),
        "HTTP/1.0 without keep-alive closes"
    );
}

#[test]
fn idle_kept_alive_connections_are_closed_by_the_core_timer() {
    let server = ServerProcess::start(&["--http-idle-timeout-ms", "200"]);
    let mut http = HttpConnection::open(&server.addr);
    http.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(http.read_answer().expect("an answer").0, 200);
    // Nothing more is sent: the server closes the socket (a read timeout would panic).
    assert!(http.read_answer().is_none());
}

#[test]
fn rest_queries_are_counted_in_metrics() {
    let server = ServerProcess::start(&[]);
    let metric = |name: &str| -> f64 {
        let (_, _, body) = get(&server.addr, "/metrics", "");
        String::from_utf8(body)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    let ok = "duckwire_queries_total{type=\"json\",outcome=\"ok\"}";
    let errors = "duckwire_queries_total{type=\"arrow\",outcome=\"error\"}";
    let (ok_before, errors_before) = (metric(ok), metric(errors));
    post_json(&server.addr, &json!({"type":"json","sql":"select 1"}), "");
    post_json(
        &server.addr,
        &json!({"type":"arrow","sql":"select nope"}),
        "",
    );
    assert_eq!(metric(ok), ok_before + 1.0);
    assert_eq!(metric(errors), errors_before + 1.0);
}

#[test]
fn rest_errors_use_the_core_strings_and_statuses() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let auth = "Authorization: Bearer s3cret\r\n";
    let cases = [
        (
            json!({"type":"json","sql":"select 1"}),
            "",
            401,
            "unauthorized",
        ),
        (json!({"type":"json"}), auth, 400, "missing field `sql`"),
        (json!({"type":"json","sql":"  "}), auth, 400, "empty SQL"),
        (
            json!({"type":"nope","sql":"x"}),
            auth,
            400,
            "unknown message type: nope",
        ),
        (
            json!({"type":"subscribe","channel":"c"}),
            auth,
            400,
            "`subscribe` messages are only accepted over WebSocket",
        ),
    ];
    for (body, headers, status, error) in cases {
        let (got, _, answer) = post_json(&server.addr, &body, headers);
        assert_eq!(
            (got, rows(&answer)["error"].clone()),
            (status, json!(error)),
            "{body}"
        );
    }
    // The URL token works as on the WebSocket door.
    let body = json!({"type":"json","sql":"select 1 as n"}).to_string();
    let (status, _, answer) = http(
        &server.addr,
        &format!(
            "POST /?token=s3cret HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!((status, rows(&answer)), (200, json!([{"n": 1}])));
}

/// `--http-compression on`: large answers are compressed as the request's Accept-Encoding
/// prefers, and decode to exactly the uncompressed answer; small ones go as they are.
#[test]
fn large_answers_are_compressed_as_the_client_accepts() {
    let server = ServerProcess::start(&["--http-compression", "on"]);
    let flights = data_file("flights-200k.parquet");
    for kind in ["json", "arrow"] {
        let request = json!({"type":kind,"sql":format!("select * from read_parquet('{}') limit 20000", flights.display())});
        let (_, headers, plain) = post_json(&server.addr, &request, "");
        assert_eq!(header(&headers, "content-encoding"), None);
        for (accept, expected) in [
            ("gzip", "gzip"),
            ("gzip, br", "br"),
            ("gzip, deflate, br, zstd", "zstd"),
            ("br;q=0.5, gzip;q=0.9", "gzip"),
        ] {
            let (status, headers, body) = post_json(
                &server.addr,
                &request,
                &format!("Accept-Encoding: {accept}\r\n"),
            );
            assert_eq!(status, 200);
            let encoding = header(&headers, "content-encoding");
            assert_eq!(encoding, Some(expected), "{kind} with {accept}");
            assert!(
                body.len() < plain.len() / 2,
                "{kind} {expected}: {} of {}",
                body.len(),
                plain.len()
            );
            assert_eq!(decode_body(encoding, &body), plain, "{kind} {expected}");
        }
    }
    let (_, headers, _) = post_json(
        &server.addr,
        &json!({"type":"json","sql":"select 1 as n"}),
        "Accept-Encoding: gzip\r\n",
    );
    assert_eq!(
        header(&headers, "content-encoding"),
        None,
        "small answers go as they are"
    );
}

/// Answers over 256 KiB are compressed in parts and sent as a chunked body (each part on the
/// wire while the next is compressed); smaller ones whole, with a Content-Length.
#[test]
fn large_compressed_answers_are_sent_in_chunks_as_they_are_compressed() {
    let server = ServerProcess::start(&["--http-compression", "on"]);
    for (rows, chunked) in [(2_000, false), (200_000, true)] {
        let request = json!({"type":"json","sql":format!("select range as i, 'row ' || range as label from range({rows})")});
        let (_, _, plain) = post_json(&server.addr, &request, "");
        for accept in ["gzip", "br", "zstd"] {
            let (status, headers, body) = post_json(
                &server.addr,
                &request,
                &format!("Accept-Encoding: {accept}\r\n"),
            );
            assert_eq!(status, 200);
            assert_eq!(header(&headers, "content-encoding"), Some(accept));
            assert_eq!(
                header(&headers, "transfer-encoding") == Some("chunked"),
                chunked,
                "{rows} rows, {accept}"
            );
            assert_eq!(header(&headers, "content-length").is_none(), chunked);
            assert_eq!(
                decode_body(Some(accept), &body),
                plain,
                "{rows} rows, {accept}"
            );
        }
    }
}

#[test]
fn auto_compression_leaves_loopback_clients_alone() {
    let server = ServerProcess::start(&[]);
    let request = json!({"type":"json","sql":"select * from range(10000) t(i)"});
    let (_, headers, body) = post_json(
        &server.addr,
        &request,
        "Accept-Encoding: gzip, br, zstd\r\n",
    );
    assert_eq!(header(&headers, "content-encoding"), None);
    assert_eq!(rows(&body).as_array().unwrap().len(), 10_000);
}
