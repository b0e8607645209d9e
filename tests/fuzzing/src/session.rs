//! The state-machine harness: sequences of inputs over several connections (frames built
//! from scratch or taken from recorded client traffic, query and upload completions,
//! snapshot loads and saves, timers, writes, closes, shutdown), with these invariants
//! checked after every step:
//! (a) every accepted query gets exactly one terminal reply unless its connection closed
//!     (checked when the run ends, after every query still running has finished);
//! (b) nothing meant for connection A ever reaches B;
//! (c) an unauthenticated connection never causes a run/upload/publish/join effect;
//! (d) no cap is exceeded;
//! (e) every server frame decodes with an independent decoder;
//! (f) a room's state equals the merge of the valid updates it accepted (checked at the end);
//! (g) cluster mode (runs whose first byte is ≥ 128): the broker is asked for a channel only
//!     when it is not already, released only when asked for, publications come only from an
//!     authenticated notify, and deliveries from the broker (its confirmations late, stale or
//!     repeated, its messages our own echo, another replica's, or garbage) reach only
//!     subscribers; rooms' changes are appended (and acknowledged only once appended, or
//!     answered an error when the append fails), other replicas' changes reach only the
//!     room's members and become part of the room, and a room leaves memory only without
//!     members;
//! plus: the machine never poisons itself and never sends to a closed connection.

use std::collections::{BTreeMap, BTreeSet};

use arbitrary::Unstructured;
use bytes::Bytes;
use serde_json::{json, Value};

use super::oracle::decode_server_frame;
use super::{byte, push_short_bytes, short_bytes};
use duckwire_core::{
    Config, ConnId, ConnectionInfo, Effect, Frame, JsonReplyHeader, JsonReplyWriter, Limits,
    Millis, QueryHandle, QueryOutcome, Server,
};

/// Connection numbers used (one more than `max_connections`, so the cap is reached).
pub const CONNS: u8 = 4;
/// The server's token: the one the recorded client traffic authenticates with.
pub const TOKEN: &str = "compat-secret";
/// At most this many inputs per run, so one run stays fast.
const MAX_OPS: usize = 400;

/// One input of a run. Field values are kept in range so that [`Op::write`] followed by
/// [`Op::read`] gives the same op back.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `credential`: 0 none, 1 right URL token, 2 wrong URL token, 3 right bearer header.
    Open {
        conn: u8,
        credential: u8,
    },
    Close {
        conn: u8,
    },
    Auth {
        conn: u8,
        right: bool,
    },
    /// `kind`: arrow, json, exec.
    Query {
        conn: u8,
        kind: u8,
        with_id: bool,
    },
    Upload {
        conn: u8,
    },
    /// Cancels the `nth` query the connection has in flight (or an unknown one).
    Cancel {
        conn: u8,
        nth: u8,
    },
    /// The executor finishes the `nth` running query with outcome `outcome % 7`; 6: its
    /// result passed the stream threshold and its reply starts (it keeps running).
    Finish {
        nth: u8,
        outcome: u8,
    },
    Subscribe {
        conn: u8,
        channel: u8,
    },
    Unsubscribe {
        conn: u8,
        channel: u8,
    },
    Notify {
        conn: u8,
        channel: u8,
    },
    Join {
        conn: u8,
        room: u8,
    },
    /// Storage answers a pending load: 0 what was persisted, 1 an error, 2 garbage,
    /// 3 a valid snapshot written by someone else.
    Loaded {
        room: u8,
        content: u8,
    },
    /// A valid Loro update (or a corrupted one).
    Update {
        conn: u8,
        key: u8,
        value: u8,
        corrupt: bool,
    },
    Binary {
        conn: u8,
        bytes: Vec<u8>,
    },
    Text {
        conn: u8,
        bytes: Vec<u8>,
    },
    /// A frame of recorded client traffic.
    Recorded {
        conn: u8,
        index: u8,
    },
    Written {
        conn: u8,
    },
    Tick {
        ms: u16,
    },
    /// `handle_timeout` called whether or not a timer is due (early or duplicate calls).
    /// The fields are kept so recorded corpora decode as before.
    FireTimer {
        which: u8,
        room: u8,
    },
    PersistMode {
        fail: bool,
    },
    Shutdown,
    /// The broker confirms the latest subscription request of a channel (`stale`: an
    /// earlier token instead).
    BrokerConfirm {
        channel: u8,
        stale: bool,
    },
    /// The broker delivers on a channel: 0 another replica's notify, 1 our own echo,
    /// 2 garbage, 3 another channel's notify.
    RemoteNotify {
        channel: u8,
        kind: u8,
    },
    /// Another replica's change of a room (`corrupt`: bytes Loro rejects).
    RemoteRoomUpdate {
        room: u8,
        key: u8,
        value: u8,
        corrupt: bool,
    },
    /// The broker connection came back.
    BrokerReconnected,
    /// The shared log of a room was delivered up to entry `entry`.
    SharedLogPosition {
        room: u8,
        entry: u8,
    },
}

const OP_KINDS: u8 = 26;

