//! A tiny in-memory driver used by the unit and property tests.

use bytes::Bytes;
use serde_json::Value;

use crate::{Config, ConnId, ConnectionInfo, Effect, Frame, Millis, QueryHandle, RunQuery, Server};

pub(crate) struct Harness {
    pub server: Server,
    pub now: u64,
}

impl Harness {
    pub fn new(config: Config) -> Self {
        Harness {
            server: Server::new(config, [42; 16]),
            now: 1_000,
        }
    }

    pub fn now(&self) -> Millis {
        Millis(self.now)
    }

    pub fn open(&mut self, conn: u64) -> Vec<Effect> {
        self.open_with(conn, ConnectionInfo::default())
    }

    pub fn open_with(&mut self, conn: u64, info: ConnectionInfo) -> Vec<Effect> {
        self.server
            .handle_open(ConnId(conn), info, self.now())
            .unwrap();
        self.drain()
    }

    pub fn text(&mut self, conn: u64, message: Value) -> Vec<Effect> {
        self.frame(conn, Frame::Text(message.to_string()))
    }

    pub fn frame(&mut self, conn: u64, frame: Frame) -> Vec<Effect> {
        self.server
            .handle_frame(ConnId(conn), frame, self.now())
            .unwrap();
        self.drain()
    }

    pub fn binary(&mut self, conn: u64, bytes: Vec<u8>) -> Vec<Effect> {
        self.frame(conn, Frame::Binary(Bytes::from(bytes)))
    }

    /// The executor found `query` (dispatched with `Gate::ClassifyFirst`) to be a read.
    pub fn classified_read(&mut self, query: QueryHandle) -> Vec<Effect> {
        self.server
            .handle_query_classified(query, crate::Verdict::Read, self.now())
            .unwrap();
        self.drain()
    }

    /// Every effect the server emitted, with room document jobs run on the spot and
    /// reported (so their outcomes are among the effects, the jobs themselves are not).
    pub fn drain(&mut self) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(effect) = self.server.poll_effect() {
            match effect {
                Effect::RunRoomDocJob {
                    room_id,
                    job_id,
                    job,
                } => self
                    .server
                    .handle_room_doc_worked(&room_id, job_id, job.run(), self.now())
                    .unwrap(),
                Effect::CheckRoomChange {
                    conn,
                    check_id,
                    change,
                } => {
                    let result = crate::check_room_change(&change);
                    self.server
                        .handle_room_change_checked(conn, check_id, result, self.now())
                        .unwrap()
                }
                effect => effects.push(effect),
            }
        }
        effects
    }
}

/// JSON text frames sent to `conn`, parsed.
pub(crate) fn sent_json(effects: &[Effect], conn: u64) -> Vec<Value> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                conn: c,
                frame: Frame::Text(text),
            } if c.0 == conn => Some(serde_json::from_str(text).expect("server sends JSON")),
            _ => None,
        })
        .collect()
}

/// Binary frames sent to `conn`.
pub(crate) fn sent_binary(effects: &[Effect], conn: u64) -> Vec<Bytes> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                conn: c,
                frame: Frame::Binary(bytes),
            } if c.0 == conn => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

pub(crate) fn only_json(effects: &[Effect], conn: u64) -> Value {
    let sent = sent_json(effects, conn);
    assert_eq!(
        sent.len(),
        1,
        "expected one reply, got {sent:?} from {effects:?}"
    );
    sent.into_iter().next().unwrap()
}

/// The queries the core asked to run.
pub(crate) fn runs(effects: &[Effect]) -> Vec<RunQuery> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::RunQuery(run) => Some(run.clone()),
            _ => None,
        })
        .collect()
}

/// The handles of the queries the core asked to run.
pub(crate) fn started(effects: &[Effect]) -> Vec<QueryHandle> {
    runs(effects).into_iter().map(|run| run.query).collect()
}

pub(crate) fn closes(effects: &[Effect]) -> Vec<(u64, u16)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Close { conn, code, .. } => Some((conn.0, *code)),
            _ => None,
        })
        .collect()
}

/// A Loro update setting `key` to `value` in map "m", from peer `peer`.
pub(crate) fn loro_update(peer: u64, key: &str, value: i64) -> Vec<u8> {
    let doc = loro::LoroDoc::new();
    doc.set_peer_id(peer).expect("a valid peer id");
    doc.get_map("m").insert(key, value).expect("insert");
    doc.commit();
    doc.export(loro::ExportMode::all_updates()).expect("export")
}

/// The deep value of a snapshot, for comparing room states.
pub(crate) fn snapshot_value(snapshot: &[u8]) -> loro::LoroValue {
    let doc = loro::LoroDoc::new();
    doc.import(snapshot).unwrap();
    doc.get_deep_value()
}
