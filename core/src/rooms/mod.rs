//! CRDT rooms on Loro (PROTOCOL §6): lazy load, join/leave, updates that leave the room
//! untouched when Loro rejects them, client seeding of empty rooms, and the persistence
//! timers (debounce, max latency, last leave, shutdown) and idle eviction. Loro's imports
//! and exports run as jobs off the protocol thread (`doc.rs`, `jobs.rs`).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use loro::LoroDoc;

use crate::budget::HoldBack;
use crate::codec::{Frame, ServerMessage};
use crate::conn::Conn;
use crate::effect::Effect;
use crate::ids::{ConnId, Millis};
use crate::server::Server;
use crate::timers::TimerKey;
use crate::ProtocolError;

mod checks;
mod cluster;
mod doc;
mod jobs;
mod saving;

pub use checks::check_room_change;
pub(crate) use checks::ChangeChecks;
use doc::{ChangeFrom, RoomDoc};
pub use doc::{RoomDocJob, RoomDocWorked};
use jobs::{CachedSnapshot, JobPurpose, LoadPurpose};

pub(crate) struct Room {
    doc: RoomDoc,
    load: Load,
    /// Connections waiting for the load to finish.
    joining: Vec<ConnId>,
    /// Joiners of the loaded room waiting for the next job's snapshot (they become members
    /// when it is sent to them).
    awaiting_snapshot: Vec<ConnId>,
    /// What the job holding the document was started for.
    job: Option<JobPurpose>,
    /// The last snapshot a job exported, with the room's `version` it holds: joiners get it
    /// without a job while no change came since (a dashboard opened by many viewers).
    cached_snapshot: Option<CachedSnapshot>,
    /// A save was asked for while a job held the document.
    save_wanted: bool,
    /// `crdt-snapshot` seeds that arrived while loading or while a job held the document,
    /// applied in order after it.
    queued_snapshots: Vec<(ConnId, Vec<u8>)>,
    /// Senders not read while the room's imports are behind
    /// (`Limits::max_unimported_changes_per_room`).
    held_back: BTreeSet<ConnId>,
    members: BTreeSet<ConnId>,
    /// Bumped on every accepted change.
    version: u64,
    saved_version: u64,
    /// A `PersistSnapshot` of this version is in progress.
    persisting: Option<u64>,
    debounce_due: Option<Millis>,
    latency_due: Option<Millis>,
    /// The last sequence number given to an update appended to the room's durable log.
    log_seq: u64,
    /// Acknowledgements held until the log holds their update (`Config::durable_room_log`).
    /// With the inbound bytes of the change each holds until its append is durable (the
    /// update waits in the driver's append queue meanwhile: PROTOCOL §7's budget counts it).
    pending_acks: Vec<(u64, ConnId, ServerMessage, usize)>,
    /// Cluster mode: every entry of the shared log up to this id is in `doc`.
    shared_log_position: Option<String>,
}

/// How far a room's load is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Storage (and, in cluster mode, the shared log) is being read.
    Reading,
    /// A job imports what storage held; other replicas' changes are taken meanwhile (they
    /// follow the shared log's part that was read).
    Importing,
    /// Members may join and send changes.
    Done,
}

/// What storage holds for a room: its last snapshot and the updates logged after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRoom {
    pub snapshot: Option<Vec<u8>>,
    /// Logged updates (Loro updates or client snapshots) in log order.
    pub updates: Vec<Vec<u8>>,
    /// The highest sequence number in the log (0 when empty); new appends continue after it.
    pub last_seq: u64,
    /// Cluster mode: the id of the last entry of the room's shared log included above.
    pub shared_log_position: Option<String>,
}

impl Room {
    fn new(doc: RoomDoc) -> Self {
        Room {
            doc,
            load: Load::Reading,
            joining: Vec::new(),
            awaiting_snapshot: Vec::new(),
            job: None,
            cached_snapshot: None,
            save_wanted: false,
            queued_snapshots: Vec::new(),
            held_back: BTreeSet::new(),
            members: BTreeSet::new(),
            version: 0,
            saved_version: 0,
            persisting: None,
            debounce_due: None,
            latency_due: None,
            log_seq: 0,
            pending_acks: Vec::new(),
            shared_log_position: None,
        }
    }

