//! Caps on every size the protocol lets a peer choose (PROTOCOL §7).
//!
//! As in `dqlite-wire`, every cap is named, has a default, and `None` disables it.
//! Exceeding a cap produces an error that names the cap and its value
//! ([`CapExceeded`](crate::ProtocolError::CapExceeded)).

/// All caps of PROTOCOL §7. `None` disables a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// One incoming WebSocket message, in bytes. Over it the connection is closed with 1009.
    pub max_frame_bytes: Option<usize>,
    /// The JSON header of a framed binary message, in bytes.
    pub max_header_bytes: Option<usize>,
    /// A `queryId`, in bytes (numbers count their JSON text).
    pub max_query_id_len: Option<usize>,
    /// A channel name, in bytes.
    pub max_channel_len: Option<usize>,
    /// A CRDT room id, in bytes.
    pub max_room_id_len: Option<usize>,
    /// Queries (and uploads) running or queued for one connection.
    pub max_inflight_per_conn: Option<usize>,
    /// Channel subscriptions of one connection.
    pub max_subscriptions_per_conn: Option<usize>,
    /// Open WebSocket connections.
    pub max_connections: Option<usize>,
    /// Replies queued for one connection but not yet written to its socket, in bytes.
    /// Past it the connection is closed with 1008 and its queries are interrupted.
    pub max_outbound_bytes_per_conn: Option<usize>,
    /// Bytes of received work not finished yet (SQL of queued and running queries, upload
    /// payloads, HTTP bodies) one connection may hold; at it, its socket is not read.
    pub max_inbound_bytes_per_conn: Option<usize>,
    /// The same, over all connections.
    pub max_inbound_bytes: Option<usize>,
    /// CRDT changes a room accepted (relayed, acknowledged) and has not imported yet. Loro's
    /// import of a change costs time in proportion to the peers the room has seen, and runs
    /// after the acknowledgement: at this backlog, connections sending to the room are not
    /// read until its imports catch up, so the backlog (and what waits behind it: joiners'
    /// snapshots, saves) stays bounded.
    pub max_unimported_changes_per_room: Option<usize>,
    /// Bytes of a CRDT change checked on the thread that drives the core; a larger one is
    /// checked off it (`Effect::CheckRoomChange`), its connection paused meanwhile. The check
    /// costs time in proportion to the change (`None`: every change checked on the thread).
    pub max_change_bytes_checked_inline: Option<usize>,
}

pub const MIB: usize = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: Some(128 * MIB),
            max_header_bytes: Some(64 * 1024),
            max_query_id_len: Some(256),
            max_channel_len: Some(256),
            max_room_id_len: Some(256),
            max_inflight_per_conn: Some(1024),
            max_subscriptions_per_conn: Some(1024),
            max_connections: Some(4096),
            max_outbound_bytes_per_conn: Some(256 * MIB),
            max_inbound_bytes_per_conn: Some(64 * MIB),
            max_inbound_bytes: Some(1024 * MIB),
            max_unimported_changes_per_room: Some(64),
            max_change_bytes_checked_inline: Some(64 * 1024),
        }
    }
}

impl Limits {
    /// Every cap disabled. Useful for tests and trusted deployments.
    pub fn unlimited() -> Self {
        Limits {
            max_frame_bytes: None,
            max_header_bytes: None,
            max_query_id_len: None,
            max_channel_len: None,
            max_room_id_len: None,
            max_inflight_per_conn: None,
            max_subscriptions_per_conn: None,
            max_connections: None,
            max_outbound_bytes_per_conn: None,
            max_inbound_bytes_per_conn: None,
            max_inbound_bytes: None,
            max_unimported_changes_per_room: None,
            max_change_bytes_checked_inline: None,
        }
    }
}

impl Limits {
    /// Whether a WebSocket message or HTTP body of `len` bytes may be taken: the one rule of
    /// the frame cap, which the core applies to frames and transports to bodies before they
    /// read them.
    pub fn check_frame(&self, len: usize) -> Result<(), crate::ProtocolError> {
        check_cap("max_frame_bytes", self.max_frame_bytes, len)
    }
}

/// Checks `value` against an optional cap; the error names the cap.
pub(crate) fn check_cap(
    cap: &'static str,
    limit: Option<usize>,
    value: usize,
) -> Result<(), crate::ProtocolError> {
    match limit {
        Some(limit) if value > limit => Err(crate::ProtocolError::CapExceeded { cap, limit }),
        _ => Ok(()),
    }
}
