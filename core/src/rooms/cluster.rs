//! Cluster mode: changes other replicas appended to a room's shared log, the log position a
//! snapshot covers, and republishing every room after Redis came back. (A child of `rooms`:
//! it reads the room's fields.)

use super::*;

impl Server {
    /// Cluster mode: a change another replica appended to the room's shared log, imported
    /// by the room's next job (off this thread) and relayed to every member once imported,
    /// if it held something new (nobody here sent it, so nobody is acknowledged). Taken from
    /// the moment storage was read (the load's job imports that first). `false` when the
    /// room is not loading or loaded here.
    pub(crate) fn remote_room_update(&mut self, room_id: &str, update: Bytes, now: Millis) -> bool {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return false;
        };
        if room.load == Load::Reading {
            return false;
        }
        if room.doc.accept(ChangeFrom::Replica, update) && room.loaded() {
            self.timers
                .set(TimerKey::RoomImport(room_id.to_string()), now);
        }
        self.mark_changed(room_id, now);
        true
    }

    /// Cluster mode: every entry of the room's shared log up to `position` has been handed
    /// to the core (imported, or applied here before it was appended).
    pub(crate) fn shared_log_position(&mut self, room_id: &str, position: String) {
        if let Some(room) = self
            .rooms
            .rooms
            .get_mut(room_id)
            .filter(|r| r.load != Load::Reading)
        {
            room.shared_log_position = Some(position);
        }
    }

    /// Cluster mode: the shared log may have lost entries (the broker restarted): every
    /// loaded room's whole state goes to it once more, so every replica converges.
    pub(crate) fn republish_rooms(&mut self) {
        let rooms: Vec<(String, Vec<u8>)> = self
            .rooms
            .rooms
            .iter()
            .filter(|(_, room)| room.loaded())
            .map(|(id, room)| (id.clone(), room.doc.snapshot_now()))
            .collect();
        for (room_id, snapshot) in rooms {
            self.push(Effect::RepublishRoom {
                room_id,
                state: Bytes::from(snapshot),
            });
        }
    }
}
