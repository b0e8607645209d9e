//! Jobs on a room's document (`doc.rs`): when one starts (a load, pending changes to import,
//! joiners waiting for a snapshot, a save), and what its report settles: the load finishes,
//! other replicas' new changes reach the members, joiners become members with the snapshot
//! and the changes accepted while it ran, the save goes to storage, and the seeds that waited
//! for the document are applied. (A child of `rooms`: it reads the room's fields.)

use super::doc::PendingChange;
use super::*;

/// What a job was started for, beside importing the pending changes.
#[derive(Debug, Default)]
pub(super) struct JobPurpose {
    /// Joiners to send the job's snapshot to.
    pub joiners: Vec<ConnId>,
    /// The save the job's snapshot is for.
    pub save: Option<SaveTicket>,
    /// The room's `version` when the job started: its snapshot holds every change until it.
    pub version: u64,
    /// The job imports what storage held for the room.
    pub load: Option<LoadPurpose>,
}

/// A load's job: what its report needs to finish the load.
#[derive(Debug)]
pub(super) struct LoadPurpose {
    /// The first stored change is a snapshot (for the error naming a corrupt one).
    pub has_snapshot: bool,
    /// The stored snapshot, when it is the room's whole state (nothing logged after it):
    /// joiners get it without the job exporting the document.
    pub cached: Option<Bytes>,
}

/// A snapshot a job exported, kept for joiners while the room's `version` stays the same.
#[derive(Debug, Clone)]
pub(super) struct CachedSnapshot {
    pub version: u64,
    pub snapshot: Bytes,
    /// The changes waiting for a dependency that the snapshot leaves out (`RoomDocWorked`).
    pub waiting: Option<Bytes>,
}

/// A save's bookkeeping, taken when its job starts: the job holds every change accepted
/// until then, so the snapshot is of this version, log position and shared-log position.
#[derive(Debug)]
pub(super) struct SaveTicket {
    version: u64,
    log_seq: u64,
    covers: Option<String>,
}

