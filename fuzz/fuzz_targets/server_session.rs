//! Random sequences of inputs to the state machine: it must never panic (a panic would
//! poison it) and must never send to a connection it closed.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use duckwire_core::{
    Config, ConnId, ConnectionInfo, Effect, Frame, Limits, Millis, QueryHandle, QueryOutcome,
    Server, TimerKey,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Open { conn: u8, token: bool },
    Text { conn: u8, text: String },
    Message { conn: u8, kind: u8, field: String },
    Binary { conn: u8, bytes: Vec<u8> },
    Done { handle: u8, outcome: u8 },
    Upload { handle: u8, ok: bool },
    Loaded { room: u8, bytes: Option<Vec<u8>> },
    Persisted { room: u8, version: u8, ok: bool },
    Timer { room: u8, which: u8, advance: u16 },
    Sent { conn: u8, bytes: u16 },
    Closed { conn: u8 },
    Shutdown,
}

const KINDS: [&str; 11] = [
    "auth", "arrow", "json", "exec", "cancel", "subscribe", "unsubscribe", "notify",
    "crdt-join", "crdt-snapshot", "bogus",
];

fuzz_target!(|inputs: Vec<Input>| {
    let config = Config {
        auth_token: Some("t".into()),
        sync_enabled: true,
        allow_client_snapshots: true,
        limits: Limits { max_outbound_bytes_per_conn: Some(4096), ..Limits::default() },
        ..Config::default()
    };
    let mut server = Server::new(config, [1; 16]);
    let mut closed = std::collections::BTreeSet::new();
    let mut now = 0u64;
    for input in inputs {
        let result = match input {
            Input::Open { conn, token } => {
                closed.remove(&conn);
                let info = ConnectionInfo { url_token: token.then(|| "t".into()), ..Default::default() };
                server.handle_open(ConnId(conn.into()), info, Millis(now))
            }
            Input::Text { conn, text } => server.handle_frame(ConnId(conn.into()), Frame::Text(text), Millis(now)),
            Input::Message { conn, kind, field } => {
                let kind = KINDS[kind as usize % KINDS.len()];
                let text = format!(
                    r#"{{"type":"{kind}","sql":{field:?},"queryId":{field:?},"token":{field:?},"channel":{field:?},"roomId":{field:?},"data":{field:?}}}"#
                );
                server.handle_frame(ConnId(conn.into()), Frame::Text(text), Millis(now))
            }
            Input::Binary { conn, bytes } => {
                server.handle_frame(ConnId(conn.into()), Frame::Binary(Bytes::from(bytes)), Millis(now))
            }
            Input::Done { handle, outcome } => {
                let outcome = match outcome % 5 {
                    0 => QueryOutcome::Json("[]".into()),
                    1 => QueryOutcome::NoResultSet,
                    2 => QueryOutcome::Failed("e".into()),
                    3 => QueryOutcome::Cancelled,
                    _ => QueryOutcome::Arrow(Bytes::from_static(b"x")),
                };
                server.handle_query_done(QueryHandle(handle.into()), outcome, handle % 2 == 0, Millis(now))
            }
            Input::Upload { handle, ok } => {
                let result = if ok { Ok(()) } else { Err("e".into()) };
                server.handle_upload_done(QueryHandle(handle.into()), result, Millis(now))
            }
            Input::Loaded { room, bytes } => {
                server.handle_snapshot_loaded(&format!("r{}", room % 4), Ok(bytes), Millis(now))
            }
            Input::Persisted { room, version, ok } => {
                let result = if ok { Ok(()) } else { Err("e".into()) };
                server.handle_snapshot_persisted(&format!("r{}", room % 4), version.into(), result, Millis(now))
            }
            Input::Timer { room, which, advance } => {
                now += u64::from(advance);
                let room = format!("r{}", room % 4);
                let key = match which % 4 {
                    0 => TimerKey::RoomDebounce(room),
                    1 => TimerKey::RoomMaxLatency(room),
                    2 => TimerKey::RoomEvict(room),
                    _ => TimerKey::AuthDeadline(ConnId(u64::from(which))),
                };
                server.handle_timer(key, Millis(now))
            }
            Input::Sent { conn, bytes } => server.handle_sent(ConnId(conn.into()), bytes.into()),
            Input::Closed { conn } => server.handle_closed(ConnId(conn.into()), Millis(now)),
            Input::Shutdown => server.handle_shutdown(Millis(now)),
        };
        assert!(result.is_ok(), "the machine was poisoned");
        while let Some(effect) = server.poll_effect() {
            match effect {
                Effect::Send { conn, .. } => {
                    assert!(!closed.contains(&(conn.0 as u8)), "sent to a closed connection")
                }
                Effect::Close { conn, .. } => {
                    closed.insert(conn.0 as u8);
                }
                _ => {}
            }
        }
    }
});