impl Op {
    pub fn read(u: &mut Unstructured<'_>) -> Op {
        let tag = byte(u) % OP_KINDS;
        let conn = |u: &mut Unstructured<'_>| byte(u) % CONNS;
        let flag = |u: &mut Unstructured<'_>| byte(u) % 2 == 1;
        match tag {
            0 => Op::Open {
                conn: conn(u),
                credential: byte(u) % 4,
            },
            1 => Op::Close { conn: conn(u) },
            2 => Op::Auth {
                conn: conn(u),
                right: flag(u),
            },
            3 => Op::Query {
                conn: conn(u),
                kind: byte(u) % 3,
                with_id: flag(u),
            },
            4 => Op::Upload { conn: conn(u) },
            5 => Op::Cancel {
                conn: conn(u),
                nth: byte(u),
            },
            6 => Op::Finish {
                nth: byte(u),
                outcome: byte(u) % 7,
            },
            7 => Op::Subscribe {
                conn: conn(u),
                channel: byte(u) % 3,
            },
            8 => Op::Unsubscribe {
                conn: conn(u),
                channel: byte(u) % 3,
            },
            9 => Op::Notify {
                conn: conn(u),
                channel: byte(u) % 3,
            },
            10 => Op::Join {
                conn: conn(u),
                room: byte(u) % 2,
            },
            11 => Op::Loaded {
                room: byte(u) % 2,
                content: byte(u) % 4,
            },
            12 => Op::Update {
                conn: conn(u),
                key: byte(u) % 3,
                value: byte(u),
                corrupt: flag(u),
            },
            13 => Op::Binary {
                conn: conn(u),
                bytes: short_bytes(u),
            },
            14 => Op::Text {
                conn: conn(u),
                bytes: short_bytes(u),
            },
            15 => Op::Recorded {
                conn: conn(u),
                index: byte(u),
            },
            16 => Op::Written { conn: conn(u) },
            17 => Op::Tick {
                ms: u16::from_be_bytes([byte(u), byte(u)]),
            },
            18 => Op::FireTimer {
                which: byte(u) % 4,
                room: byte(u) % 2,
            },
            19 => Op::PersistMode { fail: flag(u) },
            21 => Op::BrokerConfirm {
                channel: byte(u) % 3,
                stale: flag(u),
            },
            22 => Op::RemoteNotify {
                channel: byte(u) % 3,
                kind: byte(u) % 4,
            },
            23 => Op::RemoteRoomUpdate {
                room: byte(u) % 2,
                key: byte(u) % 3,
                value: byte(u),
                corrupt: flag(u),
            },
            24 => Op::BrokerReconnected,
            25 => Op::SharedLogPosition {
                room: byte(u) % 2,
                entry: byte(u),
            },
            _ => Op::Shutdown,
        }
    }

    fn acting_conn(&self) -> Option<u64> {
        match self {
            Op::Open { conn, .. }
            | Op::Close { conn }
            | Op::Auth { conn, .. }
            | Op::Query { conn, .. }
            | Op::Upload { conn }
            | Op::Cancel { conn, .. }
            | Op::Subscribe { conn, .. }
            | Op::Unsubscribe { conn, .. }
            | Op::Notify { conn, .. }
            | Op::Join { conn, .. }
            | Op::Update { conn, .. }
            | Op::Binary { conn, .. }
            | Op::Text { conn, .. }
            | Op::Recorded { conn, .. }
            | Op::Written { conn } => Some(u64::from(*conn)),
            _ => None,
        }
    }
}

impl super::Encode for Op {
    fn write(&self, out: &mut Vec<u8>) {
        let b = u8::from;
        match self {
            Op::Open { conn, credential } => out.extend([0, *conn, *credential]),
            Op::Close { conn } => out.extend([1, *conn]),
            Op::Auth { conn, right } => out.extend([2, *conn, b(*right)]),
            Op::Query {
                conn,
                kind,
                with_id,
            } => out.extend([3, *conn, *kind, b(*with_id)]),
            Op::Upload { conn } => out.extend([4, *conn]),
            Op::Cancel { conn, nth } => out.extend([5, *conn, *nth]),
            Op::Finish { nth, outcome } => out.extend([6, *nth, *outcome]),
            Op::Subscribe { conn, channel } => out.extend([7, *conn, *channel]),
            Op::Unsubscribe { conn, channel } => out.extend([8, *conn, *channel]),
            Op::Notify { conn, channel } => out.extend([9, *conn, *channel]),
            Op::Join { conn, room } => out.extend([10, *conn, *room]),
            Op::Loaded { room, content } => out.extend([11, *room, *content]),
            Op::Update {
                conn,
                key,
                value,
                corrupt,
            } => out.extend([12, *conn, *key, *value, b(*corrupt)]),
            Op::Binary { conn, bytes } => {
                out.extend([13, *conn]);
                push_short_bytes(out, bytes);
            }
            Op::Text { conn, bytes } => {
                out.extend([14, *conn]);
                push_short_bytes(out, bytes);
            }
            Op::Recorded { conn, index } => out.extend([15, *conn, *index]),
            Op::Written { conn } => out.extend([16, *conn]),
            Op::Tick { ms } => out.extend([[17].as_slice(), &ms.to_be_bytes()].concat()),
            Op::FireTimer { which, room } => out.extend([18, *which, *room]),
            Op::PersistMode { fail } => out.extend([19, b(*fail)]),
            Op::Shutdown => out.push(20),
            Op::BrokerConfirm { channel, stale } => out.extend([21, *channel, b(*stale)]),
            Op::RemoteNotify { channel, kind } => out.extend([22, *channel, *kind]),
            Op::RemoteRoomUpdate {
                room,
                key,
                value,
                corrupt,
            } => out.extend([23, *room, *key, *value, b(*corrupt)]),
            Op::BrokerReconnected => out.push(24),
            Op::SharedLogPosition { room, entry } => out.extend([25, *room, *entry]),
        }
    }
}

/// Decodes ops from bytes (at most `MAX_OPS`).
pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        ops.push(Op::read(&mut u));
    }
    ops
}

/// Runs the ops `data` encodes against a fresh machine and checks every invariant.
pub fn run(data: &[u8], traffic: &[Frame]) -> Result<(), String> {
    let cluster = data.first().is_some_and(|b| *b >= 128);
    let mut session = Session::new(traffic, cluster);
    for op in decode_ops(data) {
        session.apply(&op)?;
    }
    session.finish()
}

