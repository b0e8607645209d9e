//! PROTOCOL §3: the query messages against a real DuckDB.

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use duckwire_tests::*;
use serde_json::{json, Value};

#[test]
fn arrow_query_returns_an_ipc_stream_framed_with_its_query_id() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client
        .send_json(json!({"type":"arrow","sql":"select range as n from range(5)","queryId":"a1"}));
    let frame = client.recv_binary();
    let (header, ipc) = split_arrow_frame(&frame);
    assert_eq!(header, json!({"type":"arrow","queryId":"a1"}));
    let batches = read_ipc(ipc);
    let values: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(values, vec![0, 1, 2, 3, 4]);
}

#[test]
fn arrow_query_over_real_parquet_data() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    let path = data_file("flights-200k.parquet");
    let sql = format!(
        "select count(*)::bigint as n from read_parquet('{}')",
        path.display()
    );
    client.send_json(json!({"type":"arrow","sql":sql,"queryId":"p"}));
    let frame = client.recv_binary();
    let batches = read_ipc(split_arrow_frame(&frame).1);
    // Despite its name the file holds 231,083 rows (num_rows in its Parquet footer).
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        231_083
    );
}

#[test]
fn json_query_returns_rows_as_a_string() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    let reply =
        client.request(json!({"type":"json","sql":"select 1 as x, 'a' as y","queryId":"j"}));
    assert_eq!(reply["type"], "json");
    assert_eq!(reply["queryId"], "j");
    let rows: Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(rows, json!([{"x":1,"y":"a"}]));
}

#[test]
fn json_values_follow_the_python_server() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    let sql = "select date '2024-01-02' as d, timestamp '2024-01-02 00:00:01' as ts, \
               interval 2 second as iv, 1.25::decimal(5,2) as dec, 'nan'::double as nan, \
               time '01:02:03' as t, [1,2] as l, {'a': 1} as s, 'ab'::blob as b, \
               9007199254740993::bigint as big, 1 as x, 2 as x";
    let reply = client.request(json!({"type":"json","sql":sql,"queryId":1}));
    let rows: Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        rows[0],
        json!({"d":1704153600000i64,"ts":1704153601000i64,"iv":2000,"dec":1.25,"nan":null,
               "t":"01:02:03","l":[1,2],"s":{"a":1},"b":"YWI=","big":9007199254740993i64,"x":1,"x_1":2})
    );
}

#[test]
fn floats_are_written_with_the_digits_their_type_holds() {
    // A FLOAT is written as the shortest text that reads back as the same 32-bit float, as
    // DuckDB prints it: `0.1`, not its widened double `0.10000000149011612`. Doubles keep
    // every digit they hold.
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    let sql = "select 0.1::float as f, [0.1::float, 3.4028235e38::float] as l, \
               0.1::double + 0.2::double as d";
    let reply = client.request(json!({"type":"json","sql":sql,"queryId":"f"}));
    assert_eq!(
        reply["data"],
        "[{\"f\":0.1,\"l\":[0.1,3.4028235e+38],\"d\":0.30000000000000004}]"
    );
}

#[test]
fn exec_and_statements_without_results_answer_ok() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"exec","sql":"create table t(x int)","queryId":"e"})),
        json!({"type":"ok","queryId":"e"})
    );
    // Divergence: the Python server answers a JSON insert with a NoneType error.
    assert_eq!(
        client.request(json!({"type":"json","sql":"insert into t values (1), (2)","queryId":"i"})),
        json!({"type":"ok","queryId":"i"})
    );
    assert_eq!(
        client.request(json!({"type":"arrow","sql":"insert into t values (3)","queryId":"a"})),
        json!({"type":"ok","queryId":"a"})
    );
}

#[test]
fn several_statements_return_the_last_result() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    let reply = client.request(json!({"type":"json",
        "sql":"create table t(x int); insert into t values (7); select x from t","queryId":"m"}));
    assert_eq!(reply["data"], "[{\"x\":7}]");
}

