//! Large CRDT changes checked off the protocol thread.
//!
//! A change is checked (decoded by Loro on a scratch document) before it is relayed and
//! acknowledged, and that check costs time in proportion to the change: a client that sends
//! its whole history (a client back with a long offline session, or one that re-sends every
//! change since an empty version) would hold up every connection for as long. So a change
//! larger than `Limits::max_change_bytes_checked_inline` is checked by the driver on a thread
//! of its own (`Effect::CheckRoomChange`, reported with `handle_room_change_checked`), and
//! meanwhile its connection is not read and the frames it had already sent wait here, in
//! order, so everything a connection sends is still handled in the order it was sent.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::budget::HoldBack;
use crate::codec::Frame;
use crate::effect::Effect;
use crate::ids::{ConnId, Millis};
use crate::server::Server;
use crate::ProtocolError;

use super::doc::RoomDoc;

/// The connections with a change being checked off the thread.
#[derive(Debug, Default)]
pub(crate) struct ChangeChecks {
    checking: BTreeMap<ConnId, Checking>,
    next_id: u64,
}

/// A connection's change being checked, and what it sent after it.
#[derive(Debug)]
struct Checking {
    id: u64,
    room_id: String,
    change: Bytes,
    /// The change's bytes, held in the connection's inbound budget until the check reports.
    held: usize,
    /// Frames the connection sent after the change, with the budget bytes each holds.
    deferred: VecDeque<(Frame, usize)>,
}

impl ChangeChecks {
    /// Whether a change of `conn` is being checked (what it sends waits for it).
    pub(crate) fn is_checking(&self, conn: ConnId) -> bool {
        self.checking.contains_key(&conn)
    }

    fn start(&mut self, conn: ConnId, room_id: String, change: Bytes, held: usize) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let checking = Checking {
            id,
            room_id,
            change,
            held,
            deferred: VecDeque::new(),
        };
        self.checking.insert(conn, checking);
        id
    }

    fn defer(&mut self, conn: ConnId, frame: Frame, held: usize) {
        if let Some(checking) = self.checking.get_mut(&conn) {
            checking.deferred.push_back((frame, held));
        }
    }

    /// The check `id` of `conn` reported: what it was for. `None` for a stale report.
    fn finish(&mut self, conn: ConnId, id: u64) -> Option<Checking> {
        match self.checking.get(&conn) {
            Some(checking) if checking.id == id => self.checking.remove(&conn),
            _ => None,
        }
    }

    /// The connection is gone: the budget bytes its change and deferred frames held.
    fn forget(&mut self, conn: ConnId) -> usize {
        self.checking.remove(&conn).map_or(0, |checking| {
            checking.held
                + checking
                    .deferred
                    .iter()
                    .map(|(_, held)| held)
                    .sum::<usize>()
        })
    }
}

/// Whether Loro decodes `change` (a CRDT update or snapshot) alone: the check a room makes
/// before it relays and acknowledges a change. For a driver running
/// `Effect::CheckRoomChange`.
pub fn check_room_change(change: &[u8]) -> Result<(), String> {
    RoomDoc::check(change)
}

impl Server {
    /// Whether `conn`'s frame waits for the check of a change it sent before (kept in
    /// order, with its bytes held in the connection's budget).
    pub(crate) fn defer_while_checking(&mut self, conn: ConnId, frame: Frame) -> Option<Frame> {
        if !self.rooms.checks.is_checking(conn) {
            return Some(frame);
        }
        let held = self.budget.hold_arriving(conn);
        self.rooms.checks.defer(conn, frame, held);
        None
    }

    /// Checks `change` here if it is small enough, or starts its check off the thread
    /// (`None` then: the report continues with `room_change_checked`).
    pub(super) fn check_change(
        &mut self,
        conn: ConnId,
        room_id: &str,
        change: Bytes,
    ) -> Option<Result<Bytes, String>> {
        let inline = self.config.limits.max_change_bytes_checked_inline;
        if inline.is_none_or(|max| change.len() <= max) {
            return Some(RoomDoc::check(&change).map(|()| change));
        }
        let held = self.budget.hold_arriving(conn);
        let id = self
            .rooms
            .checks
            .start(conn, room_id.to_string(), change.clone(), held);
        self.budget.hold_back(conn, HoldBack::ChangeChecked);
        self.push(Effect::CheckRoomChange {
            conn,
            check_id: id,
            change,
        });
        None
    }

    /// The driver's report of the check `check_id` of `conn`'s change: accepted or refused
    /// as it would have been at once, then the frames it sent meanwhile, in order (one of
    /// them may start another check, which the rest wait for).
    pub(crate) fn room_change_checked(
        &mut self,
        conn: ConnId,
        check_id: u64,
        result: Result<(), String>,
        now: Millis,
    ) {
        let Some(checking) = self.rooms.checks.finish(conn, check_id) else {
            return;
        };
        self.budget.release(conn, checking.held);
        self.budget.let_go(conn, HoldBack::ChangeChecked);
        match (result, self.joined_room(conn)) {
            // Nothing this connection sent came between the change and this report: it is
            // in the same room, unless the room stopped taking changes meanwhile.
            (Ok(()), Ok(room_id)) if room_id == checking.room_id => {
                self.budget.arriving(checking.change.len());
                self.accept_checked_change(conn, &room_id, checking.change, now);
            }
            (Ok(()), Ok(_)) => {}
            (Ok(()), Err(error)) => self.send_error(conn, error, None, now),
            (Err(e), _) => self.send_error(conn, ProtocolError::InvalidUpdate(e), None, now),
        }
        for (frame, held) in checking.deferred {
            self.budget.release(conn, held);
            self.frame(conn, frame, now);
        }
    }

    /// The connection is gone: its check's report will find nothing.
    pub(crate) fn forget_checks_of(&mut self, conn: ConnId) {
        let held = self.rooms.checks.forget(conn);
        self.budget.release(conn, held);
        self.budget.let_go(conn, HoldBack::ChangeChecked);
    }
}
