//! What a statement does is DuckDB's answer (PROTOCOL §4a): a GET that proves nothing of
//! where it comes from may only run what DuckDB classifies as a read, however the write is
//! disguised, and a write through any door, of any message type, drops persisted results.

use duckwire_tests::*;
use serde_json::{json, Value};

/// A GET any web page can make a browser send: no `Origin`, no bearer token.
fn page_get(server: &ServerProcess, kind: &str, sql: &str) -> (u16, Value) {
    let path = format!("/?type={kind}&sql={}", url_encode(sql));
    let (status, _, body) = get(&server.addr, &path, "");
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, body)
}

#[test]
fn disguised_writes_over_a_pages_get_are_refused_before_anything_runs() {
    let dir = temp_dir("disguised-writes");
    let db = dir.join("app.duckdb");
    let server = ServerProcess::start(&["--db-path", db.to_str().unwrap()]);
    post_rows(&server, "create table t(a int)");
    post_rows(&server, "create sequence s");
    let copied = dir.join("copied.csv");
    let attached = dir.join("attached.duckdb");
    let exported = dir.join("exported");
    let disguised = [
        "with a as (select 1) insert into t select * from a".to_string(),
        "WiTh a AS (SeLeCt 1) InSeRt InTo t SeLeCt * FrOm a".into(),
        "explain analyze insert into t values (2)".into(),
        "EXPLAIN ANALYZE UPDATE t SET a = 3".into(),
        "/* select */ insert into t values (4)".into(),
        "-- select 1\ninsert into t values (5)".into(),
        "insert into t select length('select from values')".into(),
        "with a as ((select 1)) insert into t (select * from a)".into(),
        "insert into t values (6) returning a".into(),
        "select 1; insert into t values (7)".into(),
        "select 1; select 2".into(),
        "update t set a = 8".into(),
        "delete from t".into(),
        "create table u as select 1 as b".into(),
        "drop table t".into(),
        "select nextval('s') as n".into(),
        format!("copy (select 1) to '{}'", copied.display()),
        format!("attach '{}' as other", attached.display()),
        format!("export database '{}'", exported.display()),
        "call pragma_version()".into(),
        "pragma enable_profiling".into(),
        "set threads = 1".into(),
        "load parquet".into(),
        // Where only reads may run nothing is bound (binding an EXPORT creates its
        // directory): DuckDB's parser serializes SELECTs only, so no EXPLAIN is a read there.
        "explain select * from t".into(),
    ];
    for sql in &disguised {
        for kind in ["json", "arrow"] {
            let (status, body) = page_get(&server, kind, sql);
            assert_eq!(status, 405, "{kind} {sql}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("CSRF") && error.contains("DuckDB"),
                "{sql}: {error}"
            );
        }
    }
    // Mosaic's Python client form (`?query=`) goes through the same door.
    let query = json!({"type":"json","sql":"with a as (select 1) insert into t select * from a"});
    let (status, _, _) = get(
        &server.addr,
        &format!("/?query={}", url_encode(&query.to_string())),
        "",
    );
    assert_eq!(status, 405);

    // Nothing was written: not the table, not the sequence, no file.
    assert_eq!(
        post_rows(&server, "select count(*) as n from t"),
        json!([{"n": 0}])
    );
    assert_eq!(
        post_rows(&server, "select nextval('s') as n"),
        json!([{"n": 1}])
    );
    assert!(post_rows(
        &server,
        "select * from duckdb_tables() where table_name = 'u'"
    )
    .as_array()
    .unwrap()
    .is_empty());
    for path in [&copied, &attached, &exported] {
        assert!(!path.exists(), "{} was written", path.display());
    }

    // Reads stay reads, write keywords in their literals, comments or names included.
    for (sql, rows) in [
        (
            "select 'insert into t values (1)' as s",
            json!([{"s": "insert into t values (1)"}]),
        ),
        (
            "-- delete from t\nselect count(*) as n from t",
            json!([{"n": 0}]),
        ),
        (
            "(with a as (select 1 as x) select * from a)",
            json!([{"x": 1}]),
        ),
        ("from t", json!([])),
        ("describe t", Value::Null),
        ("summarize t", Value::Null),
    ] {
        let (status, body) = page_get(&server, "json", sql);
        assert_eq!(status, 200, "{sql}: {body}");
        if !rows.is_null() {
            assert_eq!(body, rows, "{sql}");
        }
    }
}

/// A persisted read cached before a write answers fresh data after it, whichever door and
/// message type carried the write and however it was disguised.
#[test]
fn a_persisted_read_after_a_write_through_any_door_answers_fresh_data() {
    let server = ServerProcess::start(&[]);
    post_rows(&server, "create table t(a int)");
    let count = || {
        let (status, _, body) = post_json(
            &server.addr,
            &json!({"type":"json","sql":"select count(*) as n from t","persist":true}),
            "",
        );
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).unwrap()[0]["n"].clone()
    };
    let disguised = "with a as (select 9) insert into t select * from a";
    assert_eq!(count(), 0);
    assert_eq!(count(), 0, "now cached");

    // Mosaic REST, a `json` message (not `exec`).
    post_rows(&server, disguised);
    assert_eq!(count(), 1, "after a POST");

    // A GET from an allowed page (its Origin proves where it comes from).
    let path = format!("/?type=json&sql={}", url_encode(disguised));
    let (status, _, body) = get(&server.addr, &path, "Origin: http://localhost:5173\r\n");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(count(), 2, "after a GET from an allowed page");

    // Mosaic's socket.
    let mut socket = Client::connect(&server.url("/mosaic"), &[]);
    let reply = socket.request(json!({"type":"json","sql":disguised}));
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(count(), 3, "after the Mosaic socket");

    // The SQLRooms protocol, as an `arrow` query.
    let mut sqlrooms = server.connect();
    sqlrooms.send_json(
        json!({"type":"arrow","sql":"explain analyze insert into t values (1)","queryId":"w"}),
    );
    let frame = sqlrooms.recv_binary();
    assert_eq!(split_arrow_frame(&frame).0["queryId"], "w");
    assert_eq!(count(), 4, "after the SQLRooms protocol");
}

/// The Mosaic socket's write barrier takes DuckDB's word: a write the keywords cannot see
/// runs after the queries sent before it and before the ones sent after it.
#[test]
fn a_disguised_write_on_the_mosaic_socket_runs_between_the_reads_around_it() {
    let server = ServerProcess::start(&[]);
    post_rows(&server, "create table t(a int)");
    let mut socket = Client::connect(&server.url("/mosaic"), &[]);
    for message in [
        json!({"type":"json","sql":"select count(*) as n from t"}),
        json!({"type":"json","sql":"with a as (select 1) insert into t select * from a"}),
        json!({"type":"json","sql":"select count(*) as n from t"}),
    ] {
        socket.send_json(message);
    }
    assert_eq!(socket.recv_json(), json!([{"n": 0}]), "the read before it");
    let write = socket.recv_json();
    assert!(write.get("error").is_none(), "{write}");
    assert_eq!(socket.recv_json(), json!([{"n": 1}]), "the read after it");
}