#[test]
fn empty_sql_and_failures_answer_errors_with_the_query_id() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"json","sql":"   ","queryId":"e"})),
        json!({"type":"error","queryId":"e","error":"empty SQL"})
    );
    let reply = client.request(json!({"type":"json","sql":"select * from nowhere","queryId":"f"}));
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["queryId"], "f");
    assert!(reply["error"].as_str().unwrap().contains("nowhere"));
    // The connection stays usable.
    assert_eq!(
        client.request(json!({"type":"json","sql":"select 1","queryId":"g"}))["type"],
        "json"
    );
}

#[test]
fn query_ids_keep_their_json_type_and_missing_ones_are_generated() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"exec","sql":"select 1","queryId":17}))["queryId"],
        json!(17)
    );
    assert_eq!(
        client.request(json!({"type":"exec","sql":"select 1","queryId":"17"}))["queryId"],
        json!("17")
    );
    let generated = client.request(json!({"type":"exec","sql":"select 1"}));
    let id = generated["queryId"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4", "UUID v4");
}

#[test]
fn queries_are_multiplexed_and_finish_in_any_order() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client.send_json(json!({"type":"json","sql":SLOW_SQL,"queryId":"slow"}));
    client.send_json(json!({"type":"json","sql":"select 2 as y","queryId":"fast"}));
    let first = client.recv_json();
    assert_eq!(
        first["queryId"], "fast",
        "the fast query is not stuck behind the slow one"
    );
    client.send_json(json!({"type":"cancel","queryId":"slow"}));
    let mut replies = [client.recv_json(), client.recv_json()];
    replies.sort_by_key(|r| r["type"].as_str().unwrap().to_string());
    assert_eq!(
        replies[0],
        json!({"type":"cancelAck","queryId":"slow","cancelled":true})
    );
    assert_eq!(
        replies[1],
        json!({"type":"error","queryId":"slow","error":"Query was cancelled"})
    );
}

#[test]
fn cancel_of_an_unknown_query_is_not_cancelled() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"cancel","queryId":"ghost"})),
        json!({"type":"cancelAck","queryId":"ghost","cancelled":false})
    );
}

#[test]
fn persisted_results_are_cached_and_writes_invalidate_them() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client.request(json!({"type":"exec","sql":"create table t as select 1 as x","queryId":"c"}));
    let query =
        json!({"type":"json","sql":"select sum(x) as s from t","persist":true,"queryId":"q"});
    assert_eq!(client.request(query.clone())["data"], "[{\"s\":1}]");
    assert_eq!(client.request(query.clone())["data"], "[{\"s\":1}]");
    let (_, _, metrics) = get(&server.addr, "/metrics", "");
    assert!(String::from_utf8(metrics)
        .unwrap()
        .contains("duckwire_cache_hits_total 1"));
    client.request(json!({"type":"exec","sql":"insert into t values (41)","queryId":"w"}));
    assert_eq!(
        client.request(query)["data"],
        "[{\"s\":42}]",
        "no stale result after a write"
    );
}

