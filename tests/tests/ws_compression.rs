//! permessage-deflate on the WebSocket doors (RFC 7692, PROTOCOL §7 "Compression"): what is
//! negotiated with whom, replies compressed and read back whole, compressed queries read, and
//! frames that break the rules or inflate past the cap closed without the server growing.

use std::path::PathBuf;
use std::process::Command;

use duckwire_core::websocket::{MessageDeflater, OpCode, DEFLATE_RESPONSE};
use duckwire_tests::deflate_client::{DeflateClient, Received, BROWSER_OFFER};
use duckwire_tests::*;
use serde_json::{json, Value};

const ROWS_SQL: &str = "select range as i, 'row ' || range as label from range(20000)";

fn json_rows(client: &mut DeflateClient, sql: &str, id: &str) -> Vec<Value> {
    let query = json!({"type":"json","sql":sql,"queryId":id}).to_string();
    client.send_text(&query).unwrap();
    let reply: Value = serde_json::from_str(&client.recv().unwrap().text()).unwrap();
    assert_eq!(reply["type"], "json", "{reply}");
    serde_json::from_str(reply["data"].as_str().unwrap()).unwrap()
}

#[test]
fn with_compression_on_a_browser_offer_is_accepted_and_replies_are_compressed() {
    let server = ServerProcess::start(&["--ws-compression", "on"]);
    let mut client = DeflateClient::connect(&server.url("/"), Some(BROWSER_OFFER)).unwrap();
    assert_eq!(client.extensions.as_deref(), Some(DEFLATE_RESPONSE));
    // The query goes compressed (the client compresses everything once negotiated).
    let rows = json_rows(&mut client, ROWS_SQL, "j");
    assert_eq!(rows.len(), 20000);
    assert_eq!(rows[19999], json!({"i":19999,"label":"row 19999"}));
    // An Arrow reply large enough to be compressed in parts on the blocking pool.
    let query = json!({"type":"arrow","sql":"select range as i from range(500000)","queryId":"a"});
    client.send_text(&query.to_string()).unwrap();
    let frame = client.recv().unwrap().binary();
    let (header, ipc) = split_arrow_frame(&frame);
    assert_eq!(header["queryId"], "a");
    let rows: usize = read_ipc(ipc).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 500_000);
    assert_eq!(server.metric("duckwire_ws_deflate_connections_total"), 1.0);
    let before = server.metric("duckwire_ws_deflated_bytes_total");
    let after = server.metric("duckwire_ws_deflated_wire_bytes_total");
    assert!(before > 4_000_000.0, "{before}");
    assert!(after * 3.0 < before, "{after} of {before}");
}

#[test]
fn auto_compresses_only_for_peers_off_this_machine_and_off_never() {
    for flags in [&[][..], &["--ws-compression", "off"][..]] {
        let server = ServerProcess::start(flags);
        let mut client = DeflateClient::connect(&server.url("/"), Some(BROWSER_OFFER)).unwrap();
        assert_eq!(client.extensions, None, "{flags:?}");
        assert_eq!(json_rows(&mut client, ROWS_SQL, "j").len(), 20000);
        assert_eq!(server.metric("duckwire_ws_deflate_connections_total"), 0.0);
    }
}

#[test]
fn the_mosaic_socket_negotiates_it_too() {
    let server = ServerProcess::start(&["--ws-compression", "on"]);
    let mut client = DeflateClient::connect(&server.url("/mosaic"), Some(BROWSER_OFFER)).unwrap();
    assert!(client.deflate());
    let query = json!({"type":"json","sql":ROWS_SQL}).to_string();
    client.send_text(&query).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&client.recv().unwrap().text()).unwrap();
    assert_eq!(rows.len(), 20000);
}

#[test]
fn an_offer_the_server_cannot_honour_is_declined_and_the_connection_works_uncompressed() {
    let server = ServerProcess::start(&["--ws-compression", "on"]);
    let offer = "permessage-deflate; server_max_window_bits=9";
    let mut client = DeflateClient::connect(&server.url("/"), Some(offer)).unwrap();
    assert_eq!(client.extensions, None);
    assert_eq!(
        json_rows(&mut client, "select 1 as x", "j"),
        vec![json!({"x":1})]
    );
}

