//! PROTOCOL §4: per-connection authentication.

use duckwire_tests::*;
use serde_json::json;

#[test]
fn messages_before_auth_are_refused_then_auth_lets_the_connection_in() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"json","sql":"create table leaked(x int)","queryId":"q"})),
        json!({"type":"error","queryId":"q","error":"unauthorized"})
    );
    assert_eq!(
        client.request(json!({"type":"auth","token":"s3cret"})),
        json!({"type":"authAck"})
    );
    // The refused statement never ran.
    let reply = client.request(json!({"type":"json","sql":"select count(*) as n from information_schema.tables where table_name = 'leaked'","queryId":"c"}));
    assert_eq!(reply["data"], "[{\"n\":0}]");
}

#[test]
fn three_wrong_tokens_close_the_connection_with_1008() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut client = server.connect();
    for _ in 0..3 {
        assert_eq!(
            client.request(json!({"type":"auth","token":"nope"})),
            json!({"type":"error","error":"unauthorized"})
        );
    }
    assert_eq!(client.recv_close(), Some(1008));
}

#[test]
fn bearer_header_or_url_token_authenticate_at_upgrade() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut by_header = Client::connect(&server.url("/"), &[("Authorization", "Bearer s3cret")]);
    assert_eq!(
        by_header.request(json!({"type":"exec","sql":"select 1","queryId":1}))["type"],
        "ok"
    );
    let mut by_url = Client::connect(&server.url("/?roomId=r&token=s3cret"), &[]);
    assert_eq!(
        by_url.request(json!({"type":"exec","sql":"select 1","queryId":1}))["type"],
        "ok"
    );
    let mut wrong = Client::connect(&server.url("/?token=wrong"), &[]);
    assert_eq!(
        wrong.request(json!({"type":"exec","sql":"select 1","queryId":1}))["error"],
        "unauthorized"
    );
}

#[test]
fn connections_that_never_authenticate_are_closed_at_the_deadline() {
    let server = ServerProcess::start(&["--auth-token", "s3cret", "--auth-timeout-ms", "300"]);
    let mut idle = server.connect();
    let mut prompt = server.connect();
    assert_eq!(
        prompt.request(json!({"type":"auth","token":"s3cret"})),
        json!({"type":"authAck"})
    );
    assert_eq!(idle.recv_close(), Some(1008));
    // The one that authenticated in time is unaffected.
    assert_eq!(
        prompt.request(json!({"type":"exec","sql":"select 1","queryId":1}))["type"],
        "ok"
    );
}

#[test]
fn env_token_is_used_when_the_flag_is_absent() {
    let server = ServerProcess::start_with_env(&[], &[("DUCKWIRE_AUTH_TOKEN", "from-env")]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"exec","sql":"select 1","queryId":1}))["error"],
        "unauthorized"
    );
    assert_eq!(
        client.request(json!({"type":"auth","token":"from-env"})),
        json!({"type":"authAck"})
    );
}

#[test]
fn authentication_is_per_connection_not_per_address() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut first = server.connect();
    assert_eq!(
        first.request(json!({"type":"auth","token":"s3cret"})),
        json!({"type":"authAck"})
    );
    // Same address (127.0.0.1), new connection: still needs its own token.
    let mut second = server.connect();
    assert_eq!(
        second.request(json!({"type":"exec","sql":"select 1","queryId":1}))["error"],
        "unauthorized"
    );
}

#[test]
fn without_a_token_auth_is_acked_for_compatibility() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"auth","token":"anything"})),
        json!({"type":"authAck"})
    );
}

/// A masked client text frame (RFC 6455 §5.2), for a raw-socket peer.
fn masked_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn a_peer_that_ignores_our_close_frame_is_disconnected() {
    use std::io::{Read, Write};
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut socket = std::net::TcpStream::connect(&server.addr).unwrap();
    socket.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    write!(
        socket,
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    for _ in 0..3 {
        socket
            .write_all(&masked_text_frame(r#"{"type":"auth","token":"bad"}"#))
            .unwrap();
    }
    // Read the 101, three errors and the close frame, never answering: the server must end
    // the connection itself (EOF) rather than wait for us forever.
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the socket open: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"));
    assert_eq!(text.matches("unauthorized").count(), 3);
    // The close frame (opcode 0x8) with code 1008 (0x03F0).
    assert!(received
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xF0));
}
