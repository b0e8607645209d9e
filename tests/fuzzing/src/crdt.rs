//! The CRDT harness: valid, corrupted, truncated, spliced, recorded and random Loro updates
//! and client snapshots into one room with three members. After every step the room must
//! equal the merge of exactly the updates it acknowledged (a rejected update leaves it
//! untouched), relays must carry the sender's bytes to the other members only, and a
//! re-join must give the room's current state.
//!
//! The room's document jobs (`Effect::RunRoomDocJob`, which a driver runs on another thread)
//! are held until an `Op::RunJobs`, so ops land while a job holds the document: a re-joining
//! member gets no relay until its snapshot, then the snapshot and the changes accepted since
//! must make the room's state at that moment; seeds sent meanwhile are answered after it.

use arbitrary::Unstructured;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{byte, push_short_bytes, short_bytes};
use duckwire_core::{Config, ConnId, ConnectionInfo, Effect, Frame, Millis, Server};

const MEMBERS: u8 = 3;
const ROOM: &str = "room";
const MAX_OPS: usize = 120;

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A member edits its own document (`target`: map, text, list, counter) and sends the
    /// update since its last one.
    Edit {
        conn: u8,
        target: u8,
        value: u8,
    },
    /// A previously sent update with one byte changed.
    Corrupt {
        conn: u8,
        nth: u8,
        at: u16,
        xor: u8,
    },
    /// A previously sent update cut short.
    Truncate {
        conn: u8,
        nth: u8,
        keep: u16,
    },
    /// Two previously sent updates concatenated.
    Splice {
        conn: u8,
        first: u8,
        second: u8,
    },
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    /// An update from recorded client traffic.
    Recorded {
        conn: u8,
        index: u8,
    },
    /// A `crdt-snapshot` message with the member's whole document.
    ClientSnapshot {
        conn: u8,
    },
    Rejoin {
        conn: u8,
    },
    /// The driver reports every held document job (and those their reports start).
    RunJobs,
}

impl Op {
    pub fn read(u: &mut Unstructured<'_>) -> Op {
        let conn = |u: &mut Unstructured<'_>| byte(u) % MEMBERS;
        match byte(u) % 9 {
            0 => Op::Edit {
                conn: conn(u),
                target: byte(u) % 4,
                value: byte(u),
            },
            1 => Op::Corrupt {
                conn: conn(u),
                nth: byte(u),
                at: u16::from_be_bytes([byte(u), byte(u)]),
                xor: byte(u),
            },
            2 => Op::Truncate {
                conn: conn(u),
                nth: byte(u),
                keep: u16::from_be_bytes([byte(u), byte(u)]),
            },
            3 => Op::Splice {
                conn: conn(u),
                first: byte(u),
                second: byte(u),
            },
            4 => Op::Raw {
                conn: conn(u),
                bytes: short_bytes(u),
            },
            5 => Op::Recorded {
                conn: conn(u),
                index: byte(u),
            },
            6 => Op::ClientSnapshot { conn: conn(u) },
            7 => Op::Rejoin { conn: conn(u) },
            _ => Op::RunJobs,
        }
    }
}

impl super::Encode for Op {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Op::Edit {
                conn,
                target,
                value,
            } => out.extend([0, *conn, *target, *value]),
            Op::Corrupt { conn, nth, at, xor } => {
                let [hi, lo] = at.to_be_bytes();
                out.extend([1, *conn, *nth, hi, lo, *xor]);
            }
            Op::Truncate { conn, nth, keep } => {
                let [hi, lo] = keep.to_be_bytes();
                out.extend([2, *conn, *nth, hi, lo]);
            }
            Op::Splice {
                conn,
                first,
                second,
            } => out.extend([3, *conn, *first, *second]),
            Op::Raw { conn, bytes } => {
                out.extend([4, *conn]);
                push_short_bytes(out, bytes);
            }
            Op::Recorded { conn, index } => out.extend([5, *conn, *index]),
            Op::ClientSnapshot { conn } => out.extend([6, *conn]),
            Op::Rejoin { conn } => out.extend([7, *conn]),
            Op::RunJobs => out.push(8),
        }
    }
}

struct Member {
    doc: loro::LoroDoc,
    sent_up_to: loro::VersionVector,
}

