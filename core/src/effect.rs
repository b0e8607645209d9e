//! What the core asks its driver to do. Effects are drained in order with
//! [`Server::poll_effect`](crate::Server::poll_effect); their order matters (for example an
//! `InvalidateCache` comes before the reply that tells the client its write is done).

use bytes::Bytes;

use crate::codec::{Frame, JsonReply, JsonReplyHeader, QueryKind};
use crate::http::HttpResponse;
use crate::ids::{ConnId, QueryHandle, QueryId};

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue `frame` on the connection's writer. Report it written with
    /// [`Server::handle_sent`](crate::Server::handle_sent) so outbound accounting stays exact.
    Send { conn: ConnId, frame: Frame },
    /// Close the WebSocket with this code and reason; then report
    /// [`Server::handle_closed`](crate::Server::handle_closed).
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// Run SQL on the worker pool; report with `handle_query_done`.
    RunQuery(RunQuery),
    /// Send the result `query` is streaming (`handle_query_streaming`) to `conn`, as one
    /// WebSocket message whose parts leave as the executor produces them. `window` bytes were
    /// counted as queued for `conn`: report them with `handle_sent` once the message ended
    /// (or was given up), not the streamed bytes themselves.
    SendStream {
        conn: ConnId,
        query: QueryHandle,
        window: usize,
    },
    /// One streamed result read by several queries (identical persisted reads that waited
    /// for `source`, PROTOCOL §3b): the stream the executor reported for `source` becomes one
    /// stream per reader, `source`'s own and one for each of `readers`, and a `SendStream`
    /// (or a streamed `Respond`) for each follows. Every piece goes to every reader; a
    /// reader's stream begins with its own `header` in place of the source's first `cut`
    /// bytes (the source's reply header). The executor waits for the slowest reader; a
    /// reader whose connection is gone stops receiving, and the others go on.
    ShareStream {
        source: QueryHandle,
        cut: usize,
        readers: Vec<StreamReader>,
    },
    /// Interrupt a running query (its result, if any still comes, is dropped or answered
    /// as cancelled).
    Interrupt { query: QueryHandle },
    /// `CREATE OR REPLACE TABLE table_name` from an Arrow IPC stream; report with
    /// `handle_upload_done`.
    UploadTable(UploadTable),
    /// Read the room's stored snapshot (and, with `durable_room_log`, the updates logged
    /// after it); report with `handle_room_loaded` (or `handle_snapshot_loaded`).
    LoadSnapshot { room_id: String },
    /// Run Loro's work on a room's document ([`crate::RoomDocJob::run`]: imports, then maybe a
    /// snapshot) away from the thread that drives the core, and report what it did with
    /// `handle_room_doc_worked`. At most one per room is outstanding. Its cost grows with
    /// the room's history, which is why the core does not run it itself.
    RunRoomDocJob {
        room_id: String,
        job_id: u64,
        job: crate::RoomDocJob,
    },
    /// Check a large CRDT change away from the thread that drives the core
    /// ([`check_room_change`](crate::check_room_change)), and report the result with
    /// `handle_room_change_checked`. At most one per connection is outstanding; the
    /// connection is paused meanwhile.
    CheckRoomChange {
        conn: ConnId,
        check_id: u64,
        change: Bytes,
    },
    /// Store the room's snapshot and drop its logged updates up to `log_seq` (the snapshot
    /// contains them); report with `handle_snapshot_persisted` and the same version.
    PersistSnapshot {
        room_id: String,
        snapshot: Vec<u8>,
        version: u64,
        log_seq: u64,
        /// Cluster mode: the snapshot holds every entry of the room's shared log up to this
        /// id (stored with it; entries below it may be trimmed).
        covers: Option<String>,
    },
    /// Append an accepted change to the room's durable log under `seq` (increasing per
    /// room); report with `handle_room_update_appended` once it is durable. Its sender's
    /// acknowledgement waits for that. Appends that arrive together may be written in one
    /// transaction and reported once, with the highest `seq`.
    AppendRoomUpdate {
        room_id: String,
        seq: u64,
        update: Bytes,
    },
    /// Answer the oldest unanswered request of an HTTP connection (answers come in request
    /// order). Report the bytes written with `handle_sent`, as for `Send`.
    Respond {
        conn: ConnId,
        response: HttpResponse,
    },
    /// Send a WebSocket ping; the peer's pong is reported with `handle_pong`.
    Ping { conn: ConnId },
    /// Stop reading this connection's socket (its inbound budget is spent): TCP
    /// backpressure. At most one more frame may still arrive.
    PauseReading { conn: ConnId },
    /// Read this connection's socket again.
    ResumeReading { conn: ConnId },
    /// A write went through the server: drop every cached result.
    InvalidateCache,
    /// Cluster mode: subscribe to the broker's channel `channel`; report the broker's
    /// confirmation (or its failure) with `handle_broker_subscribed` and this token, and
    /// every message it delivers with `handle_remote_notify`.
    BrokerSubscribe { channel: String, token: u64 },
    /// Cluster mode: no local subscriber is left; stop receiving `channel`.
    BrokerUnsubscribe { channel: String },
    /// Cluster mode: publish `message` (a notify with its origin, PROTOCOL §5a) on the
    /// broker's channel `channel`, once; report with `handle_notify_published(token)` once
    /// the broker took it (or dropped it: lost while the broker is down, to be counted).
    /// Until then its bytes stay in the sender's inbound budget, so a slow broker pauses the
    /// sender (`PauseReading`) instead of its notifies being dropped.
    PublishNotify {
        channel: String,
        message: Bytes,
        token: u64,
    },
    /// The room left memory (idle and saved). Cluster mode: stop following its shared log.
    RoomUnloaded { room_id: String },
    /// Cluster mode, after `handle_broker_reconnected`: append the room's whole state to its
    /// shared log (without acknowledging anyone), so replicas converge even if the broker
    /// lost entries.
    RepublishRoom { room_id: String, state: Bytes },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunQuery {
    pub query: QueryHandle,
    pub conn: ConnId,
    /// The id the replies carry (the client's, or the one generated for it); the driver logs it.
    pub query_id: QueryId,
    pub kind: QueryKind,
    pub sql: String,
    /// The client asked for the result to be cached.
    pub persist: bool,
    /// Prefix of the Arrow result frame; the executor appends the IPC stream to it and
    /// reports the whole frame in [`QueryOutcome::Arrow`]. Empty for the bare IPC stream
    /// that HTTP answers carry.
    pub arrow_header: Bytes,
    /// What may run: anything, or only what DuckDB classifies as a read (see [`Gate`]).
    pub gate: Gate,
    /// `Some`: a result larger than its `above` is streamed (report
    /// `handle_query_streaming`, then [`QueryOutcome::Streamed`] when whole). `None`: hold
    /// the result whole.
    pub stream: Option<StreamPolicy>,
    /// Start of the SQLRooms `json` reply; the executor builds the whole reply (with
    /// [`crate::JsonReplyWriter`], or writing it itself and framing it with
    /// [`crate::JsonReply::from_text`]) and reports it in [`QueryOutcome::JsonReply`], or
    /// streams it past the stream policy's `above`. `None`: the bare rows
    /// ([`QueryOutcome::Json`]), as HTTP answers and the Mosaic socket carry them.
    pub json_header: Option<JsonReplyHeader>,
}