/// The caps of a run: small, so runs reach them.
pub fn limits() -> Limits {
    Limits {
        max_inflight_per_conn: Some(3),
        max_subscriptions_per_conn: Some(2),
        max_connections: Some(3),
        max_outbound_bytes_per_conn: Some(2048),
        max_inbound_bytes_per_conn: Some(160),
        max_inbound_bytes: Some(400),
        // Most changes take the path of a large one (checked off the thread).
        max_change_bytes_checked_inline: Some(48),
        ..Limits::default()
    }
}

struct Tracked {
    conn: u64,
    id: String,
    upload: bool,
    arrow_header: Bytes,
    json_header: Option<JsonReplyHeader>,
    terminal_replies: usize,
    connection_closed: bool,
    /// Its reply began as a stream (`SendStream`): only its end or a close may follow.
    streaming: bool,
}

/// What one step is, for judging the effects it caused.
#[derive(Clone, Default)]
struct Step {
    acting: Option<u64>,
    acting_authenticated: bool,
    finishing: Option<QueryHandle>,
    binary_sent: Option<Vec<u8>>,
    /// Where the core puts the acting connection's CRDT updates, asked before the step;
    /// used only when the sender is closed before its update could be acked.
    update_room: Option<String>,
}

/// The machine under test and everything the harness knows from watching its effects.
pub struct Session<'t> {
    server: Server,
    traffic: &'t [Frame],
    now: u64,
    open: BTreeSet<u64>,
    authenticated: BTreeSet<u64>,
    queries: BTreeMap<QueryHandle, Tracked>,
    /// The latest accepted query for each (connection, queryId JSON).
    live: BTreeMap<(u64, String), QueryHandle>,
    /// Accepted queries the executor has not finished yet.
    running: Vec<QueryHandle>,
    subscriptions: BTreeSet<(u64, String)>,
    joined: BTreeMap<u64, String>,
    loading: BTreeSet<String>,
    /// Snapshots storage holds (what PersistSnapshot saved).
    stored: BTreeMap<String, Vec<u8>>,
    /// The merge of every update each room acked.
    expected: BTreeMap<String, loro::LoroDoc>,
    outbound: BTreeMap<u64, usize>,
    next_id: u64,
    fail_persists: bool,
    /// Connections the core told to stop reading.
    paused: BTreeSet<u64>,
    largest_frame: usize,
    /// Cluster mode: broker subscriptions asked for, by channel, with every token used.
    broker: BTreeMap<String, Vec<u64>>,
    /// Publications the broker has not taken yet (taken at the next broker confirmation).
    publishing: Vec<u64>,
    cluster: bool,
    /// Peer ids for other replicas' changes (distinct from the clients' fresh peers).
    next_remote_peer: u64,
    /// Connections sent their room's snapshot in the effects being observed: binary frames
    /// after it are its catch-up (changes the snapshot leaves out), not a sender's relay.
    catching_up: BTreeSet<u64>,
    /// Cluster mode: other replicas' changes the core took, with their room: relayed to
    /// its members when a later job imports them, in whatever step that reports.
    remote_changes: BTreeMap<Vec<u8>, String>,
    /// Connections that sent a join since their last `crdt-joined`: they may have left
    /// their room.
    rejoining: BTreeSet<u64>,
}

/// This run's replica id, and another replica's.
const REPLICA: &str = "replica-a";
const OTHER_REPLICA: &str = "replica-b";

fn violation(what: impl Into<String>) -> Result<(), String> {
    Err(what.into())
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return violation(format!($($fmt)+));
        }
    };
}

/// A Loro update setting `key` to `value` in map "m", from a fresh peer.
pub fn loro_update(peer: u64, key: &str, value: i64) -> Vec<u8> {
    let doc = loro::LoroDoc::new();
    doc.set_peer_id(peer).expect("a valid peer id");
    doc.get_map("m").insert(key, value).expect("insert");
    doc.commit();
    doc.export(loro::ExportMode::all_updates()).expect("export")
}

impl<'t> Session<'t> {
    pub fn new(traffic: &'t [Frame], cluster: bool) -> Self {
        let config = Config {
            limits: limits(),
            auth_token: Some(TOKEN.into()),
            sync_enabled: true,
            allow_client_snapshots: true,
            replica_id: cluster.then(|| REPLICA.to_string()),
            // As the driver does: in cluster mode the room's shared log is appended to
            // before every acknowledgement.
            durable_room_log: cluster,
            ..Config::default()
        };
        Session {
            server: Server::new(config, [3; 16]),
            traffic,
            now: 0,
            open: BTreeSet::new(),
            authenticated: BTreeSet::new(),
            queries: BTreeMap::new(),
            live: BTreeMap::new(),
            running: Vec::new(),
            subscriptions: BTreeSet::new(),
            joined: BTreeMap::new(),
            loading: BTreeSet::new(),
            stored: BTreeMap::new(),
            expected: BTreeMap::new(),
            outbound: BTreeMap::new(),
            next_id: 0,
            fail_persists: false,
            paused: BTreeSet::new(),
            largest_frame: 0,
            broker: BTreeMap::new(),
            publishing: Vec::new(),
            cluster,
            next_remote_peer: 1 << 40,
            rejoining: BTreeSet::new(),
            catching_up: BTreeSet::new(),
            remote_changes: BTreeMap::new(),
        }
    }

    fn now(&self) -> Millis {
        Millis(self.now)
    }

    fn checked(result: Result<(), duckwire_core::ServerError>) -> Result<(), String> {
        result.map_err(|e| format!("the machine failed: {e}"))
    }

    fn frame(&mut self, conn: u64, frame: Frame, step: &mut Step) -> Result<(), String> {
        if self.paused.contains(&conn) {
            // A transport does not read a paused connection's socket.
            return Ok(());
        }
        self.largest_frame = self.largest_frame.max(frame.len());
        if let Frame::Binary(bytes) = &frame {
            step.binary_sent = Some(bytes.to_vec());
        }
        if let Frame::Text(text) = &frame {
            // A join of another room leaves the current one (if the core accepts it).
            let is_join = serde_json::from_str::<Value>(text)
                .is_ok_and(|v| v.get("type") == Some(&json!("crdt-join")));
            if is_join {
                self.rejoining.insert(conn);
            }
        }
        Self::checked(self.server.handle_frame(ConnId(conn), frame, self.now()))
    }

