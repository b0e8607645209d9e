//! PROTOCOL §7: caps over the real server.

use duckwire_tests::*;
use serde_json::json;

#[test]
fn a_frame_over_max_frame_bytes_closes_with_1009() {
    let server = ServerProcess::start(&["--max-frame-bytes", "1000"]);
    let mut client = server.connect();
    client.send_text(&format!(
        "{{\"type\":\"json\",\"sql\":\"{}\"}}",
        "x".repeat(2000)
    ));
    assert_eq!(client.recv_close(), Some(1009));
}

#[test]
fn max_connections_closes_extra_connections_with_1013() {
    let server = ServerProcess::start(&["--max-connections", "1"]);
    let mut first = server.connect();
    let mut second = server.connect();
    assert_eq!(second.recv_close(), Some(1013));
    assert_eq!(
        first.request(json!({"type":"exec","sql":"select 1","queryId":1}))["type"],
        "ok"
    );
}

#[test]
fn inflight_and_query_id_caps_answer_named_errors() {
    let server = ServerProcess::start(&["--max-inflight-per-conn", "1", "--max-query-id-len", "4"]);
    let mut client = server.connect();
    client.send_json(json!({"type":"json","sql":SLOW_SQL,"queryId":"slow"}));
    assert_eq!(
        client.request(json!({"type":"json","sql":"select 1","queryId":"two"})),
        json!({"type":"error","queryId":"two","error":"max_inflight_per_conn exceeded (limit 1)"})
    );
    assert_eq!(
        client.request(json!({"type":"cancel","queryId":"slow"}))["cancelled"],
        true
    );
    assert_eq!(client.recv_json()["error"], "Query was cancelled");
    assert_eq!(
        client.request(json!({"type":"json","sql":"select 1","queryId":"12345"}))["error"],
        "max_query_id_len exceeded (limit 4)"
    );
}

#[test]
fn a_reply_past_the_outbound_cap_closes_with_1008() {
    let server = ServerProcess::start(&["--max-outbound-bytes-per-conn", "10000"]);
    let mut client = server.connect();
    client.send_json(json!({"type":"json","sql":"select * from range(100000)","queryId":"big"}));
    assert_eq!(client.recv_close(), Some(1008));
    // The server itself is fine.
    let mut other = server.connect();
    assert_eq!(
        other.request(json!({"type":"exec","sql":"select 1","queryId":1}))["type"],
        "ok"
    );
}

#[test]
fn caps_can_be_disabled_with_none() {
    let server = ServerProcess::start(&["--max-channel-len", "none"]);
    let mut client = server.connect();
    let long = "c".repeat(1000);
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":long}))["type"],
        "subscribed"
    );
}

#[test]
fn header_subscription_and_room_id_caps() {
    let server = ServerProcess::start(&[
        "--max-header-bytes",
        "32",
        "--max-subscriptions-per-conn",
        "1",
        "--max-room-id-len",
        "3",
        "--sync",
    ]);
    let mut client = server.connect();
    client.send_binary(upload_frame(
        "long-header-id",
        "some_table",
        &arrow_ipc_table(&[1], &["a"]),
    ));
    assert_eq!(
        client.recv_json()["error"],
        "max_header_bytes exceeded (limit 32)"
    );
    client.request(json!({"type":"subscribe","channel":"a"}));
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":"b"}))["error"],
        "max_subscriptions_per_conn exceeded (limit 1)"
    );
    assert_eq!(
        client.request(json!({"type":"crdt-join","roomId":"abcd"}))["error"],
        "max_room_id_len exceeded (limit 3)"
    );
}