/// A query that reads another's streamed result ([`Effect::ShareStream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReader {
    pub query: QueryHandle,
    pub conn: ConnId,
    /// What its reply starts with (its own query id's header; empty for bare results).
    pub header: Bytes,
}

/// When and how far a result is streamed (PROTOCOL §3b), from `Config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPolicy {
    /// Once the encoded result passes this many bytes, its reply begins.
    pub above: usize,
    /// Bytes produced and not yet written that the executor may hold for it; it waits past
    /// that (the core counts them as queued for the connection).
    pub window: usize,
}

/// What the executor may run for a [`RunQuery`]. DuckDB decides what a statement is: the
/// executor asks it (its parser's statements and their types) before anything runs, and
/// reports what it found with the outcome (`wrote`) or as [`QueryOutcome::NotARead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Whatever it is.
    Any,
    /// Only one statement DuckDB classifies as a read, run in a read-only transaction (so
    /// DuckDB itself refuses a read that would write, such as `nextval`); anything else is
    /// reported as [`QueryOutcome::NotARead`] without running.
    ReadsOnly,
    /// The write barrier of an ordered connection asks first: report the verdict with
    /// [`Server::handle_query_classified`](crate::Server::handle_query_classified) before
    /// running; a statement that is not a read is not run but reported as
    /// [`QueryOutcome::NotARead`], and the core runs it again, alone, with [`Gate::Any`].
    ClassifyFirst,
}

/// What DuckDB says a SQL text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// One statement of DuckDB's `SELECT` type (or a plain `EXPLAIN`).
    Read,
    /// Anything else, named as DuckDB names it (`INSERT`, `EXPLAIN ANALYZE`, `3 statements`).
    NotARead(String),
}

impl Verdict {
    pub fn is_read(&self) -> bool {
        matches!(self, Verdict::Read)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UploadTable {
    pub query: QueryHandle,
    pub conn: ConnId,
    /// The id the reply carries (the client's, or the one generated for it); the driver logs it.
    pub query_id: QueryId,
    /// Validated: one to three dot-separated identifiers.
    pub table_name: String,
    /// The Arrow IPC stream.
    pub payload: Bytes,
}

impl QueryOutcome {
    /// Stopped by an interrupt. The executor decides that where it sees DuckDB's error and
    /// reports `Cancelled`; no error text is read here.
    pub(crate) fn is_interruption(&self) -> bool {
        matches!(self, QueryOutcome::Cancelled)
    }
}

/// How an upload ended, as the executor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The table was replaced with the stream's rows.
    Written,
    /// Not written (the stream could not be decoded, or DuckDB refused it); the message goes
    /// to the client.
    Failed(String),
    /// Interrupted (a cancel, or its connection closed) before it was written.
    Cancelled,
}

/// How a query ended, as the executor reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutcome {
    /// The complete result frame: `arrow_header` followed by the IPC stream.
    Arrow(Bytes),
    /// A JSON array of row objects; the core escapes it into the reply.
    Json(String),
    /// The whole `json` reply, rows escaped where they were encoded (for large results).
    JsonReply(JsonReply),
    /// The last statement yielded no result set (DDL, INSERT…).
    NoResultSet,
    /// The whole result went out as a stream (after `handle_query_streaming`), ending with
    /// the IPC end-of-stream marker (Arrow) or the reply's closing (JSON).
    Streamed,
    /// DuckDB's error message.
    Failed(String),
    /// Not run: the gate allowed reads only and DuckDB classifies it as this.
    NotARead(String),
    /// Interrupted (by a cancel, a timeout or a closed connection).
    Cancelled,
}