    fn text(&mut self, conn: u64, value: Value, step: &mut Step) -> Result<(), String> {
        self.frame(conn, Frame::Text(value.to_string()), step)
    }

    pub fn apply(&mut self, op: &Op) -> Result<(), String> {
        let acting = op.acting_conn();
        let mut step = Step {
            acting,
            acting_authenticated: acting.is_none_or(|c| self.authenticated.contains(&c)),
            update_room: acting.and_then(|c| self.server.update_room_of(ConnId(c))),
            ..Step::default()
        };
        match op.clone() {
            Op::Open { conn, credential } => {
                let conn = u64::from(conn);
                if self.open.contains(&conn) {
                    return Ok(());
                }
                let mut info = ConnectionInfo::default();
                match credential {
                    1 => info.url_token = Some(TOKEN.into()),
                    2 => info.url_token = Some("wrong".into()),
                    3 => info.bearer_token = Some(TOKEN.into()),
                    _ => {}
                }
                Self::checked(self.server.handle_open(ConnId(conn), info, self.now()))?;
                self.open.insert(conn);
                if matches!(credential, 1 | 3) {
                    self.authenticated.insert(conn);
                }
            }
            Op::Close { conn } => {
                let conn = u64::from(conn);
                Self::checked(self.server.handle_closed(ConnId(conn), self.now()))?;
                self.forget(conn);
            }
            Op::Auth { conn, right } => {
                let token = if right { TOKEN } else { "wrong" };
                self.text(conn.into(), json!({"type":"auth","token":token}), &mut step)?;
            }
            Op::Query {
                conn,
                kind,
                with_id,
            } => {
                let kind = ["arrow", "json", "exec"][usize::from(kind % 3)];
                let mut message = json!({"type":kind,"sql":"select 1"});
                if with_id {
                    self.next_id += 1;
                    message["queryId"] = json!(format!("q{}", self.next_id));
                }
                self.text(conn.into(), message, &mut step)?;
            }
            Op::Upload { conn } => {
                self.next_id += 1;
                let header = json!({"type":"uploadArrow","queryId":self.next_id,"tableName":"t"})
                    .to_string();
                let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
                bytes.extend_from_slice(header.as_bytes());
                bytes.extend_from_slice(b"ipc");
                self.frame(conn.into(), Frame::Binary(Bytes::from(bytes)), &mut step)?;
            }
            Op::Cancel { conn, nth } => {
                let conn = u64::from(conn);
                let ids: Vec<String> = self
                    .live
                    .keys()
                    .filter(|(c, _)| *c == conn)
                    .map(|(_, id)| id.clone())
                    .collect();
                let id = match ids.get(usize::from(nth)) {
                    Some(id) => serde_json::from_str(id).unwrap_or(Value::Null),
                    None => json!("unknown"),
                };
                self.text(conn, json!({"type":"cancel","queryId":id}), &mut step)?;
            }
            Op::Finish { nth, outcome } => {
                if self.running.is_empty() {
                    return Ok(());
                }
                let handle = self.running.remove(usize::from(nth) % self.running.len());
                step.finishing = Some(handle);
                let tracked = &self.queries[&handle];
                if tracked.upload {
                    let result = match outcome % 3 {
                        0 => duckwire_core::UploadOutcome::Written,
                        1 => duckwire_core::UploadOutcome::Failed("upload failed".into()),
                        _ => duckwire_core::UploadOutcome::Cancelled,
                    };
                    Self::checked(self.server.handle_upload_done(handle, result, self.now()))?;
                } else if outcome == 6 && !tracked.streaming {
                    // Its result passed the threshold: the reply starts, the query runs on.
                    self.running.push(handle);
                    Self::checked(self.server.handle_query_streaming(handle, self.now()))?;
                } else {
                    let outcome = match outcome % 6 {
                        // A stream ends whole, or with DuckDB's error, or interrupted.
                        n if tracked.streaming => match n % 3 {
                            0 => QueryOutcome::Streamed,
                            1 => QueryOutcome::Failed("boom".into()),
                            _ => QueryOutcome::Cancelled,
                        },
                        // Built by the executor's writer, escapes included.
                        0 => {
                            let Some(header) = &tracked.json_header else {
                                return Ok(());
                            };
                            let mut reply = JsonReplyWriter::new(header, 16);
                            reply.push_rows("[{\"q\":\"\\\"\\n\u{1}\"}");
                            reply.push_rows("]");
                            QueryOutcome::JsonReply(reply.finish())
                        }
                        1 => QueryOutcome::NoResultSet,
                        2 => QueryOutcome::Failed("boom".into()),
                        3 => QueryOutcome::Cancelled,
                        4 => QueryOutcome::Arrow(
                            [tracked.arrow_header.as_ref(), b"ipc"].concat().into(),
                        ),
                        _ => QueryOutcome::Json("x".repeat(3000)),
                    };
                    Self::checked(self.server.handle_query_done(
                        handle,
                        outcome,
                        false,
                        self.now(),
                    ))?;
                }
            }
            Op::BrokerConfirm { channel, stale } => {
                let channel = format!("c{channel}");
                let tokens = self.broker.get(&channel).cloned().unwrap_or_default();
                let token = match (tokens.last(), stale) {
                    (Some(last), false) => *last,
                    (Some(last), true) => last.wrapping_sub(1),
                    (None, _) => 1,
                };
                Self::checked(
                    self.server
                        .handle_broker_subscribed(&channel, token, self.now()),
                )?;
                // Redis took every publication waiting so far.
                for token in std::mem::take(&mut self.publishing) {
                    Self::checked(self.server.handle_notify_published(token))?;
                }
            }
            Op::RemoteNotify { channel, kind } => {
                let channel = format!("c{channel}");
                let message = match kind {
                    0 => json!({"origin":OTHER_REPLICA,"channel":channel,"payload":"remote"})
                        .to_string(),
                    1 => json!({"origin":REPLICA,"channel":channel,"payload":"echo"}).to_string(),
                    2 => "{\"origin\":".to_string(),
                    _ => json!({"origin":OTHER_REPLICA,"channel":"elsewhere","payload":1})
                        .to_string(),
                };
                self.server
                    .handle_remote_notify(&channel, message.as_bytes(), self.now())
                    .map_err(|e| format!("the machine failed: {e}"))?;
            }
            Op::RemoteRoomUpdate {
                room,
                key,
                value,
                corrupt,
            } => {
                let room = format!("r{room}");
                self.next_remote_peer += 1;
                let mut bytes =
                    loro_update(self.next_remote_peer, &format!("k{key}"), i64::from(value));
                if corrupt {
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x5a;
                }
                let imported = self
                    .server
                    .handle_remote_room_update(&room, Bytes::from(bytes.clone()), self.now())
                    .map_err(|e| format!("the machine failed: {e}"))?;
                // Taken for the room's next job, which imports it (or refuses it, as Loro
                // does here: the room's state is checked against this document at the end).
                if imported {
                    let _ = self
                        .expected
                        .entry(room.clone())
                        .or_default()
                        .import(&bytes);
                    self.remote_changes.insert(bytes, room);
                }
            }
            Op::BrokerReconnected => Self::checked(self.server.handle_broker_reconnected())?,
            Op::SharedLogPosition { room, entry } => Self::checked(
                self.server
                    .handle_shared_log_position(&format!("r{room}"), format!("{entry}-0")),
            )?,
            Op::Subscribe { conn, channel } => self.text(
                conn.into(),
                json!({"type":"subscribe","channel":format!("c{channel}")}),
                &mut step,
            )?,
            Op::Unsubscribe { conn, channel } => self.text(
                conn.into(),
                json!({"type":"unsubscribe","channel":format!("c{channel}")}),
                &mut step,
            )?,
            Op::Notify { conn, channel } => self.text(
                conn.into(),
                json!({"type":"notify","channel":format!("c{channel}"),"payload":conn}),
                &mut step,
            )?,
            Op::Join { conn, room } => self.text(
                conn.into(),
                json!({"type":"crdt-join","roomId":format!("r{room}")}),
                &mut step,
            )?,
            Op::Loaded { room, content } => {
                let room = format!("r{room}");
                if !self.loading.remove(&room) {
                    return Ok(());
                }
                let loaded: Result<Option<Vec<u8>>, String> = match content {
                    0 => Ok(self.stored.get(&room).cloned()),
                    1 => Err("storage failed".into()),
                    2 => Ok(Some(b"not a loro snapshot".to_vec())),
                    _ => Ok(Some(loro_update(7, "external", 1))),
                };
                Self::checked(self.server.handle_snapshot_loaded(
                    &room,
                    loaded.clone(),
                    self.now(),
                ))?;
                // The load's job (run on the spot) finishes the load.
                self.drain_and_observe(&step)?;
                // The room now holds exactly what was loaded, if the load was accepted.
                if self.server.room_snapshot(&room).is_some() {
                    let doc = loro::LoroDoc::new();
                    if let Ok(Some(bytes)) = &loaded {
                        let _ = doc.import(bytes);
                    }
                    self.expected.insert(room, doc);
                } else {
                    self.expected.remove(&room);
                }
            }
            Op::Update {
                conn,
                key,
                value,
                corrupt,
            } => {
                let mut bytes = loro_update(
                    1000 + u64::from(conn) * 10 + u64::from(key),
                    &format!("k{key}"),
                    i64::from(value),
                );
                if corrupt {
                    let middle = bytes.len() / 2;
                    bytes[middle] ^= 0x5a;
                    bytes.truncate(bytes.len() - 3);
                }
                self.frame(conn.into(), Frame::Binary(Bytes::from(bytes)), &mut step)?;
            }
            Op::Binary { conn, bytes } => {
                self.frame(conn.into(), Frame::Binary(Bytes::from(bytes)), &mut step)?
            }
            Op::Text { conn, bytes } => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                self.frame(conn.into(), Frame::Text(text), &mut step)?
            }
            Op::Recorded { conn, index } => {
                if self.traffic.is_empty() {
                    return Ok(());
                }
                let frame = self.traffic[usize::from(index) % self.traffic.len()].clone();
                self.frame(conn.into(), frame, &mut step)?;
            }
            Op::Written { conn } => {
                let conn = u64::from(conn);
                let bytes = self.outbound.remove(&conn).unwrap_or(0);
                Self::checked(self.server.handle_sent(ConnId(conn), bytes))?;
            }
            Op::Tick { ms } => {
                self.now += u64::from(ms);
                // As a driver does: fire what is due, until nothing more is.
                while self
                    .server
                    .poll_timeout()
                    .is_some_and(|at| at.0 <= self.now)
                {
                    Self::checked(self.server.handle_timeout(self.now()))?;
                    self.drain_and_observe(&step)?;
                }
            }
            Op::FireTimer { .. } => {
                // A driver that calls early, or twice: nothing not yet due may happen.
                Self::checked(self.server.handle_timeout(self.now()))?;
            }
            Op::PersistMode { fail } => self.fail_persists = fail,
            Op::Shutdown => Self::checked(self.server.handle_shutdown(self.now()))?,
        }
        self.drain_and_observe(&step)?;
        self.check_caps()
    }

    /// A report the driver gave the core (a save, a document job): what it causes is
    /// checked like any step's effects.
    fn observe_report(
        &mut self,
        reported: Result<(), duckwire_core::ServerError>,
    ) -> Result<(), String> {
        Self::checked(reported)?;
        self.drain_and_observe(&Step {
            acting_authenticated: true,
            ..Step::default()
        })
    }

    fn drain_and_observe(&mut self, step: &Step) -> Result<(), String> {
        let effects: Vec<Effect> = std::iter::from_fn(|| self.server.poll_effect()).collect();
        self.observe(step, &effects)
    }

    fn forget(&mut self, conn: u64) {
        self.open.remove(&conn);
        self.paused.remove(&conn);
        self.authenticated.remove(&conn);
        self.joined.remove(&conn);
        self.rejoining.remove(&conn);
        self.subscriptions.retain(|(c, _)| *c != conn);
        self.outbound.remove(&conn);
        // A closed connection's queries owe no reply, and none may reach a later
        // connection that reuses the number ("sent to a closed connection" guards that).
        for tracked in self.queries.values_mut() {
            if tracked.conn == conn {
                tracked.connection_closed = true;
            }
        }
        self.live.retain(|(c, _), _| *c != conn);
    }

    fn accept(&mut self, step: &Step, handle: QueryHandle, tracked: Tracked) -> Result<(), String> {
        ensure!(
            step.acting_authenticated,
            "(c) work accepted from unauthenticated connection {:?}",
            step.acting
        );
        ensure!(
            step.acting == Some(tracked.conn),
            "work for connection {} while {:?} acted",
            tracked.conn,
            step.acting
        );
        self.live.insert((tracked.conn, tracked.id.clone()), handle);
        self.queries.insert(handle, tracked);
        self.running.push(handle);
        Ok(())
    }

    fn observe(&mut self, step: &Step, effects: &[Effect]) -> Result<(), String> {
        self.catching_up.clear();
        let mut appends: Vec<(String, u64)> = Vec::new();
        let mut acked_update = false;
        let mut acting_closed = false;
        let mut checks = Vec::new();
        let acting_room = step.update_room.clone();
        for effect in effects {
            match effect {
                Effect::RunQuery(run) => self.accept(
                    step,
                    run.query,
                    Tracked {
                        conn: run.conn.0,
                        id: run.query_id.to_json().to_string(),
                        upload: false,
                        arrow_header: run.arrow_header.clone(),
                        json_header: run.json_header.clone(),
                        terminal_replies: 0,
                        connection_closed: false,
                        streaming: false,
                    },
                )?,
                Effect::UploadTable(upload) => self.accept(
                    step,
                    upload.query,
                    Tracked {
                        conn: upload.conn.0,
                        id: upload.query_id.to_json().to_string(),
                        upload: true,
                        arrow_header: Bytes::new(),
                        json_header: None,
                        terminal_replies: 0,
                        connection_closed: false,
                        streaming: false,
                    },
                )?,
                Effect::LoadSnapshot { room_id } => {
                    ensure!(step.acting_authenticated, "(c) join from unauthenticated");
                    self.loading.insert(room_id.clone());
                }
                Effect::Send { conn, frame } => {
                    if let Some(acked) = self.observe_send(conn.0, frame, step)? {
                        acked_update |= acked;
                    }
                }
                Effect::Close { conn, .. } => {
                    let conn = conn.0;
                    acting_closed |= step.acting == Some(conn);
                    Self::checked(self.server.handle_closed(ConnId(conn), self.now()))?;
                    self.forget(conn);
                    // Closing may itself cause effects (saves); they are checked too.
                    self.drain_and_observe(&Step {
                        acting_authenticated: true,
                        ..Step::default()
                    })?;
                }
                Effect::Respond { .. } => {
                    return violation("an HTTP answer on a WebSocket-only session");
                }
                Effect::SendStream {
                    conn,
                    query,
                    window,
                } => self.observe_stream(conn.0, *query, *window, step)?,
                // Only identical persisted reads share a stream; this session sends none
                // (`ordered` and the core's tests cover them).
                Effect::ShareStream { .. } => {
                    return violation("a shared stream in a session without persisted reads");
                }
                Effect::AppendRoomUpdate { room_id, seq, .. } => {
                    ensure!(self.cluster, "a log append while durable_room_log is off");
                    appends.push((room_id.clone(), *seq));
                }
                Effect::Ping { conn } => {
                    ensure!(
                        self.open.contains(&conn.0),
                        "pinged closed connection {}",
                        conn.0
                    );
                }
                Effect::PauseReading { conn } => {
                    ensure!(
                        self.open.contains(&conn.0),
                        "paused closed connection {}",
                        conn.0
                    );
                    self.paused.insert(conn.0);
                }
                Effect::ResumeReading { conn } => {
                    ensure!(
                        self.paused.remove(&conn.0),
                        "resumed {} without a pause",
                        conn.0
                    );
                }
                Effect::PersistSnapshot {
                    room_id,
                    snapshot,
                    version,
                    ..
                } => {
                    let result = if self.fail_persists {
                        Err("disk full".to_string())
                    } else {
                        self.stored.insert(room_id.clone(), snapshot.clone());
                        Ok(())
                    };
                    let reported = self.server.handle_snapshot_persisted(
                        room_id,
                        *version,
                        result,
                        self.now(),
                    );
                    self.observe_report(reported)?;
                }
                // Run on the spot (a driver runs it on another thread and reports later; the
                // core's own tests hold jobs back to check what happens meanwhile).
                Effect::CheckRoomChange {
                    conn,
                    check_id,
                    change,
                } => {
                    // Run once this batch is observed (it holds the pause its report lifts).
                    checks.push((*conn, *check_id, duckwire_core::check_room_change(change)));
                }
                Effect::RunRoomDocJob {
                    room_id,
                    job_id,
                    job,
                } => {
                    let worked = job.clone().run();
                    let reported =
                        self.server
                            .handle_room_doc_worked(room_id, *job_id, worked, self.now());
                    self.observe_report(reported)?;
                }
                Effect::Interrupt { query } => {
                    ensure!(
                        self.queries.contains_key(query),
                        "interrupt of a query never started"
                    );
                }
                Effect::InvalidateCache => {}
                Effect::BrokerSubscribe { channel, token } => {
                    let tokens = self.broker.entry(channel.clone()).or_default();
                    ensure!(
                        tokens.is_empty(),
                        "(g) broker asked again for {channel} without releasing it"
                    );
                    tokens.push(*token);
                }
                Effect::BrokerUnsubscribe { channel } => {
                    ensure!(
                        self.broker.remove(channel).is_some(),
                        "(g) broker released {channel} never asked for"
                    );
                }
                Effect::RoomUnloaded { room_id } => {
                    ensure!(
                        !self
                            .joined
                            .iter()
                            .any(|(c, r)| r == room_id && !self.rejoining.contains(c)),
                        "(g) room {room_id} unloaded with members"
                    );
                }
                Effect::RepublishRoom { .. } => {}
                Effect::PublishNotify { token, .. } => {
                    self.publishing.push(*token);
                    ensure!(
                        step.acting_authenticated && step.acting.is_some(),
                        "(g) a publication without an authenticated notify"
                    );
                }
            }
        }
        // (f): an update the room imported but could not ack, because answering pushed the
        // sender past its outbound cap and closed it, is part of the room all the same.
        if !acked_update && acting_closed {
            if let (Some(room), Some(bytes)) = (acting_room, &step.binary_sent) {
                if let Some(doc) = self.expected.get(&room) {
                    let _ = doc.import(bytes);
                }
            }
        }
        // (f): an acked update is part of the expected merge of its room.
        if acked_update {
            let (Some(conn), Some(bytes)) = (step.acting, &step.binary_sent) else {
                return violation("crdt-update-ack without an update");
            };
            let Some(room) = self.joined.get(&conn).cloned() else {
                return violation(format!("crdt-update-ack to {conn}, not in a room"));
            };
            let doc = self.expected.entry(room).or_default();
            ensure!(
                doc.import(bytes).is_ok(),
                "the room acked an update Loro rejects"
            );
        }
        // (g): the shared log answers each append (failing while persists fail); the ack
        // (or the error) belongs to this step's sender.
        for (room_id, seq) in appends {
            let result = if self.fail_persists {
                // Applied but not saved: the change is in the room all the same.
                if let Some(bytes) = &step.binary_sent {
                    let _ = self
                        .expected
                        .entry(room_id.clone())
                        .or_default()
                        .import(bytes);
                }
                Err("the shared log is unavailable".to_string())
            } else {
                Ok(())
            };
            Self::checked(self.server.handle_room_update_appended(
                &room_id,
                seq,
                result,
                self.now(),
            ))?;
            self.drain_and_observe(step)?;
        }
        // Large changes' checks report: their relays and acks belong to this step's sender.
        for (conn, check_id, result) in checks {
            Self::checked(self.server.handle_room_change_checked(
                conn,
                check_id,
                result,
                self.now(),
            ))?;
            self.drain_and_observe(step)?;
        }
        Ok(())
    }

    /// A streamed reply starting: the terminal reply of the query that is finishing, to its
    /// own open connection.
    fn observe_stream(
        &mut self,
        to: u64,
        query: QueryHandle,
        window: usize,
        step: &Step,
    ) -> Result<(), String> {
        ensure!(self.open.contains(&to), "stream to closed connection {to}");
        ensure!(
            step.finishing == Some(query),
            "(b) a stream for {query:?} while {:?} acted",
            step.finishing
        );
        *self.outbound.entry(to).or_default() += window;
        let tracked = self.queries.get_mut(&query).expect("tracked");
        ensure!(
            tracked.conn == to,
            "(b) {}'s stream reached {to}",
            tracked.id
        );
        tracked.streaming = true;
        tracked.terminal_replies += 1;
        ensure!(
            tracked.terminal_replies == 1,
            "(a) a stream after a reply for {}",
            tracked.id
        );
        Ok(())
    }

    /// Checks one frame sent to `to`; `Some(true)` when it acks the acting connection's
    /// CRDT update.
    fn observe_send(
        &mut self,
        to: u64,
        frame: &Frame,
        step: &Step,
    ) -> Result<Option<bool>, String> {
        if !self.open.contains(&to) {
            return Err(format!("sent to closed connection {to}: {frame:?}"));
        }
        *self.outbound.entry(to).or_default() += frame.len();
        let decoded = decode_server_frame(frame).map_err(|e| format!("(e) {e}"))?;
        if !step.acting_authenticated && step.acting != Some(to) {
            return Err(format!(
                "(c) unauthenticated {:?} reached {to}",
                step.acting
            ));
        }
        let kind = decoded
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("raw")
            .to_string();
        if let Some(id) = decoded.get("queryId") {
            let id = id.to_string();
            let finishing_conn = step.finishing.map(|h| self.queries[&h].conn);
            if step.acting != Some(to) && finishing_conn != Some(to) {
                return Err(format!("(b) reply with queryId {id} reached {to}"));
            }
            let cancelled = decoded.get("error") == Some(&json!("Query was cancelled"));
            let terminal = matches!(kind.as_str(), "ok" | "json" | "arrow" | "uploadAck")
                || (kind == "error" && (step.finishing.is_some() || cancelled));
            if terminal {
                let handle = match step.finishing {
                    Some(h) => Some(h),
                    None => self.live.get(&(to, id.clone())).copied(),
                };
                if let Some(handle) = handle {
                    let tracked = self.queries.get_mut(&handle).expect("tracked");
                    if tracked.id != id {
                        return Err(format!("(b) reply for {} carried id {id}", tracked.id));
                    }
                    tracked.terminal_replies += 1;
                    if tracked.terminal_replies > 1 {
                        return Err(format!("(a) a second terminal reply for {id}"));
                    }
                }
            }
        }
        match kind.as_str() {
            "notify" => {
                let channel = decoded["channel"].as_str().unwrap_or_default().to_string();
                if !self.subscriptions.contains(&(to, channel)) && step.acting != Some(to) {
                    return Err(format!("(b) notify to non-subscriber {to}"));
                }
            }
            "subscribed" => {
                let channel = decoded["channel"].as_str().unwrap_or_default().to_string();
                self.subscriptions.insert((to, channel));
            }
            "unsubscribed" => {
                let channel = decoded["channel"].as_str().unwrap_or_default().to_string();
                self.subscriptions.remove(&(to, channel));
            }
            "authAck" => {
                self.authenticated.insert(to);
            }
            "crdt-snapshot" => {
                self.catching_up.insert(to);
            }
            // (b) holds for it too: only a member of a room gets its catch-up.
            "raw" if self.catching_up.contains(&to) && !self.joined.contains_key(&to) => {
                return Err(format!("(b) a room's catch-up to {to}, not in a room"));
            }
            "raw" if self.catching_up.contains(&to) => {}
            // (b) for other replicas' changes: only to members of the room they came to.
            "raw" if self.remote_changes.contains_key(frame_bytes(frame)) => {
                let room = &self.remote_changes[frame_bytes(frame)];
                if self.joined.get(&to) != Some(room) {
                    return Err(format!(
                        "(b) another replica's change to {to}, not in {room}"
                    ));
                }
            }
            "crdt-joined" => {
                self.rejoining.remove(&to);
                let room = decoded["roomId"].as_str().unwrap_or_default().to_string();
                self.joined.insert(to, room);
            }
            "raw" => {
                // (b): CRDT updates reach only the other members of the sender's room, as
                // the very bytes the sender sent.
                let sender_room = step.acting.and_then(|c| self.joined.get(&c));
                if sender_room.is_none() || self.joined.get(&to) != sender_room {
                    return Err(format!("(b) CRDT bytes to {to}, not in the sender's room"));
                }
                if step.acting == Some(to) {
                    return Err("a CRDT update echoed to its sender".into());
                }
                if let (Frame::Binary(bytes), Some(sent)) = (frame, &step.binary_sent) {
                    if bytes.as_ref() != sent.as_slice() {
                        return Err("a relayed CRDT update differs from the one sent".into());
                    }
                }
            }
            "crdt-update-ack" if step.acting == Some(to) => return Ok(Some(true)),
            _ => {}
        }
        Ok(Some(false))
    }

    /// (d): no cap is exceeded.
    fn check_caps(&self) -> Result<(), String> {
        let caps = limits();
        let cap = |c: Option<usize>| c.expect("capped");
        ensure!(
            self.server.connection_count() <= cap(caps.max_connections),
            "(d) max_connections exceeded"
        );
        for conn in 0..u64::from(CONNS) {
            ensure!(
                self.server.inflight_count(ConnId(conn)) <= cap(caps.max_inflight_per_conn),
                "(d) max_inflight_per_conn exceeded on {conn}"
            );
            let subscriptions = self
                .subscriptions
                .iter()
                .filter(|(c, _)| *c == conn)
                .count();
            ensure!(
                subscriptions <= cap(caps.max_subscriptions_per_conn),
                "(d) max_subscriptions_per_conn exceeded on {conn}"
            );
            // A paused connection may have had one frame in flight.
            let inbound = self.server.inbound_bytes(ConnId(conn));
            ensure!(
                inbound < cap(caps.max_inbound_bytes_per_conn) + self.largest_frame.max(1),
                "(d) max_inbound_bytes_per_conn exceeded on {conn}: {inbound}"
            );
            let queued = self.outbound.get(&conn).copied().unwrap_or(0);
            ensure!(
                queued <= cap(caps.max_outbound_bytes_per_conn),
                "(d) max_outbound_bytes_per_conn exceeded on {conn}: {queued}"
            );
        }
        let total = self.server.inbound_bytes_total();
        ensure!(
            total < cap(caps.max_inbound_bytes) + usize::from(CONNS) * self.largest_frame.max(1),
            "(d) max_inbound_bytes exceeded: {total}"
        );
        Ok(())
    }

    /// Finishes every query still running, then checks (a) and (f).
    pub fn finish(mut self) -> Result<(), String> {
        for handle in std::mem::take(&mut self.running) {
            let step = Step {
                acting_authenticated: true,
                finishing: Some(handle),
                ..Step::default()
            };
            if self.queries[&handle].upload {
                Self::checked(self.server.handle_upload_done(
                    handle,
                    duckwire_core::UploadOutcome::Written,
                    self.now(),
                ))?;
            } else {
                Self::checked(self.server.handle_query_done(
                    handle,
                    QueryOutcome::NoResultSet,
                    false,
                    self.now(),
                ))?;
            }
            self.drain_and_observe(&step)?;
        }
        for tracked in self.queries.values() {
            ensure!(
                tracked.connection_closed || tracked.terminal_replies == 1,
                "(a) query {} on {} got {} terminal replies",
                tracked.id,
                tracked.conn,
                tracked.terminal_replies
            );
        }
        for (room, expected) in &self.expected {
            if let Some(snapshot) = self.server.room_snapshot(room) {
                let actual = loro::LoroDoc::new();
                ensure!(
                    actual.import(&snapshot).is_ok(),
                    "room {room}'s snapshot does not import"
                );
                let (actual, expected) = (actual.get_deep_value(), expected.get_deep_value());
                ensure!(
                    actual == expected,
                    "(f) room {room} is not the merge of its accepted updates: {actual:?} != {expected:?}"
                );
            }
        }
        Ok(())
    }
}

/// A binary frame's bytes (none for a text frame).
fn frame_bytes(frame: &Frame) -> &[u8] {
    match frame {
        Frame::Binary(bytes) => bytes,
        _ => &[],
    }
}