/// One SQL text persisted through two doors is cached in each door's form (SQLRooms: the
/// rows escaped inside the reply's `data` string; Mosaic REST: the rows array), and each hit
/// answers in its door's shape, with text that needs escaping intact.
#[test]
fn cached_json_answers_keep_each_doors_shape() {
    let server = ServerProcess::start(&[]);
    let sql = r#"select 'say "hi"' || chr(10) || 'back\slash é' as s, 7 as n"#;
    let expected = json!([{"s": "say \"hi\"\nback\\slash é", "n": 7}]);
    let hits = || -> u64 {
        let (_, _, metrics) = get(&server.addr, "/metrics", "");
        let text = String::from_utf8(metrics).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("duckwire_cache_hits_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut client = server.connect();
    for (i, expected_hits) in [(0, 0), (1, 1), (2, 2)] {
        let reply = client
            .request(json!({"type":"json","sql":sql,"persist":true,"queryId":format!("q{i}")}));
        assert_eq!(reply["queryId"], json!(format!("q{i}")));
        let rows: serde_json::Value =
            serde_json::from_str(reply["data"].as_str().expect("data is a string")).unwrap();
        assert_eq!(rows, expected, "SQLRooms answer {i}");
        assert_eq!(hits(), expected_hits, "SQLRooms answer {i} from the cache");
    }
    for i in 0..2 {
        let (status, _, body) = post_json(
            &server.addr,
            &json!({"type":"json","sql":sql,"persist":true}),
            "",
        );
        assert_eq!(status, 200);
        let rows: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(rows, expected, "REST answer {i}");
    }
    // The REST door's first read filled its own form; its second was a hit.
    assert_eq!(hits(), 3);
}

/// A result the cache holds is answered without a DuckDB worker: with the only worker busy
/// on a query that never ends, a cached read still answers (over WebSocket and REST).
#[test]
fn cache_hits_answer_while_every_worker_is_busy() {
    let server = ServerProcess::start(&["--threads", "1"]);
    let mut client = server.connect();
    let query = json!({"type":"arrow","sql":"select 42 as x","persist":true,"queryId":"p"});
    client.send_json(query.clone());
    client.recv_binary();
    client.send_json(json!({"type":"json","sql":SLOW_SQL,"queryId":"slow"}));
    let mut other = server.connect();
    other.send_json(query);
    let reply = other.recv_binary();
    let (header, ipc) = split_arrow_frame(&reply);
    assert_eq!(header["queryId"], "p");
    assert_eq!(read_ipc(ipc)[0].num_rows(), 1);
    let (status, _, body) = post_json(
        &server.addr,
        &json!({"type":"arrow","sql":"select 42 as x","persist":true}),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(read_ipc(&body)[0].num_rows(), 1);
    client.send_json(json!({"type":"cancel","queryId":"slow"}));
}

#[test]
fn upload_arrow_creates_or_replaces_a_table() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client.send_binary(upload_frame(
        "u1",
        "people",
        &arrow_ipc_table(&[1, 2], &["ann", "bob"]),
    ));
    assert_eq!(
        client.recv_json(),
        json!({"type":"uploadAck","queryId":"u1"})
    );
    let reply = client
        .request(json!({"type":"json","sql":"select * from people order by id","queryId":"r"}));
    assert_eq!(
        reply["data"],
        "[{\"id\":1,\"name\":\"ann\"},{\"id\":2,\"name\":\"bob\"}]"
    );
    client.send_binary(upload_frame(
        "u2",
        "people",
        &arrow_ipc_table(&[3], &["cy"]),
    ));
    assert_eq!(client.recv_json()["type"], "uploadAck");
    let reply = client
        .request(json!({"type":"json","sql":"select count(*) as n from people","queryId":"r2"}));
    assert_eq!(reply["data"], "[{\"n\":1}]", "replaced, not appended");
}

#[test]
fn upload_accepts_dictionary_encoded_strings_as_apache_arrow_js_sends_them() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client.send_binary(upload_frame(
        "d",
        "tags",
        &arrow_ipc_dictionary_table(&["x", "y", "x"]),
    ));
    assert_eq!(
        client.recv_json(),
        json!({"type":"uploadAck","queryId":"d"})
    );
    let reply = client.request(json!({"type":"json","sql":"select name, count(*) as n from tags group by name order by name","queryId":"r"}));
    assert_eq!(
        reply["data"],
        "[{\"name\":\"x\",\"n\":2},{\"name\":\"y\",\"n\":1}]"
    );
}

#[test]
fn upload_errors_are_reported() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client.send_binary(upload_frame(
        "bad",
        "t; drop table x",
        &arrow_ipc_table(&[1], &["a"]),
    ));
    let reply = client.recv_json();
    assert_eq!(reply["queryId"], "bad");
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid table name"));
    client.send_binary(upload_frame("junk", "t", b"not arrow"));
    let reply = client.recv_json();
    assert_eq!(reply["queryId"], "junk");
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid Arrow IPC stream"));
}