    fn loaded(&self) -> bool {
        self.load == Load::Done
    }

    fn needs_save(&self) -> bool {
        self.version > self.saved_version.max(self.persisting.unwrap_or(0))
    }

    /// Whether a save is asked for or under way.
    fn saving(&self) -> bool {
        self.persisting.is_some() || self.save_wanted
    }

    /// The last export found changes waiting for a dependency the room has not seen: without
    /// a durable log, unloading the room would lose them (a snapshot leaves them out).
    fn waiting_for_dependencies(&self) -> bool {
        self.cached_snapshot
            .as_ref()
            .is_some_and(|cached| cached.waiting.is_some())
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty()
            && self.joining.is_empty()
            && self.awaiting_snapshot.is_empty()
            && self.job.as_ref().is_none_or(|job| job.joiners.is_empty())
    }
}

#[derive(Default)]
pub(crate) struct Rooms {
    rooms: BTreeMap<String, Room>,
    /// CRDT updates imported so far (for metrics).
    updates_accepted: u64,
    /// Large changes being checked off the protocol thread, per connection.
    checks: ChangeChecks,
    /// Changes refused when their room imported them, over every room ever loaded (each
    /// room's `RoomDoc` counts into it).
    refused_on_import: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Rooms {
    pub(crate) fn pending_persists(&self) -> usize {
        self.rooms.values().filter(|room| room.saving()).count()
    }
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.rooms.keys()).finish()
    }
}

impl Server {
    /// Rooms currently in memory.
    pub fn room_count(&self) -> usize {
        self.rooms.rooms.len()
    }

    /// CRDT updates accepted into rooms since the server started.
    pub fn crdt_updates_accepted(&self) -> u64 {
        self.rooms.updates_accepted
    }

    /// Snapshots of every loaded room with changes not known to be saved. For a driver
    /// salvaging rooms after the machine was poisoned (it imports their waiting changes and
    /// reads them).
    pub fn unsaved_room_snapshots(&mut self) -> Vec<(String, Vec<u8>)> {
        self.rooms
            .rooms
            .iter_mut()
            .filter(|(_, room)| room.loaded() && room.version > room.saved_version)
            .map(|(id, room)| (id.clone(), room.doc.snapshot_now()))
            .collect()
    }

    /// A snapshot of a loaded room's current state (for observers and tests): every change
    /// the room accepted, the ones waiting for their import imported first.
    pub fn room_snapshot(&mut self, room_id: &str) -> Option<Vec<u8>> {
        let room = self.rooms.rooms.get_mut(room_id)?;
        room.loaded().then(|| room.doc.snapshot_now())
    }