/// Runs the ops `data` encodes; `recorded` are Loro updates taken from client traffic.
pub fn run(data: &[u8], recorded: &[Vec<u8>]) -> Result<(), String> {
    let mut room = Room::new()?;
    let mut u = Unstructured::new(data);
    let mut steps = 0;
    while !u.is_empty() && steps < MAX_OPS {
        steps += 1;
        let op = Op::read(&mut u);
        room.apply(&op, recorded)?;
    }
    room.run_jobs()?;
    room.check_room()
}

struct Room {
    server: Server,
    members: Vec<Member>,
    /// Every update the room acknowledged, merged.
    expected: loro::LoroDoc,
    /// Updates sent so far (valid or not), the material for corrupted ones.
    history: Vec<Vec<u8>>,
    now: u64,
    /// Document jobs the server asked for, not reported yet.
    held: Vec<(String, u64, duckwire_core::RoomDocJob)>,
    /// Joins not answered yet, per member (a member may join again before the answer).
    outstanding_joins: std::collections::BTreeMap<u64, usize>,
    /// Members the room relays changes to: not those that joined again and have had no
    /// answer since.
    relaying: std::collections::BTreeSet<u64>,
    /// The acknowledged changes and seeds each member sent (a client keeps its own changes:
    /// the room sends them back to nobody).
    own: std::collections::BTreeMap<u64, Vec<Vec<u8>>>,
    /// Client snapshots the server has not answered yet (it waits for a job), in order.
    unanswered_seeds: Vec<(u64, Vec<u8>)>,
}

fn failed(e: duckwire_core::ServerError) -> String {
    format!("the machine failed: {e}")
}

impl Room {
    fn new() -> Result<Self, String> {
        let mut config = Config {
            sync_enabled: true,
            allow_client_snapshots: true,
            ..Config::default()
        };
        // Most changes take the path of a large one (checked off the thread).
        config.limits.max_change_bytes_checked_inline = Some(48);
        let mut room = Room {
            server: Server::new(config, [9; 16]),
            members: Vec::new(),
            expected: loro::LoroDoc::new(),
            history: Vec::new(),
            now: 1,
            held: Vec::new(),
            outstanding_joins: Default::default(),
            relaying: Default::default(),
            own: Default::default(),
            unanswered_seeds: Vec::new(),
        };
        for conn in 0..u64::from(MEMBERS) {
            let doc = loro::LoroDoc::new();
            doc.set_peer_id(conn + 1).map_err(|e| e.to_string())?;
            room.members.push(Member {
                doc,
                sent_up_to: loro::VersionVector::default(),
            });
            room.server
                .handle_open(ConnId(conn), ConnectionInfo::default(), Millis(room.now))
                .map_err(failed)?;
            room.join(conn)?;
        }
        room.run_jobs()?;
        Ok(room)
    }

    /// The server's effects; room document jobs are held for `Op::RunJobs`.
    fn effects(&mut self) -> Result<Vec<Effect>, String> {
        let mut effects = Vec::new();
        while let Some(effect) = self.server.poll_effect() {
            match effect {
                Effect::RunRoomDocJob {
                    room_id,
                    job_id,
                    job,
                } => {
                    if self.held.iter().any(|(room, _, _)| *room == room_id) {
                        return Err("a second job on a room whose document is lent".into());
                    }
                    self.held.push((room_id, job_id, job));
                }
                // Checks run on the spot (their reports continue the step's effects).
                Effect::CheckRoomChange {
                    conn,
                    check_id,
                    change,
                } => {
                    let result = duckwire_core::check_room_change(&change);
                    self.server
                        .handle_room_change_checked(conn, check_id, result, Millis(self.now))
                        .map_err(failed)?;
                }
                effect => effects.push(effect),
            }
        }
        Ok(effects)
    }

    /// Reports every held job, and the jobs those reports start, checking what the reports
    /// send: snapshots (and the changes after them) to re-joining members, answers to seeds.
    fn run_jobs(&mut self) -> Result<(), String> {
        while !self.held.is_empty() {
            for (room_id, job_id, job) in std::mem::take(&mut self.held) {
                let worked = job.run();
                self.server
                    .handle_room_doc_worked(&room_id, job_id, worked, Millis(self.now))
                    .map_err(failed)?;
                let effects = self.effects()?;
                self.deliveries(&effects)?;
            }
        }
        Ok(())
    }