#[test]
fn corrupted_uploads_never_take_a_worker_down() {
    // One worker: if any corrupted stream killed it, the final query would never be answered.
    // (Logging off: the server logs every contained reader panic, hundreds here.)
    let server = ServerProcess::start(&["--threads", "1", "--log-level", "off"]);
    let mut client = server.connect();
    let valid = arrow_ipc_table(&[1, 2, 3], &["a", "b", "c"]);
    for pattern in [0xa5u8, 0xff, 0x01] {
        for i in 0..valid.len() {
            let mut corrupted = valid.clone();
            corrupted[i] ^= pattern;
            client.send_binary(upload_frame(&format!("c{i}"), "t", &corrupted));
            let reply = client.recv_json();
            assert_eq!(reply["queryId"], format!("c{i}"));
            assert!(
                matches!(reply["type"].as_str(), Some("uploadAck" | "error")),
                "{reply}"
            );
        }
    }
    for cut in [1, 8, valid.len() / 2, valid.len() - 1] {
        client.send_binary(upload_frame("cut", "t", &valid[..cut]));
        assert_eq!(client.recv_json()["queryId"], "cut");
    }
    let reply = client.request(json!({"type":"json","sql":"select 1 as alive","queryId":"end"}));
    assert_eq!(reply["data"], "[{\"alive\":1}]");
}

#[test]
fn cache_dir_holds_persisted_results_and_writes_retire_them() {
    let dir = temp_dir("cache-dir");
    let cache = dir.join("cache");
    // Memory tier off: every hit must come from the disk tier.
    let server =
        ServerProcess::start(&["--cache-dir", cache.to_str().unwrap(), "--cache-bytes", "0"]);
    let mut client = server.connect();
    let query = json!({"type":"arrow","sql":"select 42 as x","persist":true,"queryId":"p"});
    client.send_json(query.clone());
    let first = client.recv_binary();
    let files = || std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(files(), 1, "the result was written to the disk tier");
    client.send_json(query);
    assert_eq!(client.recv_binary(), first, "served identically from disk");
    let (_, _, metrics) = get(&server.addr, "/metrics", "");
    assert!(String::from_utf8(metrics)
        .unwrap()
        .contains("duckwire_cache_hits_total 1"));
    client.request(json!({"type":"exec","sql":"create table t(x int)","queryId":"w"}));
    // At once, the old file is never served again; the janitor thread deletes it (off the
    // threads that serve queries).
    let query = json!({"type":"arrow","sql":"select 42 as x","persist":true,"queryId":"q"});
    client.send_json(query);
    client.recv_binary();
    let (_, _, metrics) = get(&server.addr, "/metrics", "");
    assert!(String::from_utf8(metrics)
        .unwrap()
        .contains("duckwire_cache_misses_total 2"));
    until(
        "the write's past epoch is deleted from the disk tier",
        || files() == 1,
    );
}

/// Workers keep the plans of repeated reads, and DuckDB specialises a plan to the statistics
/// of the data it was planned on (a filter on an empty table is planned as "no rows"). A read
/// sent after a write's reply must still see the write, whichever connection wrote.
#[test]
fn repeated_reads_see_every_write_answered_before_them() {
    // One worker, so every read runs on the same kept connection.
    let server = ServerProcess::start(&["--threads", "1"]);
    let mut reader = server.connect();
    let mut writer = server.connect();
    writer.request(json!({"type":"exec","sql":"create table t(k varchar)","queryId":"c"}));
    let count =
        json!({"type":"json","sql":"select count(*) as n from t where k = 'x'","queryId":"r"});
    for _ in 0..3 {
        assert_eq!(reader.request(count.clone())["data"], "[{\"n\":0}]");
    }
    writer.request(json!({"type":"exec","sql":"insert into t values ('x')","queryId":"w"}));
    assert_eq!(reader.request(count.clone())["data"], "[{\"n\":1}]");
    let mut arrow_count = || {
        reader.send_json(
            json!({"type":"arrow","sql":"select count(*) as n from t where k = 'x'","queryId":"a"}),
        );
        let frame = reader.recv_binary();
        let batches = read_ipc(split_arrow_frame(&frame).1);
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    };
    assert_eq!(arrow_count(), 1);
    writer.request(json!({"type":"exec","sql":"insert into t values ('x')","queryId":"w2"}));
    assert_eq!(arrow_count(), 2);
}

