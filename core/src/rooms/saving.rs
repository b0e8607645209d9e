//! When a room is saved and unloaded: an accepted change arms the save timers (debounce,
//! max latency), a save emits `PersistSnapshot`, its report settles the room, and an idle,
//! saved room leaves memory. (A child of `rooms`: it reads the room's fields.)

use super::*;

impl Server {
    /// An accepted change: count it and (re)arm the save timers.
    pub(super) fn mark_changed(&mut self, room_id: &str, now: Millis) {
        if let Some(room) = self.rooms.rooms.get_mut(room_id) {
            room.version += 1;
        }
        self.arm_save_timers(room_id, now);
    }

    /// Debounce from `now`; max latency from the first unsaved change (armed once).
    pub(super) fn arm_save_timers(&mut self, room_id: &str, now: Millis) {
        let debounce_at = now.plus(self.config.save_debounce_ms);
        let latency_at = now.plus(self.config.max_save_latency_ms);
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        room.debounce_due = Some(debounce_at);
        let arm_latency = room.latency_due.is_none();
        if arm_latency {
            room.latency_due = Some(latency_at);
        }
        self.timers
            .set(TimerKey::RoomDebounce(room_id.to_string()), debounce_at);
        if arm_latency {
            self.timers
                .set(TimerKey::RoomMaxLatency(room_id.to_string()), latency_at);
        }
    }

    /// Saves the room: its job exports the document with every change accepted until it
    /// starts, and its report emits `PersistSnapshot` (`jobs.rs`).
    pub(super) fn persist_room(&mut self, room_id: &str, now: Millis) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        room.save_wanted = true;
        room.debounce_due = None;
        room.latency_due = None;
        for key in [
            TimerKey::RoomDebounce(room_id.to_string()),
            TimerKey::RoomMaxLatency(room_id.to_string()),
        ] {
            self.timers.cancel(&key);
        }
        self.run_doc_job(room_id, now);
    }

    pub(crate) fn persist_all_dirty_rooms(&mut self, now: Millis) {
        let dirty: Vec<String> = self
            .rooms
            .rooms
            .iter()
            .filter(|(_, room)| room.loaded() && room.needs_save() && !room.saving())
            .map(|(id, _)| id.clone())
            .collect();
        for room_id in dirty {
            self.persist_room(&room_id, now);
        }
    }

    pub(crate) fn snapshot_persisted(
        &mut self,
        room_id: &str,
        version: u64,
        result: Result<(), String>,
        now: Millis,
    ) {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return;
        };
        if room.persisting != Some(version) {
            return;
        }
        room.persisting = None;
        if result.is_ok() {
            room.saved_version = room.saved_version.max(version);
        }
        let (needs_save, idle) = (room.needs_save(), room.is_idle());
        match (needs_save, self.shutting_down) {
            // Changed while saving, or the save failed: try again after the debounce.
            (true, false) => self.arm_save_timers(room_id, now),
            // At shutdown no timer will fire: save what changed during the save right away
            // (a failed save is not retried, so shutdown cannot loop on a broken database).
            (true, true) if result.is_ok() => self.persist_room(room_id, now),
            (true, true) => {}
            (false, _) if idle => self.after_room_quiet(room_id, now),
            (false, _) => {}
        }
    }

    /// A debounce or max-latency timer of `room_id` fired.
    pub(crate) fn room_save_due(&mut self, room_id: &str, now: Millis) {
        let Some(room) = self.rooms.rooms.get(room_id) else {
            return;
        };
        let due = [room.debounce_due, room.latency_due]
            .into_iter()
            .flatten()
            .any(|at| at <= now);
        if due && room.loaded() && room.needs_save() && !room.saving() {
            self.persist_room(room_id, now);
        }
    }

    /// The changes `room_id` accepted since its last import go to a job (see `doc.rs`):
    /// after the driver sent their relays and acknowledgements.
    pub(crate) fn room_import_due(&mut self, room_id: &str, now: Millis) {
        self.run_doc_job(room_id, now);
    }

    /// The idle-eviction timer of `room_id` fired.
    pub(crate) fn room_evict_due(&mut self, room_id: &str) {
        let evictable = self.rooms.rooms.get(room_id).is_some_and(|room| {
            room.loaded()
                && room.is_idle()
                && !room.needs_save()
                && !room.saving()
                && !room.doc.is_lent()
                && !room.doc.has_pending()
                && (self.config.durable_room_log || !room.waiting_for_dependencies())
        });
        if evictable {
            let room = self.rooms.rooms.remove(room_id).expect("evictable");
            // Appends still in flight (their senders left the room): their bytes are no
            // longer held by anything.
            for (_, conn, _, held) in room.pending_acks {
                self.budget.release(conn, held);
            }
            self.push(Effect::RoomUnloaded {
                room_id: room_id.to_string(),
            });
        }
    }
}