    /// What a job's report sent: each re-joining member's `crdt-joined`, `crdt-snapshot` and
    /// the changes accepted since (together the room's state now), and the answers to seeds
    /// that waited (an ack seeds the room, whose relay reaches the other members).
    fn deliveries(&mut self, effects: &[Effect]) -> Result<(), String> {
        let mut arrived: std::collections::BTreeMap<u64, loro::LoroDoc> = Default::default();
        for effect in effects {
            let Effect::Send { conn, frame } = effect else {
                continue;
            };
            let to = conn.0;
            match frame {
                Frame::Text(text) => {
                    let value: Value = serde_json::from_str(text)
                        .map_err(|e| format!("a reply is not JSON: {e}"))?;
                    match value["type"].as_str() {
                        Some("crdt-joined") => {
                            match self.outstanding_joins.get_mut(&to) {
                                Some(n) if *n > 0 => *n -= 1,
                                _ => return Err(format!("crdt-joined to {to}, who did not join")),
                            }
                            self.relaying.insert(to);
                            arrived.insert(to, loro::LoroDoc::new());
                        }
                        Some("crdt-snapshot") => {
                            let Some(doc) = arrived.get(&to) else {
                                return Err(format!("a snapshot to {to} without crdt-joined"));
                            };
                            let bytes = base64::engine::general_purpose::STANDARD
                                .decode(value["data"].as_str().unwrap_or_default())
                                .map_err(|e| format!("join snapshot is not base64: {e}"))?;
                            doc.import(&bytes)
                                .map_err(|e| format!("join snapshot does not import: {e}"))?;
                            let _ = self.members[to as usize].doc.import(&bytes);
                        }
                        Some("crdt-snapshot-ack") => self.seed_acknowledged(to)?,
                        Some("error") => self.seed_refused(to)?,
                        _ => return Err(format!("an unexpected reply after a job: {text}")),
                    }
                }
                Frame::Binary(bytes) => {
                    if let Some(doc) = arrived.get(&to) {
                        // A change accepted while the joiner's snapshot was taken.
                        let _ = doc.import(bytes);
                    } else if !self.relaying.contains(&to) {
                        return Err(format!("CRDT bytes to {to} before its snapshot"));
                    }
                    let _ = self.members[to as usize].doc.import(bytes);
                }
            }
        }
        for (conn, doc) in arrived {
            for change in self.own.get(&conn).into_iter().flatten() {
                let _ = doc.import(change);
            }
            if doc.get_deep_value() != self.expected.get_deep_value() {
                return Err(format!(
                    "re-joining member {conn} got a snapshot and changes that are not the room's state"
                ));
            }
        }
        Ok(())
    }

    fn seed_acknowledged(&mut self, conn: u64) -> Result<(), String> {
        let Some(at) = self.unanswered_seeds.iter().position(|(c, _)| *c == conn) else {
            return Err(format!("crdt-snapshot-ack to {conn}, who sent no seed"));
        };
        let (_, snapshot) = self.unanswered_seeds.remove(at);
        if !self.expected.oplog_vv().is_empty() {
            return Err("a client snapshot seeded a room that had state".into());
        }
        self.expected
            .import(&snapshot)
            .map_err(|e| format!("acked snapshot does not import: {e}"))?;
        self.own.entry(conn).or_default().push(snapshot);
        Ok(())
    }

    fn seed_refused(&mut self, conn: u64) -> Result<(), String> {
        let Some(at) = self.unanswered_seeds.iter().position(|(c, _)| *c == conn) else {
            return Err(format!("an error to {conn}, who sent no seed"));
        };
        self.unanswered_seeds.remove(at);
        Ok(())
    }

