//! Property tests over random sessions of several connections. Invariants:
//! (a) every accepted query gets exactly one terminal reply unless its connection closed;
//! (b) nothing meant for connection A reaches B; (c) an unauthenticated connection never
//! causes a run/upload/publish/join effect; (d) no cap is exceeded; (e) every server frame
//! decodes; (f) a room's state equals the merge of the valid updates it accepted.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::harness::{decode_server_frame, loro_update};
use crate::{
    Config, ConnId, ConnectionInfo, Effect, Frame, Limits, Millis, QueryHandle, QueryOutcome,
    Server, TimerKey,
};

const CONNS: u64 = 4;
const TOKEN: &str = "tok";

#[derive(Debug, Clone)]
enum Op {
    Open {
        conn: u64,
        url_token: bool,
    },
    Close(u64),
    Auth {
        conn: u64,
        right: bool,
    },
    Query {
        conn: u64,
        kind: u8,
        with_id: bool,
    },
    Upload {
        conn: u64,
    },
    Cancel {
        conn: u64,
        nth: usize,
    },
    Finish {
        nth: usize,
        outcome: u8,
    },
    Subscribe {
        conn: u64,
        channel: u8,
    },
    Unsubscribe {
        conn: u64,
        channel: u8,
    },
    Notify {
        conn: u64,
        channel: u8,
    },
    Join {
        conn: u64,
        room: u8,
    },
    Loaded {
        room: u8,
    },
    Update {
        conn: u64,
        key: u8,
        value: i64,
        corrupt: bool,
    },
    Garbage {
        conn: u64,
        bytes: Vec<u8>,
    },
    Written {
        conn: u64,
    },
    Tick {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..CONNS;
    prop_oneof![
        (conn.clone(), any::<bool>()).prop_map(|(conn, url_token)| Op::Open { conn, url_token }),
        conn.clone().prop_map(Op::Close),
        (conn.clone(), any::<bool>()).prop_map(|(conn, right)| Op::Auth { conn, right }),
        (conn.clone(), 0..3u8, any::<bool>()).prop_map(|(conn, kind, with_id)| Op::Query {
            conn,
            kind,
            with_id
        }),
        conn.clone().prop_map(|conn| Op::Upload { conn }),
        (conn.clone(), 0..4usize).prop_map(|(conn, nth)| Op::Cancel { conn, nth }),
        (0..4usize, 0..5u8).prop_map(|(nth, outcome)| Op::Finish { nth, outcome }),
        (conn.clone(), 0..3u8).prop_map(|(conn, channel)| Op::Subscribe { conn, channel }),
        (conn.clone(), 0..3u8).prop_map(|(conn, channel)| Op::Unsubscribe { conn, channel }),
        (conn.clone(), 0..3u8).prop_map(|(conn, channel)| Op::Notify { conn, channel }),
        (conn.clone(), 0..2u8).prop_map(|(conn, room)| Op::Join { conn, room }),
        (0..2u8).prop_map(|room| Op::Loaded { room }),
        (conn.clone(), 0..3u8, any::<i64>(), any::<bool>()).prop_map(
            |(conn, key, value, corrupt)| Op::Update {
                conn,
                key,
                value,
                corrupt
            }
        ),
        (conn.clone(), proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(conn, bytes)| Op::Garbage { conn, bytes }),
        conn.prop_map(|conn| Op::Written { conn }),
        (0..3000u64).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn limits() -> Limits {
    Limits {
        max_inflight_per_conn: Some(3),
        max_subscriptions_per_conn: Some(2),
        max_connections: Some(3),
        max_outbound_bytes_per_conn: Some(2048),
        ..Limits::default()
    }
}

/// What the test knows from watching effects only.
#[derive(Default)]
struct Model {
    open: BTreeSet<u64>,
    authenticated: BTreeSet<u64>,
    /// Query ids each connection sent and the server accepted (unique across the run).
    accepted: BTreeMap<String, (u64, QueryHandle)>,
    sent_ids: BTreeMap<String, u64>,
    terminal_replies: BTreeMap<String, usize>,
    /// Handles running, with their Arrow frame header (empty for uploads).
    running: Vec<(QueryHandle, Bytes)>,
    subscriptions: BTreeSet<(u64, String)>,
    /// Rooms each connection has been told it joined (cleared on close or re-join).
    joined: BTreeMap<u64, String>,
    pending_join: BTreeMap<u64, String>,
    loading: BTreeSet<String>,
    /// The merge of every update a room acked.
    expected: BTreeMap<String, loro::LoroDoc>,
    outbound: BTreeMap<u64, usize>,
    timers: BTreeMap<TimerKey, u64>,
    next_id: u64,
    /// The id of the upload frame just sent.
    last_upload_id: Option<String>,
}

struct Run {
    server: Server,
    model: Model,
    now: u64,
}

impl Run {
    fn new() -> Self {
        let config = Config {
            limits: limits(),
            auth_token: Some(TOKEN.into()),
            sync_enabled: true,
            allow_client_snapshots: true,
            ..Config::default()
        };
        Run {
            server: Server::new(config, [3; 16]),
            model: Model::default(),
            now: 0,
        }
    }

    fn text(&mut self, conn: u64, value: Value) {
        self.frame(conn, Frame::Text(value.to_string()));
    }

    fn frame(&mut self, conn: u64, frame: Frame) {
        self.server
            .handle_frame(ConnId(conn), frame, Millis(self.now))
            .unwrap();
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let acting = match op {
            Op::Open { conn, .. }
            | Op::Close(conn)
            | Op::Auth { conn, .. }
            | Op::Query { conn, .. }
            | Op::Upload { conn }
            | Op::Cancel { conn, .. }
            | Op::Subscribe { conn, .. }
            | Op::Unsubscribe { conn, .. }
            | Op::Notify { conn, .. }
            | Op::Join { conn, .. }
            | Op::Update { conn, .. }
            | Op::Garbage { conn, .. }
            | Op::Written { conn } => Some(*conn),
            _ => None,
        };
        let was_authenticated = acting.is_none_or(|c| self.model.authenticated.contains(&c));
        let mut pending_update: Option<(u64, Vec<u8>)> = None;
        match op.clone() {
            Op::Open { conn, url_token } => {
                if self.model.open.contains(&conn) {
                    return Ok(());
                }
                let info = ConnectionInfo {
                    url_token: url_token.then(|| TOKEN.to_string()),
                    ..ConnectionInfo::default()
                };
                self.server
                    .handle_open(ConnId(conn), info, Millis(self.now))
                    .unwrap();
                self.model.open.insert(conn);
                if url_token && self.server.is_authenticated(ConnId(conn)) {
                    self.model.authenticated.insert(conn);
                }
            }
            Op::Close(conn) => {
                self.server
                    .handle_closed(ConnId(conn), Millis(self.now))
                    .unwrap();
                self.forget(conn);
            }
            Op::Auth { conn, right } => {
                let token = if right { TOKEN } else { "wrong" };
                self.text(conn, json!({"type":"auth","token":token}));
            }
            Op::Query {
                conn,
                kind,
                with_id,
            } => {
                let kind = ["arrow", "json", "exec"][kind as usize];
                let mut message = json!({"type":kind,"sql":"select 1"});
                if with_id {
                    self.model.next_id += 1;
                    let id = format!("q{}", self.model.next_id);
                    self.model.sent_ids.insert(id.clone(), conn);
                    message["queryId"] = json!(id);
                }
                self.text(conn, message);
            }
            Op::Upload { conn } => {
                self.model.next_id += 1;
                let id = format!("q{}", self.model.next_id);
                self.model.sent_ids.insert(id.clone(), conn);
                self.model.last_upload_id = Some(id.clone());
                let header = json!({"type":"uploadArrow","queryId":id,"tableName":"t"}).to_string();
                let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
                bytes.extend_from_slice(header.as_bytes());
                bytes.extend_from_slice(b"ipc");
                self.frame(conn, Frame::Binary(Bytes::from(bytes)));
            }
            Op::Cancel { conn, nth } => {
                let ids: Vec<String> = self
                    .model
                    .accepted
                    .iter()
                    .filter(|(_, (c, _))| *c == conn)
                    .map(|(id, _)| id.clone())
                    .collect();
                if let Some(id) = ids.get(nth % ids.len().max(1)) {
                    self.text(conn, json!({"type":"cancel","queryId":id}));
                }
            }
            Op::Finish { nth, outcome } => {
                if self.model.running.is_empty() {
                    return Ok(());
                }
                let (handle, header) = self.model.running.remove(nth % self.model.running.len());
                let outcome = match outcome {
                    0 => QueryOutcome::Json("[]".into()),
                    1 => QueryOutcome::NoResultSet,
                    2 => QueryOutcome::Failed("boom".into()),
                    3 => QueryOutcome::Cancelled,
                    _ => QueryOutcome::Arrow([header.as_ref(), b"ipc"].concat().into()),
                };
                if header.is_empty() {
                    let result = if matches!(outcome, QueryOutcome::Failed(_)) {
                        Err("boom".into())
                    } else {
                        Ok(())
                    };
                    self.server
                        .handle_upload_done(handle, result, Millis(self.now))
                        .unwrap();
                } else {
                    self.server
                        .handle_query_done(handle, outcome, false, Millis(self.now))
                        .unwrap();
                }
            }
            Op::Subscribe { conn, channel } => self.text(
                conn,
                json!({"type":"subscribe","channel":format!("c{channel}")}),
            ),
            Op::Unsubscribe { conn, channel } => self.text(
                conn,
                json!({"type":"unsubscribe","channel":format!("c{channel}")}),
            ),
            Op::Notify { conn, channel } => self.text(
                conn,
                json!({"type":"notify","channel":format!("c{channel}"),"payload":conn}),
            ),
            Op::Join { conn, room } => {
                let room = format!("r{room}");
                if self.model.open.contains(&conn) && was_authenticated {
                    self.model.joined.remove(&conn);
                    self.model.pending_join.insert(conn, room.clone());
                }
                self.text(conn, json!({"type":"crdt-join","roomId":room}));
            }
            Op::Loaded { room } => {
                let room = format!("r{room}");
                if self.model.loading.remove(&room) {
                    self.server
                        .handle_snapshot_loaded(&room, Ok(None), Millis(self.now))
                        .unwrap();
                }
            }
            Op::Update {
                conn,
                key,
                value,
                corrupt,
            } => {
                let mut bytes =
                    loro_update(1000 + conn * 10 + key as u64, &format!("k{key}"), value);
                if corrupt {
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0x5a;
                    bytes.truncate(bytes.len() - 3);
                }
                pending_update = Some((conn, bytes.clone()));
                self.frame(conn, Frame::Binary(Bytes::from(bytes)));
            }
            Op::Garbage { conn, bytes } => self.frame(conn, Frame::Binary(Bytes::from(bytes))),
            Op::Written { conn } => {
                let bytes = self.model.outbound.remove(&conn).unwrap_or(0);
                self.server.handle_sent(ConnId(conn), bytes).unwrap();
            }
            Op::Tick { ms } => {
                self.now += ms;
                let due: Vec<TimerKey> = self
                    .model
                    .timers
                    .iter()
                    .filter(|(_, at)| **at <= self.now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in due {
                    self.model.timers.remove(&key);
                    self.server.handle_timer(key, Millis(self.now)).unwrap();
                }
            }
        }
        let effects: Vec<Effect> = std::iter::from_fn(|| self.server.poll_effect()).collect();
        self.observe(acting, was_authenticated, &effects, pending_update)
    }

    fn forget(&mut self, conn: u64) {
        self.model.open.remove(&conn);
        self.model.authenticated.remove(&conn);
        self.model.joined.remove(&conn);
        self.model.pending_join.remove(&conn);
        self.model.subscriptions.retain(|(c, _)| *c != conn);
        self.model.outbound.remove(&conn);
        // A closed connection's queries owe no reply (and none may reach a later
        // connection that reuses the number: "sent to closed connection" guards that).
        self.model.accepted.retain(|_, (c, _)| *c != conn);
        self.model.sent_ids.retain(|_, c| *c != conn);
    }

    fn observe(
        &mut self,
        acting: Option<u64>,
        was_authenticated: bool,
        effects: &[Effect],
        update: Option<(u64, Vec<u8>)>,
    ) -> Result<(), TestCaseError> {
        for effect in effects {
            match effect {
                Effect::RunQuery(run) => {
                    prop_assert!(was_authenticated, "(c) run from unauthenticated {acting:?}");
                    let header: Value = serde_json::from_slice(&run.arrow_header[4..]).unwrap();
                    let id = header["queryId"].as_str().unwrap().to_string();
                    self.model.sent_ids.entry(id.clone()).or_insert(run.conn.0);
                    self.model.accepted.insert(id, (run.conn.0, run.query));
                    self.model
                        .running
                        .push((run.query, run.arrow_header.clone()));
                }
                Effect::UploadTable(upload) => {
                    prop_assert!(was_authenticated, "(c) upload from unauthenticated");
                    let id = self
                        .model
                        .last_upload_id
                        .clone()
                        .expect("an upload was sent");
                    self.model
                        .accepted
                        .insert(id, (upload.conn.0, upload.query));
                    self.model.running.push((upload.query, Bytes::new()));
                }
                Effect::LoadSnapshot { room_id } => {
                    prop_assert!(was_authenticated, "(c) join from unauthenticated");
                    self.model.loading.insert(room_id.clone());
                }
                Effect::Send { conn, frame } => {
                    self.observe_send(conn.0, frame, acting, was_authenticated)?
                }
                Effect::Close { conn, .. } => {
                    let conn = conn.0;
                    self.server
                        .handle_closed(ConnId(conn), Millis(self.now))
                        .unwrap();
                    self.forget(conn);
                    // Closing may itself produce effects (saves); they are checked too.
                    let more: Vec<Effect> =
                        std::iter::from_fn(|| self.server.poll_effect()).collect();
                    self.observe(None, true, &more, None)?;
                }
                Effect::SetTimer { key, at } => {
                    self.model.timers.insert(key.clone(), at.0);
                }
                Effect::CancelTimer { key } => {
                    self.model.timers.remove(key);
                }
                Effect::PersistSnapshot {
                    room_id, version, ..
                } => {
                    self.server
                        .handle_snapshot_persisted(room_id, *version, Ok(()), Millis(self.now))
                        .unwrap();
                    let more: Vec<Effect> =
                        std::iter::from_fn(|| self.server.poll_effect()).collect();
                    self.observe(None, true, &more, None)?;
                }
                Effect::Interrupt { .. } | Effect::InvalidateCache => {}
            }
        }
        // (f): an acked update is part of the expected merge.
        if let Some((conn, bytes)) = update {
            let acked = effects.iter().any(|e| match e {
                Effect::Send {
                    conn: c,
                    frame: Frame::Text(t),
                } if c.0 == conn => t.contains("crdt-update-ack"),
                _ => false,
            });
            if acked {
                let room = self
                    .model
                    .joined
                    .get(&conn)
                    .cloned()
                    .expect("acked only when joined");
                let doc = self.model.expected.entry(room).or_default();
                doc.import(&bytes).unwrap();
            }
        }
        // (d): caps.
        let caps = limits();
        prop_assert!(self.server.connection_count() <= caps.max_connections.unwrap());
        for conn in 0..CONNS {
            prop_assert!(
                self.server.inflight_count(ConnId(conn)) <= caps.max_inflight_per_conn.unwrap()
            );
            let subs = self
                .model
                .subscriptions
                .iter()
                .filter(|(c, _)| *c == conn)
                .count();
            prop_assert!(subs <= caps.max_subscriptions_per_conn.unwrap());
            let queued = self.model.outbound.get(&conn).copied().unwrap_or(0);
            prop_assert!(queued <= caps.max_outbound_bytes_per_conn.unwrap());
        }
        Ok(())
    }

    fn observe_send(
        &mut self,
        to: u64,
        frame: &Frame,
        acting: Option<u64>,
        was_authenticated: bool,
    ) -> Result<(), TestCaseError> {
        prop_assert!(
            self.model.open.contains(&to),
            "sent to closed connection {to}"
        );
        *self.model.outbound.entry(to).or_default() += frame.len();
        // (e)
        let decoded = decode_server_frame(frame).map_err(TestCaseError::fail)?;
        // (c): an unauthenticated sender only ever hears back itself.
        if !was_authenticated {
            prop_assert_eq!(Some(to), acting, "(c) publish from unauthenticated");
        }
        if let Some(id) = decoded.get("queryId").and_then(Value::as_str) {
            // (b): query replies go only to the connection that sent the id.
            if let Some(owner) = self.model.sent_ids.get(id) {
                prop_assert_eq!(*owner, to, "(b) reply for {} to {}", id, to);
            }
            let kind = decoded["type"].as_str().unwrap_or("");
            if matches!(kind, "ok" | "json" | "error" | "arrow" | "uploadAck")
                && self.model.accepted.contains_key(id)
            {
                let count = self
                    .model
                    .terminal_replies
                    .entry(id.to_string())
                    .or_default();
                *count += 1;
                prop_assert!(*count == 1, "(a) second terminal reply for {id}");
            }
        }
        match decoded["type"].as_str() {
            Some("notify") => {
                let channel = decoded["channel"].as_str().unwrap().to_string();
                let subscribed = self.model.subscriptions.contains(&(to, channel));
                prop_assert!(
                    subscribed || acting == Some(to),
                    "(b) notify to non-subscriber {to}"
                );
            }
            Some("subscribed") => {
                self.model
                    .subscriptions
                    .insert((to, decoded["channel"].as_str().unwrap().to_string()));
            }
            Some("unsubscribed") => {
                self.model
                    .subscriptions
                    .remove(&(to, decoded["channel"].as_str().unwrap().to_string()));
            }
            Some("authAck") => {
                self.model.authenticated.insert(to);
            }
            Some("crdt-joined") => {
                let room = decoded["roomId"].as_str().unwrap().to_string();
                self.model.pending_join.remove(&to);
                self.model.joined.insert(to, room);
            }
            Some("raw") => {
                // (b): CRDT updates reach only members of a room, never the sender.
                prop_assert!(
                    self.model.joined.contains_key(&to),
                    "(b) CRDT bytes to non-member {to}"
                );
                prop_assert!(acting != Some(to), "update echoed to its sender");
            }
            _ => {}
        }
        Ok(())
    }

    /// Finishes every query still running and checks (a) and (f).
    fn finish(mut self) -> Result<(), TestCaseError> {
        for (handle, header) in std::mem::take(&mut self.model.running) {
            if header.is_empty() {
                self.server
                    .handle_upload_done(handle, Ok(()), Millis(self.now))
                    .unwrap();
            } else {
                self.server
                    .handle_query_done(handle, QueryOutcome::NoResultSet, false, Millis(self.now))
                    .unwrap();
            }
            let effects: Vec<Effect> = std::iter::from_fn(|| self.server.poll_effect()).collect();
            self.observe(None, true, &effects, None)?;
        }
        for (id, (conn, _)) in &self.model.accepted {
            if self.model.open.contains(conn) {
                let replies = self.model.terminal_replies.get(id).copied().unwrap_or(0);
                prop_assert_eq!(
                    replies,
                    1,
                    "(a) query {} got {} terminal replies",
                    id,
                    replies
                );
            }
        }
        for (room, expected) in &self.model.expected {
            if let Some(snapshot) = self.server.room_snapshot(room) {
                let actual = loro::LoroDoc::new();
                actual.import(&snapshot).unwrap();
                prop_assert_eq!(
                    actual.get_deep_value(),
                    expected.get_deep_value(),
                    "(f) room {}",
                    room
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sessions_keep_every_invariant(ops in proptest::collection::vec(op(), 1..80)) {
        let mut run = Run::new();
        for op in &ops {
            run.apply(op)?;
        }
        run.finish()?;
    }
}
