//! `--read-token` (PROTOCOL §4a): its holder may run what DuckDB classifies as reads,
//! subscribe and join rooms, and nothing that writes, on every door; the full token keeps
//! every right. A public dashboard is served without handing out writes.

use duckwire_tests::*;
use serde_json::{json, Value};

const FULL: &str = "full-s3cret";
const READ: &str = "read-s3cret";

fn server() -> ServerProcess {
    let server = ServerProcess::start(&["--auth-token", FULL, "--read-token", READ, "--sync"]);
    let mut admin = Client::connect(&server.url(&format!("/?token={FULL}")), &[]);
    let setup = "create table t(a int); create sequence s";
    admin.request(json!({"type":"exec","sql":setup,"queryId":"setup"}));
    server
}

fn count(server: &ServerProcess) -> Value {
    let mut admin = Client::connect(&server.url(&format!("/?token={FULL}")), &[]);
    let reply =
        admin.request(json!({"type":"json","sql":"select count(*) as n from t","queryId":"c"}));
    serde_json::from_str::<Value>(reply["data"].as_str().unwrap()).unwrap()[0]["n"].clone()
}

fn refused_for_the_read_token(error: &Value) {
    let text = error.as_str().unwrap_or_default();
    assert!(
        text.starts_with("this token may only read (--read-token)"),
        "{error}"
    );
}

#[test]
fn rest_reads_with_the_read_token_and_writes_only_with_the_full_one() {
    let server = server();
    let read_bearer = format!("Authorization: Bearer {READ}\r\n");
    let full_bearer = format!("Authorization: Bearer {FULL}\r\n");
    let post = |sql: &str, kind: &str, headers: &str| {
        let (status, _, body) = post_json(&server.addr, &json!({"type":kind,"sql":sql}), headers);
        (
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    assert_eq!(
        post("select 42 as x", "json", &read_bearer),
        (200, json!([{"x": 42}]))
    );
    for (sql, kind) in [
        ("insert into t values (1)", "json"),
        ("with a as (select 1) insert into t select * from a", "json"),
        ("select 1", "exec"),
        ("set threads = 1", "json"),
    ] {
        let (status, body) = post(sql, kind, &read_bearer);
        assert_eq!(status, 403, "{kind} {sql}: {body}");
        refused_for_the_read_token(&body["error"]);
    }
    // The GET forms: the token in the URL or the header.
    let write = format!("/?type=json&sql={}", url_encode("insert into t values (1)"));
    let (status, _, _) = get(&server.addr, &format!("{write}&token={READ}"), "");
    assert_eq!(status, 403);
    let (status, _, _) = get(&server.addr, &write, &read_bearer);
    assert_eq!(status, 403);
    let read = format!(
        "/?type=json&sql={}&token={READ}",
        url_encode("select 1 as one")
    );
    assert_eq!(get(&server.addr, &read, "").0, 200);
    assert_eq!(count(&server), 0, "nothing written");
    assert_eq!(
        post("insert into t values (1)", "json", &full_bearer).0,
        200
    );
    assert_eq!(count(&server), 1, "the full token writes");
    // A wrong token is still unauthorized.
    let (status, _) = post("select 1", "json", "Authorization: Bearer nope\r\n");
    assert_eq!(status, 401);
}

#[test]
fn the_mosaic_socket_with_the_read_token_reads_only() {
    let server = server();
    let mut socket = Client::connect(&server.url(&format!("/mosaic?token={READ}")), &[]);
    assert_eq!(
        socket.request(json!({"type":"json","sql":"select 1 as x"})),
        json!([{"x": 1}])
    );
    for message in [
        json!({"type":"exec","sql":"create table u(a int)"}),
        json!({"type":"json","sql":"insert into t values (1)"}),
        json!({"type":"arrow","sql":"explain analyze insert into t values (1)"}),
        // A SELECT that writes: DuckDB's read-only transaction refuses it.
        json!({"type":"json","sql":"select nextval('s') as n"}),
    ] {
        let reply = socket.request(message.clone());
        refused_for_the_read_token(&reply["error"]);
    }
    assert_eq!(count(&server), 0);
    let mut admin = Client::connect(&server.url(&format!("/mosaic?token={FULL}")), &[]);
    assert_eq!(
        admin.request(json!({"type":"json","sql":"select nextval('s') as n"})),
        json!([{"n": 1}]),
        "the sequence did not move"
    );
}

#[test]
fn the_sqlrooms_protocol_with_the_read_token_reads_subscribes_and_joins_only() {
    let server = server();
    let mut reader = server.connect();
    assert_eq!(
        reader.request(json!({"type":"auth","token":READ}))["type"],
        "authAck"
    );
    let reply = reader.request(json!({"type":"json","sql":"select 7 as x","queryId":"r"}));
    assert_eq!(reply["data"], "[{\"x\":7}]");
    for (message, id) in [
        (json!({"type":"exec","sql":"select 1","queryId":"w1"}), "w1"),
        (
            json!({"type":"json","sql":"delete from t","queryId":"w2"}),
            "w2",
        ),
        (
            json!({"type":"arrow","sql":"create table u(a int)","queryId":"w3"}),
            "w3",
        ),
    ] {
        let reply = reader.request(message);
        assert_eq!(
            (reply["type"].as_str(), reply["queryId"].as_str()),
            (Some("error"), Some(id))
        );
        refused_for_the_read_token(&reply["error"]);
    }
    reader.send_binary(upload_frame("up", "u", &arrow_ipc_table(&[1], &["a"])));
    let reply = reader.recv_json();
    assert_eq!(reply["queryId"], "up");
    refused_for_the_read_token(&reply["error"]);
    let reply = reader.request(json!({"type":"notify","channel":"c","payload":"x"}));
    refused_for_the_read_token(&reply["error"]);

    // Subscriptions and rooms are read: the reader sees what the full token's holder does.
    assert_eq!(
        reader.request(json!({"type":"subscribe","channel":"c"}))["type"],
        "subscribed"
    );
    join_room(&mut reader, "r");
    let mut writer = Client::connect(&server.url(&format!("/?token={FULL}")), &[]);
    join_room(&mut writer, "r");
    writer.send_binary(loro_update("k", 1));
    assert_eq!(writer.recv_json()["type"], "crdt-update-ack");
    reader.recv_binary(); // the update, relayed to every member
    writer.request(json!({"type":"subscribe","channel":"c"}));
    writer.send_json(json!({"type":"notify","channel":"c","payload":"hello"}));
    let delivered = reader.recv_json();
    assert_eq!(
        (delivered["type"].as_str(), delivered["payload"].as_str()),
        (Some("notify"), Some("hello"))
    );

    // The reader's own CRDT changes are refused and reach no one.
    reader.send_binary(loro_update("k", 2));
    refused_for_the_read_token(&reader.recv_json()["error"]);
    assert_eq!(count(&server), 0);
}

#[test]
fn a_read_token_without_a_full_token_refuses_to_start() {
    let error = refused_start(&["--read-token", READ]);
    assert!(error.contains("--read-token needs --auth-token"), "{error}");
}