    fn join(&mut self, conn: u64) -> Result<(), String> {
        let message = json!({"type":"crdt-join","roomId":ROOM}).to_string();
        self.server
            .handle_frame(ConnId(conn), Frame::Text(message), Millis(self.now))
            .map_err(failed)?;
        *self.outstanding_joins.entry(conn).or_default() += 1;
        self.relaying.remove(&conn);
        let mut effects = self.effects()?;
        if effects
            .iter()
            .any(|e| matches!(e, Effect::LoadSnapshot { .. }))
        {
            self.server
                .handle_snapshot_loaded(ROOM, Ok(None), Millis(self.now))
                .map_err(failed)?;
            effects.extend(self.effects()?);
        }
        let snapshot = effects.iter().find_map(|e| match e {
            Effect::Send {
                conn: c,
                frame: Frame::Text(text),
            } if c.0 == conn => {
                let value: Value = serde_json::from_str(text).ok()?;
                (value["type"] == "crdt-snapshot")
                    .then(|| value["data"].as_str().map(String::from))?
            }
            _ => None,
        });
        let Some(snapshot) = snapshot else {
            // The snapshot comes from a job: checked when it reports (`deliveries`).
            return Ok(());
        };
        *self.outstanding_joins.entry(conn).or_default() -= 1;
        self.relaying.insert(conn);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(snapshot)
            .map_err(|e| format!("join snapshot is not base64: {e}"))?;
        let joined = loro::LoroDoc::new();
        joined
            .import(&bytes)
            .map_err(|e| format!("join snapshot does not import: {e}"))?;
        if joined.get_deep_value() != self.expected.get_deep_value() {
            return Err("a join returned a snapshot that is not the room's state".into());
        }
        Ok(())
    }

    fn pick(&self, nth: u8) -> Option<Vec<u8>> {
        if self.history.is_empty() {
            return None;
        }
        Some(self.history[usize::from(nth) % self.history.len()].clone())
    }

    fn edit(&mut self, conn: u8, target: u8, value: u8) -> Result<Vec<u8>, String> {
        let member = &mut self.members[usize::from(conn)];
        let doc = &member.doc;
        let value = i64::from(value);
        let result = match target {
            0 => doc.get_map("map").insert(&format!("k{}", value % 5), value),
            1 => {
                let text = doc.get_text("text");
                let at = (value as usize) % (text.len_unicode() + 1);
                text.insert(at, "ab")
            }
            2 => doc.get_list("list").push(value),
            _ => doc.get_counter("counter").increment(value as f64),
        };
        result.map_err(|e| format!("a member's own edit failed: {e}"))?;
        doc.commit();
        let update = doc
            .export(loro::ExportMode::updates(&member.sent_up_to))
            .map_err(|e| format!("export failed: {e}"))?;
        member.sent_up_to = doc.oplog_vv();
        Ok(update)
    }

    fn apply(&mut self, op: &Op, recorded: &[Vec<u8>]) -> Result<(), String> {
        let (conn, update) = match op {
            Op::Edit {
                conn,
                target,
                value,
            } => (*conn, Some(self.edit(*conn, *target, *value)?)),
            Op::Corrupt { conn, nth, at, xor } => (
                *conn,
                self.pick(*nth).map(|mut bytes| {
                    if !bytes.is_empty() {
                        let at = usize::from(*at) % bytes.len();
                        bytes[at] ^= xor | 1;
                    }
                    bytes
                }),
            ),
            Op::Truncate { conn, nth, keep } => (
                *conn,
                self.pick(*nth).map(|mut bytes| {
                    let keep = usize::from(*keep) % (bytes.len().max(1));
                    bytes.truncate(keep);
                    bytes
                }),
            ),
            Op::Splice {
                conn,
                first,
                second,
            } => (
                *conn,
                self.pick(*first)
                    .zip(self.pick(*second))
                    .map(|(a, b)| [a, b].concat()),
            ),
            Op::Raw { conn, bytes } => (*conn, Some(bytes.clone())),
            Op::Recorded { conn, index } => (
                *conn,
                (!recorded.is_empty())
                    .then(|| recorded[usize::from(*index) % recorded.len()].clone()),
            ),
            Op::ClientSnapshot { conn } => return self.client_snapshot(*conn),
            Op::Rejoin { conn } => return self.join(u64::from(*conn)),
            Op::RunJobs => return self.run_jobs(),
        };
        let Some(update) = update else {
            return Ok(());
        };
        self.send_update(u64::from(conn), update)
    }

