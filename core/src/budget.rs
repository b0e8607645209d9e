//! The inbound budget (PROTOCOL §7): bytes a peer sent whose work is not finished yet — the
//! SQL of queries queued or running, upload payloads, HTTP bodies, CRDT changes waiting for
//! their durable append — counted per connection and in total. A connection at its budget
//! (or any connection holding bytes while the total is at its budget) is told to stop being
//! read (`PauseReading`): TCP backpressure instead of buffering or closing. Reading resumes
//! when enough work finished (`ResumeReading`).
//!
//! A frame already read when the pause takes effect is still accepted, so a connection can
//! hold at most its budget plus one frame.

use std::collections::BTreeSet;

use crate::effect::Effect;
use crate::ids::ConnId;
use crate::server::Server;

#[derive(Debug, Default)]
pub(crate) struct Budget {
    /// Bytes held by unfinished work, over all connections.
    pub(crate) total: usize,
    /// Size of the input being handled; the work it starts (if any) takes it.
    pub(crate) arriving: usize,
    /// Connections whose holdings changed since the gates were last decided.
    changed: BTreeSet<ConnId>,
    paused: BTreeSet<ConnId>,
    total_was_over: bool,
}

impl Server {
    /// The bytes of the input being handled, for the work it starts to hold.
    pub(crate) fn take_arriving_bytes(&mut self, conn: ConnId) -> usize {
        let bytes = std::mem::take(&mut self.budget.arriving);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inbound_bytes += bytes;
            self.budget.total += bytes;
            self.budget.changed.insert(conn);
        }
        bytes
    }

    /// Work of `conn` holding `bytes` finished (or its connection went away).
    pub(crate) fn release_inbound(&mut self, conn: ConnId, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.budget.total = self.budget.total.saturating_sub(bytes);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inbound_bytes = c.inbound_bytes.saturating_sub(bytes);
            self.budget.changed.insert(conn);
        }
    }

    fn total_over(&self) -> bool {
        self.config
            .limits
            .max_inbound_bytes
            .is_some_and(|cap| self.budget.total >= cap)
    }

    fn should_pause(&self, conn: ConnId, total_over: bool) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        let conn_over = self
            .config
            .limits
            .max_inbound_bytes_per_conn
            .is_some_and(|cap| c.inbound_bytes >= cap);
        c.open && (conn_over || (total_over && c.inbound_bytes > 0))
    }

    /// After every input: pause or resume the connections whose standing changed.
    pub(crate) fn apply_read_gates(&mut self) {
        self.budget.arriving = 0;
        let total_over = self.total_over();
        let mut candidates = std::mem::take(&mut self.budget.changed);
        if total_over != self.budget.total_was_over {
            // The total crossed its cap: every connection holding bytes may change.
            self.budget.total_was_over = total_over;
            candidates.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.inbound_bytes > 0)
                    .map(|(id, _)| *id),
            );
            candidates.extend(self.budget.paused.iter().copied());
        }
        for conn in candidates {
            let pause = self.should_pause(conn, total_over);
            let paused = self.budget.paused.contains(&conn);
            if pause && !paused {
                self.budget.paused.insert(conn);
                self.push(Effect::PauseReading { conn });
            } else if !pause && paused {
                self.budget.paused.remove(&conn);
                if self.conns.get(&conn).is_some_and(|c| c.open) {
                    self.push(Effect::ResumeReading { conn });
                }
            }
        }
    }

    /// A connection is gone: nothing is paused for it any more.
    pub(crate) fn forget_read_gate(&mut self, conn: ConnId) {
        self.budget.paused.remove(&conn);
        self.budget.changed.remove(&conn);
    }

    /// Bytes held by unfinished work of `conn` (for metrics and tests).
    pub fn inbound_bytes(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, |c| c.inbound_bytes)
    }

    /// Bytes held by unfinished work of every connection.
    pub fn inbound_bytes_total(&self) -> usize {
        self.budget.total
    }

    /// Whether the driver was told to stop reading `conn`.
    pub fn is_reading_paused(&self, conn: ConnId) -> bool {
        self.budget.paused.contains(&conn)
    }
}