/// Every query runs as on a fresh connection: session state set by one query (a temporary
/// table, an open transaction, a setting) is not there for the next, even on the same worker.
#[test]
fn session_state_does_not_leak_from_one_query_to_the_next() {
    let server = ServerProcess::start(&["--threads", "1"]);
    let mut client = server.connect();
    client.request(
        json!({"type":"exec","sql":"create temp table scratch as select 1 as x","queryId":"t"}),
    );
    let reply = client.request(json!({"type":"json","sql":"select * from scratch","queryId":"r"}));
    assert_eq!(reply["type"], "error", "{reply}");
    client
        .request(json!({"type":"exec","sql":"begin; create table left_open(x int)","queryId":"b"}));
    let reply = client.request(json!({"type":"json","sql":"select count(*) as n from duckdb_tables() where table_name = 'left_open'","queryId":"q"}));
    assert_eq!(
        reply["data"], "[{\"n\":0}]",
        "an unfinished transaction is rolled back"
    );
}

/// Identical persisted reads wait for the one running inside the protocol core: with two
/// workers, a slow persisted read and two identical requests leave a worker free for other
/// queries, a waiter's cancel is answered at once, and the rest share one computation.
#[test]
fn identical_persisted_reads_wait_without_a_worker_and_cancel_at_once() {
    let server = ServerProcess::start(&["--threads", "2"]);
    let slow = |id: &str| json!({"type":"json","sql":SLOW_SQL,"queryId":id,"persist":true});
    let mut leader = server.connect();
    let mut waiter = server.connect();
    let mut other = server.connect();
    leader.send_json(slow("lead"));
    waiter.send_json(slow("wait-1"));
    waiter.send_json(slow("wait-2"));
    // Two workers: one runs the slow read; if the waiters held workers, this would queue
    // behind them until the slow read ended (minutes).
    let reply = other.request(json!({"type":"json","sql":"select 7 as n","queryId":"free"}));
    assert_eq!(reply["data"], "[{\"n\":7}]");
    // A waiter's cancel ends it at once, while the leader keeps running.
    waiter.send_json(json!({"type":"cancel","queryId":"wait-1"}));
    assert_eq!(
        waiter.recv_json(),
        json!({"type":"cancelAck","queryId":"wait-1","cancelled":true})
    );
    assert_eq!(
        waiter.recv_json(),
        json!({"type":"error","queryId":"wait-1","error":"Query was cancelled"})
    );
    // The leader's client cancels: the remaining waiter is not cancelled with it, it runs on
    // its own (and is cancelled by its own client to end the test).
    leader.send_json(json!({"type":"cancel","queryId":"lead"}));
    assert_eq!(leader.recv_json()["cancelled"], true);
    assert_eq!(leader.recv_json()["error"], "Query was cancelled");
    let reply = other.request(json!({"type":"json","sql":"select 8 as n","queryId":"free-2"}));
    assert_eq!(reply["data"], "[{\"n\":8}]");
    waiter.send_json(json!({"type":"cancel","queryId":"wait-2"}));
    assert_eq!(
        waiter.recv_json(),
        json!({"type":"cancelAck","queryId":"wait-2","cancelled":true})
    );
    assert_eq!(
        waiter.recv_json(),
        json!({"type":"error","queryId":"wait-2","error":"Query was cancelled"})
    );
}

#[test]
fn identical_persisted_reads_in_flight_share_one_result() {
    let server = ServerProcess::start(&[]);
    let mut a = server.connect();
    // A read that takes long enough (about a second) for the second request to find it running.
    let sql = "select count(*) as n from range(1000000000) t(i) where i % 7 = 3";
    a.send_json(json!({"type":"json","sql":sql,"queryId":"a","persist":true}));
    a.send_json(json!({"type":"json","sql":sql,"queryId":"b","persist":true}));
    let data = json!("[{\"n\":142857143}]");
    let mut replies = [a.recv_json(), a.recv_json()];
    replies.sort_by_key(|r| r["queryId"].to_string());
    assert_eq!(replies[0], json!({"type":"json","queryId":"a","data":data}));
    assert_eq!(replies[1], json!({"type":"json","queryId":"b","data":data}));
    let (_, _, body) = get(&server.addr, "/metrics", "");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("duckwire_queries_shared_total 1\n"), "{text}");
    assert!(
        text.contains("duckwire_cache_misses_total 1\n"),
        "computed once: {text}"
    );
}