impl Server {
    /// Starts a job on `room_id`'s document if it has work and no job holds it already (the
    /// report of the running one starts the next).
    pub(super) fn run_doc_job(&mut self, room_id: &str, now: Millis) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        if !room.loaded() || room.doc.is_lent() {
            return;
        }
        let save = room.save_wanted;
        if !save && !room.doc.has_pending() {
            if room.awaiting_snapshot.is_empty() {
                return;
            }
            let cached = room.cached_snapshot.as_ref();
            if let Some(cached) = cached.filter(|cached| cached.version == room.version) {
                let cached = cached.clone();
                let joiners = std::mem::take(&mut room.awaiting_snapshot);
                return self.settle_joiners(room_id, joiners, &cached, now);
            }
        }
        let joiners = std::mem::take(&mut room.awaiting_snapshot);
        let export = save || !joiners.is_empty();
        let save = save.then(|| {
            room.save_wanted = false;
            room.persisting = Some(room.version);
            SaveTicket {
                version: room.version,
                log_seq: room.log_seq,
                covers: room.shared_log_position.clone(),
            }
        });
        let purpose = JobPurpose {
            joiners,
            save,
            version: room.version,
            load: None,
        };
        self.timers
            .cancel(&TimerKey::RoomImport(room_id.to_string()));
        self.start_doc_job(room_id, export, purpose);
    }

    /// Lends `room_id`'s document to a job for `purpose` (exporting a snapshot if `export`)
    /// and asks the driver to run it. The caller has checked that the document is home.
    pub(super) fn start_doc_job(&mut self, room_id: &str, export: bool, purpose: JobPurpose) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        let (job_id, job) = room.doc.lend(export).expect("the document is home");
        room.job = Some(purpose);
        self.push(Effect::RunRoomDocJob {
            room_id: room_id.to_string(),
            job_id,
            job,
        });
    }

    /// The driver's report of job `job_id` on `room_id`'s document.
    pub(crate) fn room_doc_worked(
        &mut self,
        room_id: &str,
        job_id: u64,
        worked: RoomDocWorked,
        now: Millis,
    ) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        if !room.doc.returned(job_id, &worked) {
            return;
        }
        let purpose = room.job.take().unwrap_or_default();
        // Before the joiners become members: the job's snapshot holds these already.
        self.relay(room_id, &worked.new_from_replicas, None, now);
        if let Some(load) = purpose.load {
            return self.finish_load(room_id, purpose.version, load, worked, now);
        }
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        if let Some(snapshot) = worked.snapshot {
            let cached = CachedSnapshot {
                version: purpose.version,
                snapshot: Bytes::from(snapshot),
                waiting: worked.waiting.map(Bytes::from),
            };
            room.cached_snapshot = Some(cached.clone());
            self.settle_joiners(room_id, purpose.joiners, &cached, now);
            if let Some(ticket) = purpose.save {
                // Changes waiting for a dependency are not in the snapshot: the log that
                // holds them is kept whole (nothing trimmed), so a reload has them again.
                let keep_log = cached.waiting.is_some();
                self.push(Effect::PersistSnapshot {
                    room_id: room_id.to_string(),
                    snapshot: cached.snapshot.to_vec(),
                    version: ticket.version,
                    log_seq: if keep_log { 0 } else { ticket.log_seq },
                    covers: if keep_log { None } else { ticket.covers },
                });
            }
        }
        self.doc_came_home(room_id, now);
    }

    /// The load's job reported: the room is loaded (its joiners get the job's snapshot, or
    /// the stored one), or storage held something Loro refuses and the joiners are refused.
    fn finish_load(
        &mut self,
        room_id: &str,
        version: u64,
        load: LoadPurpose,
        worked: RoomDocWorked,
        now: Millis,
    ) {
        if let Some((place, error)) = worked.load_refused {
            let message = match place.checked_sub(usize::from(load.has_snapshot)) {
                None => format!("stored snapshot is corrupt: {error}"),
                Some(update) => format!("logged update {} is corrupt: {error}", update + 1),
            };
            return self.fail_load(room_id, message, now);
        }
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        room.load = Load::Done;
        let snapshot = worked.snapshot.map(Bytes::from).or(load.cached);
        room.cached_snapshot = snapshot.map(|snapshot| CachedSnapshot {
            version,
            snapshot,
            waiting: worked.waiting.map(Bytes::from),
        });
        let joining = std::mem::take(&mut room.joining);
        room.awaiting_snapshot.extend(joining);
        // Replayed updates (the save compacts the log), or other replicas' changes taken
        // while loading.
        if room.needs_save() {
            self.arm_save_timers(room_id, now);
        }
        self.doc_came_home(room_id, now);
    }

    /// A job reported and the document is home: senders held back are read again if the
    /// imports caught up, the next job starts if there is work (or joiners get the cached
    /// snapshot), the seeds that waited are applied once the document stays home, and an
    /// empty room heads for its save and eviction.
    fn doc_came_home(&mut self, room_id: &str, now: Millis) {
        self.let_senders_go(room_id);
        self.run_doc_job(room_id, now);
        self.apply_queued_seeds(room_id, now);
        if self
            .rooms
            .rooms
            .get(room_id)
            .is_some_and(|room| room.is_idle() && !room.doc.is_lent())
        {
            self.after_room_quiet(room_id, now);
        }
    }

    /// Joiners still in the room become members: the snapshot, the changes it leaves out
    /// because they wait for a dependency, then the changes accepted while the job ran
    /// (relayed to members meanwhile, not in the snapshot), but their own.
    fn settle_joiners(
        &mut self,
        room_id: &str,
        joiners: Vec<ConnId>,
        cached: &CachedSnapshot,
        now: Millis,
    ) {
        let still_here: Vec<ConnId> = joiners
            .into_iter()
            .filter(|conn| {
                self.conns
                    .get(conn)
                    .is_some_and(|c| c.room() == Some(room_id))
            })
            .collect();
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        room.members.extend(still_here.iter().copied());
        // Members' changes were relayed on acceptance; other replicas' are relayed when
        // imported (to the members then, these joiners included).
        let since: Vec<PendingChange> = room
            .doc
            .pending()
            .iter()
            .filter(|change| change.sender().is_some())
            .cloned()
            .collect();
        for conn in still_here {
            self.send_joined(conn, room_id.to_string(), cached.snapshot.to_vec(), now);
            if let Some(waiting) = &cached.waiting {
                self.send_frame(conn, Frame::Binary(waiting.clone()), now);
            }
            for change in since.iter().filter(|change| change.sender() != Some(conn)) {
                self.send_frame(conn, Frame::Binary(change.bytes.clone()), now);
            }
        }
    }

    /// The room's imports caught up below `max_unimported_changes_per_room`: the senders held
    /// back are read again.
    fn let_senders_go(&mut self, room_id: &str) {
        let cap = self.config.limits.max_unimported_changes_per_room;
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        if room.doc.imports_behind(cap) {
            return;
        }
        for conn in std::mem::take(&mut room.held_back) {
            self.budget.let_go(conn, HoldBack::RoomBacklog);
        }
    }

    /// Seeds that waited for the load or a job, in arrival order, while the document is
    /// home (a job started meanwhile keeps them waiting for its report).
    fn apply_queued_seeds(&mut self, room_id: &str, now: Millis) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        if !room.loaded() || room.doc.is_lent() {
            return;
        }
        for (conn, data) in std::mem::take(&mut room.queued_snapshots) {
            self.apply_client_snapshot(conn, room_id, data, now);
        }
    }
}
