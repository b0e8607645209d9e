//! Safe to expose (PROTOCOL §1, §3, §7): query timeouts, read-only mode, the file sandbox,
//! a memory limit and init SQL, each refusal a clear error naming its flag.

use duckwire_tests::*;
use serde_json::{json, Value};

fn error_of(reply: &Value) -> String {
    reply["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn queries_past_the_timeout_are_stopped_on_every_door() {
    let server = ServerProcess::start(&["--query-timeout-ms", "300", "--threads", "1"]);
    let expected = "query timeout (300 ms) exceeded";
    let mut client = server.connect();
    let reply = client.request(json!({"type":"json","sql":SLOW_SQL,"queryId":"slow"}));
    assert_eq!(
        reply,
        json!({"type":"error","queryId":"slow","error":expected})
    );
    let (status, _, body) = post_json(&server.addr, &json!({"type":"arrow","sql":SLOW_SQL}), "");
    assert_eq!(
        (status, error_of(&serde_json::from_slice(&body).unwrap())),
        (504, expected.into())
    );
    let mut mosaic = Client::connect(&server.url("/mosaic"), &[]);
    assert_eq!(
        mosaic.request(json!({"type":"json","sql":SLOW_SQL})),
        json!({"error":expected})
    );
    // The single worker is free again.
    let reply = client.request(json!({"type":"json","sql":"select 1 as x","queryId":"after"}));
    assert_eq!(reply["data"], "[{\"x\":1}]");
}

#[test]
fn read_only_serves_reads_refuses_writes_and_lets_several_processes_share_a_file() {
    let dir = temp_dir("read-only");
    let db = dir.join("shared.duckdb");
    let db = db.to_str().unwrap();
    database_with(db, "create table t as select 1 as a");
    let first = ServerProcess::start(&["--db-path", db, "--read-only"]);
    let second = ServerProcess::start(&["--db-path", db, "--read-only"]);
    for server in [&first, &second] {
        let reply = server
            .connect()
            .request(json!({"type":"json","sql":"select a from t","queryId":"r"}));
        assert_eq!(reply["data"], "[{\"a\":1}]");
    }
    let refused = "the server is read-only (--read-only): writes are refused";
    let mut client = first.connect();
    for message in [
        json!({"type":"exec","sql":"create table u(a int)","queryId":"e"}),
        json!({"type":"json","sql":"insert into t values (2)","queryId":"i"}),
    ] {
        assert_eq!(client.request(message)["error"], refused);
    }
    let ipc = arrow_ipc_table(&[1], &["x"]);
    client.send_binary(upload_frame("up", "uploaded", &ipc));
    assert_eq!(client.recv_json()["error"], refused);
    let (status, _, body) = post_json(
        &first.addr,
        &json!({"type":"exec","sql":"drop table t"}),
        "",
    );
    assert_eq!(
        (status, error_of(&serde_json::from_slice(&body).unwrap())),
        (403, refused.into())
    );
}

#[test]
fn read_only_rooms_need_a_writable_meta_db() {
    let dir = temp_dir("read-only-sync");
    let db = dir.join("data.duckdb");
    database_with(db.to_str().unwrap(), "create table t(a int)");
    let stderr = refused_start(&["--db-path", db.to_str().unwrap(), "--read-only", "--sync"]);
    assert!(stderr.contains("--meta-db"), "{stderr}");
    let meta = dir.join("meta.duckdb");
    let server = ServerProcess::start(&[
        "--db-path",
        db.to_str().unwrap(),
        "--read-only",
        "--sync",
        "--meta-db",
        meta.to_str().unwrap(),
    ]);
    let mut client = server.connect();
    join_room(&mut client, "r");
    client.send_binary(loro_update("k", 1));
    assert_eq!(client.recv_json()["type"], "crdt-update-ack");
}

#[test]
fn the_file_sandbox_allows_only_the_listed_directories_and_cannot_be_undone() {
    let dir = temp_dir("sandbox");
    let inside = dir.join("inside");
    let outside = dir.join("outside");
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(inside.join("ok.csv"), "a\n1\n").unwrap();
    std::fs::write(outside.join("secret.csv"), "a\n42\n").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.csv"), inside.join("link.csv")).unwrap();
    let server = ServerProcess::start(&["--allowed-dirs", inside.to_str().unwrap()]);
    let mut client = server.connect();
    let mut ask = |sql: String| client.request(json!({"type":"json","sql":sql,"queryId":"q"}));
    let ok = ask(format!(
        "select a from read_csv('{}')",
        inside.join("ok.csv").display()
    ));
    assert_eq!(ok["data"], "[{\"a\":1}]");
    let dotdot = inside.join("..").join("outside").join("secret.csv");
    for sql in [
        format!(
            "select * from read_csv('{}')",
            outside.join("secret.csv").display()
        ),
        format!("select * from read_csv('{}')", dotdot.display()),
        "select * from read_csv('/etc/passwd')".to_string(),
        format!("attach '{}' as other", outside.join("x.duckdb").display()),
        format!("copy (select 1) to '{}'", outside.join("out.csv").display()),
        "set enable_external_access = true".to_string(),
        "set allowed_directories = ['/']".to_string(),
    ] {
        let reply = ask(sql.clone());
        assert_eq!(reply["type"], "error", "{sql} was allowed: {reply}");
    }
    assert!(!outside.join("out.csv").exists());
    // A symlink inside that points outside is followed by the OS; whatever DuckDB decides,
    // it must not hand out the secret.
    let linked = ask(format!(
        "select a from read_csv('{}')",
        inside.join("link.csv").display()
    ));
    assert_ne!(
        linked["data"], "[{\"a\":42}]",
        "the symlink escaped the sandbox: {linked}"
    );
}

#[test]
fn no_external_access_refuses_every_file() {
    let server = ServerProcess::start(&["--no-external-access"]);
    let flights = data_file("flights-200k.parquet");
    let reply = server.connect().request(json!({"type":"json","sql":format!("select count(*) from '{}'", flights.display()),"queryId":"q"}));
    assert_eq!(reply["type"], "error", "{reply}");
}

#[test]
fn a_query_over_the_memory_limit_fails_and_the_server_stays_up() {
    let server = ServerProcess::start(&["--memory-limit", "64MB", "--threads", "1"]);
    let mut client = server.connect();
    let reply = client.request(json!({"type":"json","queryId":"big",
        "sql":"select len(list(i)) as n from range(100000000) t(i)"}));
    assert_eq!(reply["type"], "error", "{reply}");
    assert!(
        error_of(&reply).to_lowercase().contains("memory"),
        "{reply}"
    );
    let reply = client.request(json!({"type":"json","sql":"select 1 as x","queryId":"after"}));
    assert_eq!(reply["data"], "[{\"x\":1}]");
    let stderr = refused_start(&["--memory-limit", "lots"]);
    assert!(stderr.contains("--memory-limit lots"), "{stderr}");
}

#[test]
fn init_sql_runs_before_listening_and_a_failure_names_its_line() {
    let dir = temp_dir("init-sql");
    let good = dir.join("init.sql");
    std::fs::write(
        &good,
        "-- set up the dashboard's data\ncreate table sales as select range as id from range(3);\n\ncreate view total as select count(*) as n from sales;\n",
    )
    .unwrap();
    let server = ServerProcess::start(&["--init-sql", good.to_str().unwrap()]);
    let reply = server
        .connect()
        .request(json!({"type":"json","sql":"select n from total","queryId":"q"}));
    assert_eq!(reply["data"], "[{\"n\":3}]");
    let bad = dir.join("bad.sql");
    std::fs::write(
        &bad,
        "create table a(x int);\n\nselect * from missing_table;\n",
    )
    .unwrap();
    let stderr = refused_start(&["--init-sql", bad.to_str().unwrap()]);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("missing_table"), "{stderr}");
}