#[test]
fn a_decompression_bomb_closes_with_1009_and_the_server_does_not_grow() {
    let cap = 1 << 20;
    let server = ServerProcess::start(&[
        "--ws-compression",
        "on",
        "--max-frame-bytes",
        &cap.to_string(),
    ]);
    let mut warm = DeflateClient::connect(&server.url("/"), Some(BROWSER_OFFER)).unwrap();
    assert_eq!(json_rows(&mut warm, "select 1 as x", "w").len(), 1);
    let before = server.anonymous_rss_bytes();
    // 512 MiB of zeros: about 500 KiB on the wire, under the cap; inflated, 512× over it.
    let mut deflater = MessageDeflater::new(9);
    let zeros = vec![0u8; 8 << 20];
    let mut bomb = Vec::new();
    for i in 0..64 {
        bomb.extend(deflater.part(&zeros, i == 63).unwrap());
    }
    assert!(bomb.len() < cap, "{}", bomb.len());
    let mut client = DeflateClient::connect(&server.url("/"), Some(BROWSER_OFFER)).unwrap();
    client
        .send_frame(OpCode::Binary, true, true, &bomb)
        .unwrap();
    assert!(matches!(
        client.recv().unwrap(),
        Received::Closed(Some(1009))
    ));
    let grown = server.anonymous_rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "the server grew by {grown} bytes");
    // The others are served on.
    assert_eq!(
        json_rows(&mut warm, "select 2 as x", "w2"),
        vec![json!({"x":2})]
    );
}

#[test]
fn frames_that_break_the_protocol_close_with_1002_and_bad_text_with_1007() {
    let server = ServerProcess::start(&[]);
    // RSV1 without having negotiated deflate.
    let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
    client.send_frame(OpCode::Text, true, true, b"{}").unwrap();
    assert!(matches!(
        client.recv().unwrap(),
        Received::Closed(Some(1002))
    ));
    // A continuation with no message to continue.
    let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
    client
        .send_frame(OpCode::Continuation, true, false, b"x")
        .unwrap();
    assert!(matches!(
        client.recv().unwrap(),
        Received::Closed(Some(1002))
    ));
    let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
    client
        .send_frame(OpCode::Text, true, false, &[0x7B, 0xC3])
        .unwrap();
    assert!(matches!(
        client.recv().unwrap(),
        Received::Closed(Some(1007))
    ));
}

#[test]
fn pings_are_answered_and_a_client_close_is_echoed() {
    let server = ServerProcess::start(&[]);
    let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
    client.send_frame(OpCode::Ping, true, false, b"hi").unwrap();
    client
        .send_frame(OpCode::Close, true, false, &[0x03, 0xE8])
        .unwrap();
    assert!(matches!(client.recv().unwrap(), Received::Pong(p) if &p[..] == b"hi"));
    assert!(matches!(
        client.recv().unwrap(),
        Received::Closed(Some(1000))
    ));
}

/// The Python of a venv holding `websockets` (`DUCKWIRE_PY_WEBSOCKETS`, as .ci/run sets).
fn python_with_websockets() -> Option<PathBuf> {
    python_in_venv("DUCKWIRE_PY_WEBSOCKETS", "py-websockets", "websockets")
}

#[test]
fn a_python_websockets_client_negotiates_compression_and_reads_results() {
    let Some(python) = python_with_websockets() else {
        return;
    };
    let server = ServerProcess::start(&["--ws-compression", "on"]);
    let script = r#"
import json, sys
from websockets.sync.client import connect
with connect(sys.argv[1], compression="deflate", max_size=None) as ws:
    print(ws.response.headers.get("Sec-WebSocket-Extensions"))
    ws.send(json.dumps({"type": "json", "queryId": "p", "sql": sys.argv[2]}))
    reply = json.loads(ws.recv())
    rows = json.loads(reply["data"])
    print(len(rows), rows[-1]["label"])
"#;
    let output = Command::new(python)
        .args(["-c", script, &server.url("/"), ROWS_SQL])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, [DEFLATE_RESPONSE, "20000 row 19999"]);
    assert!(server.metric("duckwire_ws_deflated_bytes_total") > 0.0);
}

#[test]
fn a_peer_that_pings_without_reading_gets_pongs_for_its_latest_pings_only() {
    let server = ServerProcess::start(&[]);
    let mut client = DeflateClient::connect(&server.url("/"), None).unwrap();
    let before = server.anonymous_rss_bytes();
    const PINGS: u32 = 400_000;
    for i in 0..PINGS {
        let mut payload = [0u8; 125];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        client
            .send_frame(OpCode::Ping, true, false, &payload)
            .unwrap();
    }
    // 50 MB of pings sent while nothing was read: the pongs did not queue up in the server.
    let grown = server.anonymous_rss_bytes().saturating_sub(before);
    assert!(grown < 16 << 20, "the server grew by {grown} bytes");
    let query = json!({"type":"json","sql":"select 1 as x","queryId":"after"}).to_string();
    client.send_text(&query).unwrap();
    let mut pongs = 0u32;
    loop {
        match client.recv().unwrap() {
            Received::Pong(_) => pongs += 1,
            Received::Message(_) => break,
            Received::Closed(code) => panic!("closed: {code:?}"),
        }
    }
    assert!(pongs < PINGS / 2, "{pongs} pongs for {PINGS} pings");
}