    /// Changes that passed the check on acceptance and that their room's document refused
    /// when importing them (see `rooms/doc.rs`), since the server started.
    pub fn crdt_changes_refused_on_import(&self) -> u64 {
        self.rooms
            .refused_on_import
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The loaded room a connection's CRDT updates go to, if any. The one hook the fuzzing
    /// harness (`tests/fuzzing`) needs beyond the protocol: it attributes an update that was
    /// applied but not acknowledged (the ack closed the sender at its cap) to its room.
    #[doc(hidden)]
    pub fn update_room_of(&self, conn: ConnId) -> Option<String> {
        self.joined_room(conn).ok()
    }

    fn new_doc(&mut self) -> LoroDoc {
        let doc = LoroDoc::new();
        // The server never edits, but a deterministic peer id keeps its exports reproducible.
        let _ = doc.set_peer_id(self.ids.next_peer_id());
        doc
    }

    pub(crate) fn join_room(&mut self, conn: ConnId, room_id: String, now: Millis) {
        if !self.config.sync_enabled {
            self.send_error(conn, ProtocolError::SyncDisabled, None, now);
            return;
        }
        let previous = self
            .conns
            .get(&conn)
            .and_then(|c| c.room().map(str::to_string));
        if let Some(previous) = previous.filter(|p| *p != room_id) {
            self.leave_room(conn, &previous, now);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.set_room(Some(room_id.clone()));
        }
        if !self.rooms.rooms.contains_key(&room_id) {
            let doc = self.new_doc();
            let doc = RoomDoc::new(doc, self.rooms.refused_on_import.clone());
            self.rooms.rooms.insert(room_id.clone(), Room::new(doc));
            self.push(Effect::LoadSnapshot {
                room_id: room_id.clone(),
            });
        }
        let room = self.rooms.rooms.get_mut(&room_id).expect("inserted above");
        if !room.loaded() {
            if !room.joining.contains(&conn) {
                room.joining.push(conn);
            }
            return;
        }
        // A member joining again gets the room's state again, like a new joiner: relays
        // resume after its snapshot.
        room.members.remove(&conn);
        if !room.awaiting_snapshot.contains(&conn) {
            room.awaiting_snapshot.push(conn);
        }
        self.timers.cancel(&TimerKey::RoomEvict(room_id.clone()));
        self.run_doc_job(&room_id, now);
    }

    fn send_joined(&mut self, conn: ConnId, room_id: String, snapshot: Vec<u8>, now: Millis) {
        self.send(
            conn,
            ServerMessage::CrdtJoined {
                room_id: room_id.clone(),
            },
            now,
        );
        self.send(conn, ServerMessage::CrdtSnapshot { room_id, snapshot }, now);
    }

    /// `conn` leaves `room_id` (join elsewhere, or disconnect). The last member out saves.
    pub(crate) fn leave_room(&mut self, conn: ConnId, room_id: &str, now: Millis) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        room.members.remove(&conn);
        room.joining.retain(|c| *c != conn);
        room.awaiting_snapshot.retain(|c| *c != conn);
        if room.held_back.remove(&conn) {
            self.budget.let_go(conn, HoldBack::RoomBacklog);
        }
        if let Some(job) = &mut room.job {
            job.joiners.retain(|c| *c != conn);
        }
        room.queued_snapshots.retain(|(c, _)| *c != conn);
        if room.loaded() && room.is_idle() {
            self.after_room_quiet(room_id, now);
        }
    }

    /// A loaded room with nobody in it: schedule its eviction once it is saved. The save
    /// itself is left to the debounce timer (armed by the last change): a room emptied and
    /// joined again at every page load would otherwise export and write its whole snapshot
    /// each time (a cost that grows with its history, on the CPU the acknowledgements need,
    /// ahead of the appends they wait for with a durable log). Nothing is at risk meanwhile:
    /// with a durable log every acknowledged change is stored already (the save only compacts
    /// the log), without one (`:memory:`) nothing outlives the process, and shutdown saves
    /// every changed room.
    fn after_room_quiet(&mut self, room_id: &str, now: Millis) {
        let Some(room) = self.rooms.rooms.get(room_id) else {
            return;
        };
        if room.needs_save() {
            return; // the debounce timer saves it; eviction follows the save
        }
        if !room.saving() {
            let at = now.plus(self.config.room_idle_evict_ms);
            self.timers
                .set(TimerKey::RoomEvict(room_id.to_string()), at);
        }
    }