    fn send_update(&mut self, conn: u64, update: Vec<u8>) -> Result<(), String> {
        self.history.push(update.clone());
        if self.history.len() > 64 {
            self.history.remove(0);
        }
        self.server
            .handle_frame(
                ConnId(conn),
                Frame::Binary(Bytes::from(update.clone())),
                Millis(self.now),
            )
            .map_err(failed)?;
        let effects = self.effects()?;
        let mut acked = false;
        let mut relayed_to = Vec::new();
        for effect in &effects {
            if let Effect::Send { conn: to, frame } = effect {
                match frame {
                    Frame::Binary(bytes) => {
                        if to.0 == conn {
                            return Err("an update was echoed to its sender".into());
                        }
                        if bytes.as_ref() != update.as_slice() {
                            return Err("a relay differs from the update sent".into());
                        }
                        relayed_to.push(to.0);
                    }
                    Frame::Text(text) => {
                        let value: Value = serde_json::from_str(text)
                            .map_err(|e| format!("a reply is not JSON: {e}"))?;
                        if to.0 != conn {
                            return Err(format!("a text reply reached another member: {text}"));
                        }
                        acked |= value["type"] == "crdt-update-ack";
                    }
                }
            }
        }
        if acked {
            if self.expected.import(&update).is_err() {
                return Err("the room acked an update Loro rejects".into());
            }
            relayed_to.sort_unstable();
            // Members waiting for their snapshot get the change after it.
            let others: Vec<u64> = (0..u64::from(MEMBERS))
                .filter(|c| *c != conn && self.relaying.contains(c))
                .collect();
            self.own.entry(conn).or_default().push(update.clone());
            if relayed_to != others {
                return Err(format!(
                    "an acked update reached {relayed_to:?}, not {others:?}"
                ));
            }
            for member in &others {
                let _ = self.members[*member as usize].doc.import(&update);
            }
            // Comparing whole documents is the slow part of a run: accepted updates are
            // checked at the end, rejected ones (which must change nothing) right away.
            Ok(())
        } else if !relayed_to.is_empty() {
            Err("a rejected update was relayed".into())
        } else {
            self.check_room()
        }
    }

    fn client_snapshot(&mut self, conn: u8) -> Result<(), String> {
        let doc = &self.members[usize::from(conn)].doc;
        let snapshot = doc
            .export(loro::ExportMode::Snapshot)
            .map_err(|e| format!("export failed: {e}"))?;
        let room_was_empty = self.expected.oplog_vv().is_empty();
        let data = base64::engine::general_purpose::STANDARD.encode(&snapshot);
        let message = json!({"type":"crdt-snapshot","roomId":ROOM,"data":data}).to_string();
        self.server
            .handle_frame(
                ConnId(u64::from(conn)),
                Frame::Text(message),
                Millis(self.now),
            )
            .map_err(failed)?;
        let effects = self.effects()?;
        let answered = effects.iter().any(|e| {
            matches!(e, Effect::Send { conn: to, frame: Frame::Text(_) } if to.0 == u64::from(conn))
        });
        if !answered {
            // A job holds the document: the seed is answered when it reports.
            self.unanswered_seeds.push((u64::from(conn), snapshot));
            return self.check_room();
        }
        let acked = effects.iter().any(|e| match e {
            Effect::Send {
                frame: Frame::Text(text),
                ..
            } => text.contains("crdt-snapshot-ack"),
            _ => false,
        });
        if acked {
            if !room_was_empty {
                return Err("a client snapshot seeded a room that had state".into());
            }
            self.expected
                .import(&snapshot)
                .map_err(|e| format!("acked snapshot does not import: {e}"))?;
            self.own.entry(u64::from(conn)).or_default().push(snapshot);
        }
        self.check_room()
    }

    fn check_room(&mut self) -> Result<(), String> {
        let Some(snapshot) = self.server.room_snapshot(ROOM) else {
            return Err("the room vanished while it had members".into());
        };
        let actual = loro::LoroDoc::new();
        actual
            .import(&snapshot)
            .map_err(|e| format!("the room's snapshot does not import: {e}"))?;
        let (actual, expected) = (actual.get_deep_value(), self.expected.get_deep_value());
        if actual != expected {
            return Err(format!(
                "the room is not the merge of the updates it acknowledged: {actual:?} != {expected:?}"
            ));
        }
        Ok(())
    }
}
