//! One connection as the core keeps it, and what the transport tells about it when it opens.

use std::collections::BTreeMap;

use crate::auth::Rights;
use crate::http::{Dialect, HttpResponse, Slot};
use crate::ids::{Millis, QueryHandle, QueryId};

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

#[derive(Debug)]
pub(crate) struct Conn {
    /// What the connection may do; `None` until it authenticates.
    pub(crate) rights: Option<Rights>,
    pub(crate) auth_strikes: u8,
    /// False once the core has emitted `Close`: nothing more is sent or acted on.
    pub(crate) open: bool,
    pub(crate) inflight: BTreeMap<QueryId, QueryHandle>,
    /// The room joined (or being joined).
    pub(crate) room: Option<String>,
    /// Bytes handed to the writer and not yet reported written.
    pub(crate) outbound_bytes: usize,
    pub(crate) dialect: Dialect,
    /// Ordered dialects: answers by request slot, `None` while the request is running;
    /// they leave from the front, in request order.
    pub(crate) answers: BTreeMap<Slot, Option<HttpResponse>>,
    pub(crate) next_slot: Slot,
    /// Inbound bytes held by this connection's unfinished work (see `budget`).
    pub(crate) inbound_bytes: usize,
    /// When the peer was last heard from (a frame or a pong).
    pub(crate) last_heard: Millis,
    /// Ordered dialects: the write barrier (see `queries::HeldQuery`).
    pub(crate) in_order: crate::barrier::InOrder,
}

impl Conn {
    pub(crate) fn authenticated(&self) -> bool {
        self.rights.is_some()
    }

    /// Ordered dialects: the slot the next request's answer takes, held until it is filled.
    pub(crate) fn reserve_answer_slot(&mut self) -> Slot {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.answers.insert(slot, None);
        slot
    }
}
