//! The inbound budget (PROTOCOL §7): bytes a peer sent whose work is not finished yet — the
//! SQL of queries queued or running, upload payloads, HTTP bodies, CRDT changes waiting for
//! their durable append — counted per connection and in total. A connection at its budget
//! (or any connection holding bytes while the total is at its budget) is told to stop being
//! read (`PauseReading`): TCP backpressure instead of buffering or closing. Reading resumes
//! when enough work finished (`ResumeReading`).
//!
//! A frame already read when the pause takes effect is still accepted, so a connection can
//! hold at most its budget plus one frame.

use std::collections::{BTreeMap, BTreeSet};

use crate::effect::Effect;
use crate::ids::ConnId;
use crate::limits::Limits;

/// Why a connection is not read whatever it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HoldBack {
    /// It sends to a room whose imports are behind
    /// (`Limits::max_unimported_changes_per_room`).
    RoomBacklog,
    /// A change it sent is being checked off the protocol thread: what it sends next waits
    /// for the check (`rooms/checks.rs`).
    ChangeChecked,
}

/// The budget's state, behind the methods below. It counts bytes; whether a connection is
/// still open is its caller's knowledge, passed in where it matters.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    per_conn_cap: Option<usize>,
    total_cap: Option<usize>,
    /// Bytes held by unfinished work, per connection (only non-zero entries).
    held: BTreeMap<ConnId, usize>,
    /// Bytes held by unfinished work, over all connections.
    total: usize,
    /// Size of the frame or request body being handled (it becomes held if its work starts).
    arriving: usize,
    /// Connections whose count changed since the read gates were last applied.
    changed: BTreeSet<ConnId>,
    /// Connections told `PauseReading` and not resumed yet.
    paused: BTreeSet<ConnId>,
    /// Connections not to be read whatever they hold, and why (each reason is let go on
    /// its own; a connection with no reason left has no entry).
    held_back: BTreeMap<ConnId, BTreeSet<HoldBack>>,
    total_was_over: bool,
}

impl Budget {
    pub(crate) fn new(limits: &Limits) -> Budget {
        Budget {
            per_conn_cap: limits.max_inbound_bytes_per_conn,
            total_cap: limits.max_inbound_bytes,
            ..Budget::default()
        }
    }

    /// A frame or request body of `bytes` is being handled.
    pub(crate) fn arriving(&mut self, bytes: usize) {
        self.arriving = bytes;
    }

    /// The arriving bytes become held by work `conn` started; how many.
    pub(crate) fn hold_arriving(&mut self, conn: ConnId) -> usize {
        let bytes = std::mem::take(&mut self.arriving);
        if bytes > 0 {
            *self.held.entry(conn).or_default() += bytes;
            self.total += bytes;
            self.changed.insert(conn);
        }
        bytes
    }

    /// Work of `conn` holding `bytes` finished (or was dropped).
    pub(crate) fn release(&mut self, conn: ConnId, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.total = self.total.saturating_sub(bytes);
        if let Some(held) = self.held.get_mut(&conn) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.held.remove(&conn);
            }
            self.changed.insert(conn);
        }
    }

    fn total_over(&self) -> bool {
        self.total_cap.is_some_and(|cap| self.total >= cap)
    }

    fn should_pause(&self, conn: ConnId, total_over: bool) -> bool {
        let held = self.held_by(conn);
        let conn_over = self.per_conn_cap.is_some_and(|cap| held >= cap);
        conn_over || (total_over && held > 0) || self.held_back.contains_key(&conn)
    }

    /// Stops reading `conn` for `why` until [`let_go`](Self::let_go), beside its own budget.
    pub(crate) fn hold_back(&mut self, conn: ConnId, why: HoldBack) {
        if self.held_back.entry(conn).or_default().insert(why) {
            self.changed.insert(conn);
        }
    }

    /// `conn` may be read again as far as `why` is concerned.
    pub(crate) fn let_go(&mut self, conn: ConnId, why: HoldBack) {
        let Some(reasons) = self.held_back.get_mut(&conn) else {
            return;
        };
        if reasons.remove(&why) {
            if reasons.is_empty() {
                self.held_back.remove(&conn);
            }
            self.changed.insert(conn);
        }
    }

    /// After every input: pauses reading where a budget is spent and resumes it where it is
    /// not any more (`is_open` tells which connections may still be read).
    pub(crate) fn apply_read_gates(
        &mut self,
        is_open: impl Fn(ConnId) -> bool,
        effects: &mut impl Extend<Effect>,
    ) {
        self.arriving = 0;
        let total_over = self.total_over();
        let mut candidates = std::mem::take(&mut self.changed);
        if total_over != self.total_was_over {
            self.total_was_over = total_over;
            candidates.extend(self.held.keys().copied());
            candidates.extend(self.paused.iter().copied());
        }
        for conn in candidates {
            let open = is_open(conn);
            let pause = open && self.should_pause(conn, total_over);
            let paused = self.paused.contains(&conn);
            if pause && !paused {
                self.paused.insert(conn);
                effects.extend([Effect::PauseReading { conn }]);
            } else if !pause && paused {
                self.paused.remove(&conn);
                if open {
                    effects.extend([Effect::ResumeReading { conn }]);
                }
            }
        }
    }

    /// The connection is gone. Its work still running keeps its bytes in the total until it
    /// finishes (`release`).
    pub(crate) fn forget(&mut self, conn: ConnId) {
        self.paused.remove(&conn);
        self.held_back.remove(&conn);
        self.changed.remove(&conn);
        self.held.remove(&conn);
    }

    pub(crate) fn held_by(&self, conn: ConnId) -> usize {
        self.held.get(&conn).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn is_paused(&self, conn: ConnId) -> bool {
        self.paused.contains(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(budget: &mut Budget) -> Vec<Effect> {
        let mut effects = Vec::new();
        budget.apply_read_gates(|_| true, &mut effects);
        effects
    }

    #[test]
    fn a_connection_held_back_for_two_reasons_is_read_again_once_both_are_let_go() {
        let mut budget = Budget::new(&Limits::default());
        let conn = ConnId(7);
        budget.hold_back(conn, HoldBack::RoomBacklog);
        budget.hold_back(conn, HoldBack::ChangeChecked);
        assert!(matches!(
            gates(&mut budget)[..],
            [Effect::PauseReading { .. }]
        ));
        budget.let_go(conn, HoldBack::ChangeChecked);
        assert!(gates(&mut budget).is_empty(), "one reason is left");
        assert!(budget.is_paused(conn));
        // Letting go of a reason it is not held for changes nothing.
        budget.let_go(conn, HoldBack::ChangeChecked);
        assert!(gates(&mut budget).is_empty());
        budget.let_go(conn, HoldBack::RoomBacklog);
        assert!(matches!(
            gates(&mut budget)[..],
            [Effect::ResumeReading { .. }]
        ));
        // A closed connection's reasons go with it.
        budget.hold_back(conn, HoldBack::RoomBacklog);
        budget.forget(conn);
        assert!(gates(&mut budget).is_empty());
        assert!(!budget.is_paused(conn));
    }
}