    /// What storage held for a room being loaded: a job imports it (the stored snapshot,
    /// then every logged update, one by one), and its report finishes the load
    /// (`finish_load`).
    pub(crate) fn room_loaded(
        &mut self,
        room_id: &str,
        result: Result<StoredRoom, String>,
        now: Millis,
    ) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        if room.load != Load::Reading {
            return;
        }
        let stored = match result {
            Ok(stored) => stored,
            Err(message) => return self.fail_load(room_id, message, now),
        };
        room.load = Load::Importing;
        room.log_seq = stored.last_seq;
        room.shared_log_position = stored.shared_log_position;
        let replayed = !stored.updates.is_empty();
        let has_snapshot = stored.snapshot.is_some();
        // The stored snapshot is the room's state when nothing was logged after it: the
        // joiners get it as it is, without exporting the document again.
        let stored_snapshot = stored.snapshot.map(Bytes::from);
        let cached = stored_snapshot.clone().filter(|_| !replayed);
        let changes = stored_snapshot
            .into_iter()
            .chain(stored.updates.into_iter().map(Bytes::from));
        for change in changes {
            room.doc.accept(ChangeFrom::Storage, change);
        }
        if replayed {
            // The log holds changes the stored snapshot lacks: the room saves once loaded,
            // which compacts it.
            room.version += 1;
        }
        // Without a snapshot to serve as it is, the job exports one for the joiners.
        let export = cached.is_none();
        let purpose = JobPurpose {
            version: room.version,
            load: Some(LoadPurpose {
                has_snapshot,
                cached,
            }),
            ..JobPurpose::default()
        };
        self.start_doc_job(room_id, export, purpose);
    }

    /// Storage could not give the room's state: the joiners are refused (rather than served,
    /// and later overwritten, an empty room).
    fn fail_load(&mut self, room_id: &str, message: String, now: Millis) {
        let Some(room) = self.rooms.rooms.remove(room_id) else {
            return;
        };
        for conn in room.joining {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.set_room(None);
            }
            let error = ProtocolError::RoomLoadFailed(message.clone());
            self.send_error(conn, error, None, now);
        }
    }

    /// The room `conn` may send updates to, or the error to answer.
    fn joined_room(&self, conn: ConnId) -> Result<String, ProtocolError> {
        if !self.config.sync_enabled {
            return Err(ProtocolError::SyncDisabled);
        }
        let room_id = self
            .conns
            .get(&conn)
            .and_then(|c| c.room().map(str::to_string))
            .ok_or(ProtocolError::NotJoined)?;
        match self.rooms.rooms.get(&room_id) {
            Some(room) if room.loaded() => Ok(room_id),
            Some(_) => Err(ProtocolError::RoomLoading),
            None => Err(ProtocolError::NotJoined),
        }
    }

    pub(crate) fn room_update(&mut self, conn: ConnId, update: Bytes, now: Millis) {
        let room_id = match self.joined_room(conn) {
            Ok(room_id) => room_id,
            Err(error) => return self.send_error(conn, error, None, now),
        };
        // Checked now (or off the thread if large: `checks.rs`), imported with the other
        // changes accepted meanwhile (`doc.rs`).
        match self.check_change(conn, &room_id, update) {
            Some(Ok(update)) => self.accept_checked_change(conn, &room_id, update, now),
            Some(Err(e)) => self.send_error(conn, ProtocolError::InvalidUpdate(e), None, now),
            None => {}
        }
    }

    /// A member's change that Loro decodes: relayed to the other members, acknowledged (at
    /// once, or once logged), imported by the room's next job.
    fn accept_checked_change(&mut self, conn: ConnId, room_id: &str, update: Bytes, now: Millis) {
        let room_id = room_id.to_string();
        let Some(room) = self.rooms.rooms.get_mut(&room_id) else {
            return;
        };
        if room.doc.accept(ChangeFrom::Member(conn), update.clone()) {
            self.timers.set(TimerKey::RoomImport(room_id.clone()), now);
        }
        let cap = self.config.limits.max_unimported_changes_per_room;
        if room.doc.imports_behind(cap) && room.held_back.insert(conn) {
            self.budget.hold_back(conn, HoldBack::RoomBacklog);
        }
        self.rooms.updates_accepted += 1;
        // Counted as a change even if it turns out to hold nothing new: a save too many.
        self.mark_changed(&room_id, now);
        self.relay(&room_id, std::slice::from_ref(&update), Some(conn), now);
        let ack = ServerMessage::CrdtUpdateAck {
            room_id: room_id.clone(),
        };
        self.acknowledge_when_durable(conn, &room_id, update, ack, now);
    }

    /// Acknowledges an accepted change: at once, or (with `durable_room_log`) once the room's
    /// log holds it, so an acknowledged change survives a crash.
    fn acknowledge_when_durable(
        &mut self,
        conn: ConnId,
        room_id: &str,
        change: Bytes,
        ack: ServerMessage,
        now: Millis,
    ) {
        if !self.config.durable_room_log {
            return self.send(conn, ack, now);
        }
        if !self.rooms.rooms.contains_key(room_id) {
            return;
        }
        let held = self.budget.hold_arriving(conn);
        let room = self.rooms.rooms.get_mut(room_id).expect("checked above");
        room.log_seq += 1;
        let seq = room.log_seq;
        room.pending_acks.push((seq, conn, ack, held));
        self.push(Effect::AppendRoomUpdate {
            room_id: room_id.to_string(),
            seq,
            update: change,
        });
    }

    pub(crate) fn room_update_appended(
        &mut self,
        room_id: &str,
        seq: u64,
        result: Result<(), String>,
        now: Millis,
    ) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        let split = room.pending_acks.partition_point(|(s, _, _, _)| *s <= seq);
        let settled: Vec<_> = room.pending_acks.drain(..split).collect();
        for (_, conn, ack, held) in settled {
            self.budget.release(conn, held);
            match &result {
                Ok(()) => self.send(conn, ack, now),
                Err(e) => {
                    self.send_error(conn, ProtocolError::UpdateNotSaved(e.clone()), None, now)
                }
            }
        }
    }

    pub(crate) fn client_snapshot(
        &mut self,
        conn: ConnId,
        room_id: String,
        data: Vec<u8>,
        now: Millis,
    ) {
        if !self.config.sync_enabled {
            return self.send_error(conn, ProtocolError::SyncDisabled, None, now);
        }
        if !self.config.allow_client_snapshots {
            return self.send_error(conn, ProtocolError::ClientSnapshotsDisabled, None, now);
        }
        match self.conns.get(&conn).and_then(Conn::room) {
            None => return self.send_error(conn, ProtocolError::NotJoined, None, now),
            Some(joined) if joined != room_id => {
                return self.send_error(conn, ProtocolError::WrongRoom, None, now)
            }
            Some(_) => {}
        }
        let Some(room) = self.rooms.rooms.get_mut(&room_id) else {
            return self.send_error(conn, ProtocolError::NotJoined, None, now);
        };
        // Seeding reads and imports into the document: after the load, or after the job
        // holding it.
        if !room.loaded() || room.doc.is_lent() {
            room.queued_snapshots.push((conn, data));
            return;
        }
        self.apply_client_snapshot(conn, &room_id, data, now);
    }

    /// Other replicas' changes imported on this thread (not by a job) that held something
    /// new, to every member.
    fn relay_new_from_replicas(&mut self, room_id: &str, now: Millis) {
        if let Some(room) = self.rooms.rooms.get_mut(room_id) {
            let changes = room.doc.take_new_from_replicas();
            self.relay(room_id, &changes, None, now);
        }
    }

    /// `changes` to every member of `room_id` but `except` (who sent them).
    pub(super) fn relay(
        &mut self,
        room_id: &str,
        changes: &[Bytes],
        except: Option<ConnId>,
        now: Millis,
    ) {
        let Some(room) = self.rooms.rooms.get(room_id) else {
            return;
        };
        let members: Vec<ConnId> = room
            .members
            .iter()
            .copied()
            .filter(|member| Some(*member) != except)
            .collect();
        for change in changes {
            for member in &members {
                self.send_frame(*member, Frame::Binary(change.clone()), now);
            }
        }
    }

    /// Seeds an empty room from a client's snapshot and relays it to the other members.
    fn apply_client_snapshot(&mut self, conn: ConnId, room_id: &str, data: Vec<u8>, now: Millis) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        let empty = room.doc.is_empty();
        // Other replicas' changes the emptiness check imported reach the members first.
        self.relay_new_from_replicas(room_id, now);
        if !empty {
            return self.send_error(conn, ProtocolError::RoomNotEmpty, None, now);
        }
        // Validate on a scratch document so a rejected snapshot cannot touch the room, then
        // merge it into the room rather than replacing the document: updates the room already
        // accepted without any op becoming visible (pending on missing dependencies, or
        // empty changes) are kept, and may be completed by the snapshot.
        let scratch = self.new_doc();
        if let Err(e) = scratch.import(&data) {
            let error = ProtocolError::InvalidSnapshot(e.to_string());
            return self.send_error(conn, error, None, now);
        }
        let room = self.rooms.rooms.get_mut(room_id).expect("checked above");
        if let Err(e) = room.doc.import_now(&data) {
            let error = ProtocolError::InvalidSnapshot(e);
            return self.send_error(conn, error, None, now);
        }
        self.mark_changed(room_id, now);
        let data = Bytes::from(data);
        self.relay(room_id, std::slice::from_ref(&data), Some(conn), now);
        let ack = ServerMessage::CrdtSnapshotAck {
            room_id: room_id.to_string(),
        };
        self.acknowledge_when_durable(conn, room_id, data, ack, now);
    }
}
