//! Errors the core reports. The `Display` strings of [`ProtocolError`] are sent to clients
//! verbatim in `{"type":"error","error":…}` and are part of the stable interface
//! (documented in the crate README).

use thiserror::Error;

/// A per-message failure. The connection stays open; the client gets the message text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("message must be a JSON object")]
    NotAnObject,
    #[error("missing or non-string field `type`")]
    MissingType,
    #[error("unknown message type: {0}")]
    UnknownType(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongFieldType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{0}` must not be empty")]
    EmptyField(&'static str),
    #[error("{cap} exceeded (limit {limit})")]
    CapExceeded { cap: &'static str, limit: usize },
    #[error("binary header is not valid UTF-8")]
    HeaderNotUtf8,
    #[error("unknown binary message type: {0}")]
    UnknownBinaryType(String),
    #[error("invalid table name: {0}")]
    InvalidTableName(String),
    #[error("unauthorized")]
    Unauthorized,
    #[error("empty SQL")]
    EmptySql,
    #[error("duplicate queryId: a query with this id is already in flight")]
    DuplicateQueryId,
    #[error("Query was cancelled")]
    Cancelled,
    #[error("CRDT sync is disabled (start the server with --sync)")]
    SyncDisabled,
    #[error("join a room first")]
    NotJoined,
    #[error("room is still loading; wait for crdt-snapshot")]
    RoomLoading,
    #[error("roomId does not match the joined room")]
    WrongRoom,
    #[error("invalid base64 in `data`")]
    InvalidBase64,
    #[error("invalid CRDT update: {0}")]
    InvalidUpdate(String),
    #[error("invalid CRDT snapshot: {0}")]
    InvalidSnapshot(String),
    #[error("room already has state; snapshot rejected")]
    RoomNotEmpty,
    #[error("client snapshots are disabled (start the server with --allow-client-snapshots)")]
    ClientSnapshotsDisabled,
    #[error("failed to load room: {0}")]
    RoomLoadFailed(String),
    #[error("CRDT change applied but not saved: {0}")]
    UpdateNotSaved(String),
    #[error("`{0}` messages are not part of Mosaic's socket protocol (send arrow, json or exec)")]
    NotMosaic(&'static str),
    #[error("binary messages are not part of Mosaic's socket protocol")]
    MosaicBinary,
    #[error("`{0}` messages are only accepted over WebSocket")]
    WebSocketOnly(&'static str),
    #[error("query timeout ({0} ms) exceeded")]
    QueryTimeout(u64),
    #[error("the server is read-only (--read-only): writes are refused")]
    ReadOnly,
    /// The connection or request holds the read token; the text says what was refused.
    #[error("this token may only read (--read-token); refused: {0}")]
    ReadTokenWrite(String),
    /// A GET without an `Origin` or bearer token (any page can make a browser send one).
    #[error("writes over GET need an allowed Origin header or a bearer token (CSRF protection); use POST (refused: {0})")]
    WriteOverGet(String),
    #[error("server is shutting down")]
    ShuttingDown,
    /// A streamed result (PROTOCOL §3b) failed after its first bytes left: the close reason
    /// of its connection (WebSocket close frames keep the first 123 bytes).
    #[error("query {query_id} failed after its result began: {why}")]
    StreamBroken { query_id: String, why: String },
}

/// Why the state machine refused an input as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServerError {
    /// A handler panicked midway earlier; the state may be torn, so nothing is acted on.
    #[error("duckwire-core state machine is poisoned by an earlier panic; restart the server")]
    Poisoned,
}
