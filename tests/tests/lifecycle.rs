//! PROTOCOL §8: database files, meta tables, graceful shutdown, restart durability.

use duckwire_tests::*;
use serde_json::json;

#[test]
fn tables_survive_sigterm_and_restart() {
    let dir = temp_dir("restart");
    let db = dir.join("a/b/data.duckdb");
    let args = ["--db-path", db.to_str().unwrap()];
    let server = ServerProcess::start(&args);
    let mut client = server.connect();
    client.request(
        json!({"type":"exec","sql":"create table kept as select 42 as answer","queryId":1}),
    );
    let status = server.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );
    assert!(db.exists(), "parent directories were created");
    let server = ServerProcess::start(&args);
    let mut client = server.connect();
    let reply = client.request(json!({"type":"json","sql":"select answer from kept","queryId":2}));
    assert_eq!(reply["data"], "[{\"answer\":42}]");
}

#[test]
fn sigterm_interrupts_running_queries_and_exits_zero() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    client.send_json(json!({"type":"json","sql":SLOW_SQL,"queryId":"slow"}));
    // Wait until the server has the query (its reply to a later message comes after).
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":"c"}))["type"],
        "subscribed"
    );
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(client.recv_close(), Some(1001));
}

#[test]
fn an_empty_database_file_is_replaced() {
    let dir = temp_dir("empty-file");
    let db = dir.join("empty.duckdb");
    std::fs::write(&db, b"").unwrap();
    let server = ServerProcess::start(&["--db-path", db.to_str().unwrap()]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"exec","sql":"create table t(x int)","queryId":1}))["type"],
        "ok"
    );
}

#[test]
fn meta_tables_are_created_in_the_namespace() {
    let server = ServerProcess::start(&["--meta-namespace", "custom_meta"]);
    let mut client = server.connect();
    let reply = client.request(json!({"type":"json",
        "sql":"select table_name from information_schema.tables where table_schema = 'custom_meta' order by 1",
        "queryId":1}));
    assert_eq!(
        reply["data"],
        "[{\"table_name\":\"sync_rooms\"},{\"table_name\":\"sync_updates\"},{\"table_name\":\"ui_state\"}]"
    );
}

#[test]
fn a_disconnecting_client_has_its_queries_interrupted() {
    let server = ServerProcess::start(&["--threads", "1"]);
    let mut client = server.connect();
    client.send_json(json!({"type":"json","sql":SLOW_SQL,"queryId":"slow"}));
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":"c"}))["type"],
        "subscribed"
    );
    client.close();
    // With one worker, this only runs once the abandoned query was interrupted.
    let mut other = server.connect();
    assert_eq!(
        other.request(json!({"type":"json","sql":"select 1 as x","queryId":"after"}))["data"],
        "[{\"x\":1}]"
    );
}

#[test]
fn extensions_that_fail_to_load_are_skipped() {
    // No network here: INSTALL fails; the server must still start and serve.
    let server =
        ServerProcess::start(&["--extensions", "no_such_extension_xyz,other@nowhere_repo"]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"json","sql":"select 1 as x","queryId":1}))["data"],
        "[{\"x\":1}]"
    );
}
