//! One connection as the core keeps it, and what the transport tells about it when it opens.

use std::collections::{BTreeMap, BTreeSet};

use crate::auth::Rights;
use crate::http::{Dialect, HttpResponse, Slot};
use crate::ids::{Millis, QueryHandle, QueryId};
use crate::queries::InOrder;

/// What the transport learned when the connection opened (the WebSocket upgrade request,
/// or nothing yet for an HTTP connection: its requests carry their own credentials).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Which protocol the connection speaks.
    pub dialect: Dialect,
    /// Peer address, for the driver's logs only: authentication never depends on it.
    pub peer: String,
    /// Token from `Authorization: Bearer …`.
    pub bearer_token: Option<String>,
    /// Token from the `token=` query parameter of the upgrade URL.
    pub url_token: Option<String>,
    /// The `Origin` header, when the client is a browser.
    pub origin: Option<String>,
    /// The upgrade's `Host` header.
    pub host: Option<String>,
    /// The address the connection reached the server at (the socket's local address).
    pub local_ip: Option<core::net::IpAddr>,
}

/// One connection's own state, behind the methods below: nothing outside this module reads
/// or writes its fields.
#[derive(Debug)]
pub(crate) struct Conn {
    /// `None` until authenticated (or when auth is off, from the start).
    rights: Option<Rights>,
    auth_strikes: u8,
    /// False once closing: nothing more is sent.
    open: bool,
    /// Queries and uploads in flight, by the id their replies carry.
    inflight: BTreeMap<QueryId, QueryHandle>,
    /// The CRDT room this connection joined.
    room: Option<String>,
    /// Bytes queued on the writer and not yet reported sent.
    outbound_bytes: usize,
    dialect: Dialect,
    /// Ordered connections: answers by slot, sent in slot order once filled.
    answers: BTreeMap<Slot, Option<HttpResponse>>,
    next_slot: Slot,
    /// Last time anything (a frame, a pong) arrived.
    last_heard: Millis,
    /// Ordered connections: the write barrier's view of their queries.
    in_order: InOrder,
}

/// What a connection held when it was released.
pub(crate) struct Released {
    pub(crate) inflight: Vec<QueryHandle>,
    /// Admitted but held back by the write barrier: never handed to the executor.
    pub(crate) held: BTreeSet<QueryHandle>,
    pub(crate) room: Option<String>,
}

impl Conn {
    pub(crate) fn new(dialect: Dialect, rights: Option<Rights>, now: Millis) -> Conn {
        Conn {
            rights,
            auth_strikes: 0,
            open: true,
            inflight: BTreeMap::new(),
            room: None,
            outbound_bytes: 0,
            dialect,
            answers: BTreeMap::new(),
            next_slot: 0,
            last_heard: now,
            in_order: InOrder::default(),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn rights(&self) -> Option<Rights> {
        self.rights
    }

    pub(crate) fn authenticated(&self) -> bool {
        self.rights.is_some()
    }

    /// Grants `rights` (a second `auth` may change them); whether it was authenticated before.
    pub(crate) fn grant(&mut self, rights: Rights) -> bool {
        self.rights.replace(rights).is_some()
    }

    /// Counts a wrong token; the strikes so far.
    pub(crate) fn strike(&mut self) -> u8 {
        self.auth_strikes = self.auth_strikes.saturating_add(1);
        self.auth_strikes
    }

    pub(crate) fn heard(&mut self, now: Millis) {
        self.last_heard = now;
    }

    pub(crate) fn last_heard(&self) -> Millis {
        self.last_heard
    }

    // ----- queries in flight ----------------------------------------------------------------

    pub(crate) fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    pub(crate) fn is_running(&self, query_id: &QueryId) -> bool {
        self.inflight.contains_key(query_id)
    }

    pub(crate) fn query_handle(&self, query_id: &QueryId) -> Option<QueryHandle> {
        self.inflight.get(query_id).copied()
    }

    pub(crate) fn track(&mut self, query_id: QueryId, handle: QueryHandle) {
        self.inflight.insert(query_id, handle);
    }

    pub(crate) fn untrack(&mut self, query_id: &QueryId) {
        self.inflight.remove(query_id);
    }

    // ----- room -----------------------------------------------------------------------------

    pub(crate) fn room(&self) -> Option<&str> {
        self.room.as_deref()
    }

    /// Joins `room` (or leaves with `None`); the room it was in.
    pub(crate) fn set_room(&mut self, room: Option<String>) -> Option<String> {
        std::mem::replace(&mut self.room, room)
    }

    // ----- outbound accounting (PROTOCOL §7) ------------------------------------------------

    /// Counts `bytes` about to be queued; `false` (nothing counted) when the total would pass
    /// `limit`.
    pub(crate) fn queue_outbound(&mut self, bytes: usize, limit: Option<usize>) -> bool {
        let queued = self.outbound_bytes.saturating_add(bytes);
        if limit.is_some_and(|limit| queued > limit) {
            return false;
        }
        self.outbound_bytes = queued;
        true
    }

    pub(crate) fn sent(&mut self, bytes: usize) {
        self.outbound_bytes = self.outbound_bytes.saturating_sub(bytes);
    }

    /// Whether a reply for `slot` (or, unordered, any reply) would be written at once:
    /// open, nothing queued that its writer has not reported written, and no earlier answer
    /// still due. A reader of a shared stream must be one (the stream waits for its slowest
    /// reader, so a reader stuck behind another stream could hold up every reader).
    pub(crate) fn would_write_at_once(&self, slot: Option<Slot>) -> bool {
        let first_due = match slot {
            None => true,
            Some(slot) => self.answers.keys().next() == Some(&slot),
        };
        self.open && self.outbound_bytes == 0 && first_due
    }

    // ----- ordered answers ------------------------------------------------------------------

    pub(crate) fn reserve_answer_slot(&mut self) -> Slot {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.answers.insert(slot, None);
        slot
    }

    pub(crate) fn fill_answer(&mut self, slot: Slot, response: HttpResponse) {
        if let Some(entry) = self.answers.get_mut(&slot) {
            *entry = Some(response);
        }
    }

    /// The oldest answer, if it is filled: its turn has come.
    pub(crate) fn next_answer(&mut self) -> Option<HttpResponse> {
        let mut first = self.answers.first_entry()?;
        let response = first.get_mut().take()?;
        first.remove();
        Some(response)
    }

    /// A request was received and its answer not sent yet.
    pub(crate) fn has_unanswered(&self) -> bool {
        !self.answers.is_empty()
    }

    /// Open, nothing asked that is unanswered, nothing running.
    pub(crate) fn is_idle(&self) -> bool {
        self.open && self.answers.is_empty() && self.inflight.is_empty()
    }

    pub(crate) fn in_order(&mut self) -> &mut InOrder {
        &mut self.in_order
    }

    // ----- the end --------------------------------------------------------------------------

    /// Stops sending; `false` if it was closing already.
    pub(crate) fn mark_closing(&mut self) -> bool {
        std::mem::replace(&mut self.open, false)
    }

    /// Closes it and hands over what it held (empty the second time).
    pub(crate) fn release(&mut self) -> Released {
        self.open = false;
        self.answers.clear();
        Released {
            inflight: std::mem::take(&mut self.inflight).into_values().collect(),
            held: self.in_order.drain_held().collect(),
            room: self.room.take(),
        }
    }
}
