//! Cluster mode: changes other replicas appended to a room's shared log, the log position a
//! snapshot covers, and republishing every room after Redis came back. (A child of `rooms`:
//! it reads the room's fields.)

use super::*;

impl Server {
    /// Cluster mode: a change another replica appended to the room's shared log. Imported
    /// and relayed to every member here (nobody here sent it, so nobody is acknowledged).
    /// `false` when the room is not loaded here or Loro rejects the bytes.
    pub(crate) fn remote_room_update(&mut self, room_id: &str, update: Bytes, now: Millis) -> bool {
        let Some(room) = self.rooms.rooms.get_mut(room_id) else {
            return false;
        };
        if !room.loaded {
            return false;
        }
        if room.doc.is_lent() {
            // Imported (and relayed if new) once the job holding the document reports.
            room.queued_remote.push(update);
            return true;
        }
        match room.doc.import_now(&update) {
            Err(_) => return false,
            // Already here (its import is idempotent): nothing to relay.
            Ok(false) => return true,
            Ok(true) => {}
        }
        let members: Vec<ConnId> = room.members.iter().copied().collect();
        self.mark_changed(room_id, now);
        let frame = Frame::Binary(update);
        for member in members {
            self.send_frame(member, frame.clone(), now);
        }
        true
    }

    /// Cluster mode: every entry of the room's shared log up to `position` has been handed
    /// to the core (imported, or applied here before it was appended).
    pub(crate) fn shared_log_position(&mut self, room_id: &str, position: String) {
        if let Some(room) = self.rooms.rooms.get_mut(room_id).filter(|r| r.loaded) {
            room.shared_log_position = Some(position);
        }
    }

    /// Cluster mode: the shared log may have lost entries (the broker restarted): every
    /// loaded room's whole state goes to it once more, so every replica converges.
    pub(crate) fn republish_rooms(&mut self) {
        let rooms: Vec<(String, Vec<u8>)> = self
            .rooms
            .rooms
            .iter_mut()
            .filter(|(_, room)| room.loaded)
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
