//! The state machine: entry points (`handle_*`), the effect queue (`poll_effect`), and the
//! per-connection bookkeeping every handler shares (sending, closing, accounting).
//!
//! Single owner: a `Server` is `Send` but not meant to be shared; the driver owns it and
//! feeds it inputs one at a time (see the crate docs).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::auth::Rights;
use crate::budget::Budget;
use crate::channels::Channels;
use crate::codec::{Frame, ServerMessage};
pub use crate::config::{Config, DEFAULT_HTTP_IDLE_TIMEOUT_MS};
pub use crate::conn::ConnectionInfo;
pub(crate) use crate::conn::{Conn, Released};
use crate::effect::{Effect, QueryOutcome};
use crate::http::{Dialect, HttpRequest, HttpResponse};
use crate::ids::{ConnId, IdGenerator, Millis, QueryHandle, QueryId};
use crate::queries::flights::Flights;
use crate::queries::Queries;
use crate::rooms::{Rooms, StoredRoom};
use crate::timers::{TimerKey, Timers};
use crate::{ProtocolError, ServerError};

/// WebSocket close codes the core uses.
pub mod close_code {
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Frames that break the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation: too many wrong tokens, or a reader too slow for its replies.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over `max_frame_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an internal error (its core was poisoned) and is stopping.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// `max_connections` reached.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Wrong tokens a connection may send before it is closed with 1008.
pub const MAX_AUTH_STRIKES: u8 = 3;

/// The protocol state machine of one server. See the crate docs for the input/effect model.
///
/// Its fields are the parts of the state, each a type of the module that decides about it
/// (the README's "Where state lives"): handlers in those modules reach a part through its
/// methods, never through another part's fields.
pub struct Server {
    pub(crate) config: Config,
    pub(crate) conns: BTreeMap<ConnId, Conn>,
    pub(crate) queries: Queries,
    pub(crate) channels: Channels,
    pub(crate) rooms: Rooms,
    pub(crate) ids: IdGenerator,
    pub(crate) timers: Timers,
    pub(crate) flights: Flights,
    pub(crate) budget: Budget,
    effects: VecDeque<Effect>,
    /// Set while a handler runs; stays set if it panicked.
    poisoned: bool,
    pub(crate) shutting_down: bool,
    #[cfg(test)]
    pub(crate) panic_on_next_input: bool,
}

impl Server {
    /// `seed` is the only entropy the core uses (generated query ids, Loro peer ids).
    pub fn new(config: Config, seed: [u8; 16]) -> Self {
        Server {
            conns: BTreeMap::new(),
            queries: Queries::default(),
            channels: Channels::default(),
            rooms: Rooms::default(),
            ids: IdGenerator::new(seed),
            timers: Timers::default(),
            flights: Flights::default(),
            budget: Budget::new(&config.limits),
            effects: VecDeque::new(),
            poisoned: false,
            shutting_down: false,
            #[cfg(test)]
            panic_on_next_input: false,
            config,
        }
    }

    /// True after a handler panicked; every later input returns [`ServerError::Poisoned`].
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Next effect to carry out, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Open connections (closing ones excluded).
    pub fn connection_count(&self) -> usize {
        self.conns.values().filter(|c| c.is_open()).count()
    }

    /// Queries and uploads in flight for `conn`.
    pub fn inflight_count(&self, conn: ConnId) -> usize {
        self.conns.get(&conn).map_or(0, Conn::inflight_count)
    }

    /// Whether `conn` is authenticated (false for unknown connections).
    pub fn is_authenticated(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(Conn::authenticated)
    }

    /// Snapshot saves emitted and not yet reported (shutdown waits for these).
    pub fn pending_persists(&self) -> usize {
        self.rooms.pending_persists()
    }

    /// Runs a handler; if it panics, the machine stays poisoned (as in `dqlite-wire`).
    fn guarded<R>(&mut self, handler: impl FnOnce(&mut Self) -> R) -> Result<R, ServerError> {
        if self.poisoned {
            return Err(ServerError::Poisoned);
        }
        self.poisoned = true;
        #[cfg(test)]
        if std::mem::take(&mut self.panic_on_next_input) {
            panic!("test-injected panic inside a handler");
        }
        let result = handler(self);
        let conns = &self.conns;
        let is_open = |conn| conns.get(&conn).is_some_and(Conn::is_open);
        self.budget.apply_read_gates(is_open, &mut self.effects);
        self.poisoned = false;
        Ok(result)
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A WebSocket connection was upgraded. `conn` must be new.
    pub fn handle_open(
        &mut self,
        conn: ConnId,
        info: ConnectionInfo,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.open(conn, info, now))
    }

    /// An HTTP request arrived on `conn` (opened with [`Dialect::Http`]). Its answer comes
    /// as [`Effect::Respond`], after the answers of every earlier request of `conn`.
    pub fn handle_http_request(
        &mut self,
        conn: ConnId,
        request: HttpRequest,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.http_request(conn, request, now))
    }

    /// A complete WebSocket message arrived on `conn`.
    pub fn handle_frame(
        &mut self,
        conn: ConnId,
        frame: Frame,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.frame(conn, frame, now))
    }

    /// The executor finished a query. `wrote` tells whether it may have changed data (so
    /// cached results must go).
    pub fn handle_query_done(
        &mut self,
        query: QueryHandle,
        outcome: QueryOutcome,
        wrote: bool,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.query_done(query, outcome, wrote, now))
    }

    /// The executor holds the first part of `query`'s result (it passed
    /// `RunQuery::stream_above`) and sends the rest as DuckDB produces it: the core starts
    /// its reply (`Effect::SendStream`, or `HttpResponse::Streamed`); the query's end comes
    /// later with `handle_query_done` ([`QueryOutcome::Streamed`] when whole).
    pub fn handle_query_streaming(
        &mut self,
        query: QueryHandle,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.query_streaming(query, now))
    }

    /// The executor's verdict on a query it was asked to classify first
    /// ([`Gate::ClassifyFirst`](crate::Gate::ClassifyFirst)), before running it: a read lets
    /// the connection's later queries start. (A statement that is not a read is reported as
    /// [`QueryOutcome::NotARead`] instead, and calling this with it changes nothing.)
    pub fn handle_query_classified(
        &mut self,
        query: QueryHandle,
        verdict: crate::Verdict,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.query_classified(query, verdict, now))
    }

    /// The executor finished an upload.
    pub fn handle_upload_done(
        &mut self,
        query: QueryHandle,
        result: crate::UploadOutcome,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.upload_done(query, result, now))
    }

    /// A `LoadSnapshot` finished: `Ok(None)` when the room was never saved.
    pub fn handle_snapshot_loaded(
        &mut self,
        room_id: &str,
        result: Result<Option<Vec<u8>>, String>,
        now: Millis,
    ) -> Result<(), ServerError> {
        let stored = result.map(|snapshot| StoredRoom {
            snapshot,
            ..StoredRoom::default()
        });
        self.guarded(|server| server.room_loaded(room_id, stored, now))
    }

    /// A `LoadSnapshot` finished with what storage holds for the room: its snapshot and the
    /// updates logged after it (`Config::durable_room_log`).
    pub fn handle_room_loaded(
        &mut self,
        room_id: &str,
        result: Result<StoredRoom, String>,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.room_loaded(room_id, result, now))
    }

    /// The room's log holds every update up to `seq` (or the append failed): their senders
    /// get their acknowledgements (or an error).
    pub fn handle_room_update_appended(
        &mut self,
        room_id: &str,
        seq: u64,
        result: Result<(), String>,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.room_update_appended(room_id, seq, result, now))
    }

    /// A `PersistSnapshot` finished.
    pub fn handle_snapshot_persisted(
        &mut self,
        room_id: &str,
        version: u64,
        result: Result<(), String>,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.snapshot_persisted(room_id, version, result, now))
    }

    /// The report of an `Effect::CheckRoomChange`: the change is accepted (relayed,
    /// acknowledged) or refused as it would have been at once, then what the connection
    /// sent meanwhile is handled in order.
    pub fn handle_room_change_checked(
        &mut self,
        conn: ConnId,
        check_id: u64,
        result: Result<(), String>,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.room_change_checked(conn, check_id, result, now))
    }

    /// The report of an `Effect::RunRoomDocJob`: joiners waiting for the room's snapshot get
    /// it, a save goes to storage, and the room's next job may start.
    pub fn handle_room_doc_worked(
        &mut self,
        room_id: &str,
        job_id: u64,
        worked: crate::RoomDocWorked,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.room_doc_worked(room_id, job_id, worked, now))
    }

    /// When the core next needs [`handle_timeout`](Self::handle_timeout), if ever. Ask
    /// again after every input: any of them may arm or disarm a timer.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.timers.next_deadline()
    }

    /// Time passed: runs every timer due at `now`. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), ServerError> {
        self.guarded(|server| {
            while let Some(key) = server.timers.pop_due(now) {
                server.timer(key, now);
            }
        })
    }

    /// The transport could not frame what `conn` sent (see [`Malformed`](crate::Malformed)):
    /// the core answers (an HTTP refusal, or a WebSocket close) and closes the connection.
    pub fn handle_malformed(
        &mut self,
        conn: ConnId,
        malformed: crate::Malformed,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.malformed(conn, malformed, now))
    }

    /// The WebSocket peer answered a ping (any pong counts as being heard from).
    pub fn handle_pong(&mut self, conn: ConnId, now: Millis) -> Result<(), ServerError> {
        self.guarded(|server| {
            if let Some(c) = server.conns.get_mut(&conn) {
                c.heard(now);
            }
        })
    }

    /// Cluster mode: the broker took the publication of `Effect::PublishNotify` with this
    /// token (or dropped it while down): the sender's budget gets its bytes back.
    pub fn handle_notify_published(&mut self, token: u64) -> Result<(), ServerError> {
        self.guarded(|server| server.notify_published(token))
    }

    /// The broker confirmed the subscription asked for with `Effect::BrokerSubscribe`
    /// (`token` is that effect's). Also when the broker is unreachable: local subscribers
    /// must not wait for it (cross-replica notifies are lost while it is down).
    pub fn handle_broker_subscribed(
        &mut self,
        channel: &str,
        token: u64,
        now: Millis,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.broker_subscribed(channel, token, now))
    }

    /// A message the broker delivered on `channel` (published by any replica, this one
    /// included). Returns whether it was a well-formed notify of that channel; malformed
    /// ones are ignored.
    pub fn handle_remote_notify(
        &mut self,
        channel: &str,
        message: &[u8],
        now: Millis,
    ) -> Result<bool, ServerError> {
        self.guarded(|server| server.remote_notify(channel, message, now))
    }

    /// Cluster mode: a change of `room_id` that another replica appended to the room's
    /// shared log. Returns whether it was imported (the room is loaded here and Loro took it).
    pub fn handle_remote_room_update(
        &mut self,
        room_id: &str,
        update: Bytes,
        now: Millis,
    ) -> Result<bool, ServerError> {
        self.guarded(|server| server.remote_room_update(room_id, update, now))
    }

    /// Cluster mode: every entry of the room's shared log up to `position` was delivered
    /// (other replicas' as `handle_remote_room_update` before this call, this replica's
    /// own are applied already): the room's next snapshot covers them.
    pub fn handle_shared_log_position(
        &mut self,
        room_id: &str,
        position: String,
    ) -> Result<(), ServerError> {
        self.guarded(|server| server.shared_log_position(room_id, position))
    }

    /// Cluster mode: the broker connection came back (it may have lost entries): every
    /// loaded room is republished (`Effect::RepublishRoom`).
    pub fn handle_broker_reconnected(&mut self) -> Result<(), ServerError> {
        self.guarded(|server| server.republish_rooms())
    }

    /// The writer put `bytes` of an earlier `Send` on the socket.
    pub fn handle_sent(&mut self, conn: ConnId, bytes: usize) -> Result<(), ServerError> {
        self.guarded(|server| {
            if let Some(c) = server.conns.get_mut(&conn) {
                c.sent(bytes);
            }
        })
    }

    /// The connection is gone (peer closed, socket error, or after our `Close`).
    pub fn handle_closed(&mut self, conn: ConnId, now: Millis) -> Result<(), ServerError> {
        self.guarded(|server| {
            server.release_connection(conn, now);
            server.budget.forget(conn);
            server.conns.remove(&conn);
        })
    }

    /// SIGINT/SIGTERM: close every connection, interrupt every query, save every changed
    /// room. The driver waits until [`pending_persists`](Self::pending_persists) is 0.
    pub fn handle_shutdown(&mut self, now: Millis) -> Result<(), ServerError> {
        self.guarded(|server| {
            server.shutting_down = true;
            let open: Vec<ConnId> = server
                .conns
                .iter()
                .filter(|(_, c)| c.is_open())
                .map(|(id, _)| *id)
                .collect();
            for conn in open {
                server.close(conn, close_code::GOING_AWAY, "server shutting down", now);
            }
            server.persist_all_dirty_rooms(now);
        })
    }

    /// Bytes `conn` sent whose work is not finished (PROTOCOL §7).
    pub fn inbound_bytes(&self, conn: ConnId) -> usize {
        self.budget.held_by(conn)
    }

    /// Bytes all connections sent whose work is not finished.
    pub fn inbound_bytes_total(&self) -> usize {
        self.budget.total()
    }

    /// Whether the core told the driver to stop reading `conn`.
    pub fn is_reading_paused(&self, conn: ConnId) -> bool {
        self.budget.is_paused(conn)
    }

    // ----- shared helpers ------------------------------------------------------------------

    pub(crate) fn push(&mut self, effect: Effect) {
        self.effects.push_back(effect);
    }

    /// Sends a reply to an open connection, with outbound accounting (PROTOCOL §7).
    pub(crate) fn send(&mut self, conn: ConnId, message: ServerMessage, now: Millis) {
        self.send_frame(conn, message.encode(), now);
    }

    pub(crate) fn send_frame(&mut self, conn: ConnId, frame: Frame, now: Millis) {
        if self.account_outbound(conn, frame.len(), now) {
            self.push(Effect::Send { conn, frame });
        }
    }

    /// Counts `bytes` about to be queued for `conn`; `false` (and the connection closed)
    /// when they would pass `max_outbound_bytes_per_conn`, or it is not open.
    pub(crate) fn account_outbound(&mut self, conn: ConnId, bytes: usize, now: Millis) -> bool {
        let limit = self.config.limits.max_outbound_bytes_per_conn;
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.is_open()) else {
            return false;
        };
        if c.queue_outbound(bytes, limit) {
            return true;
        }
        if let Some(limit) = limit {
            let reason = ProtocolError::CapExceeded {
                cap: "max_outbound_bytes_per_conn",
                limit,
            };
            self.close(conn, close_code::POLICY_VIOLATION, &reason.to_string(), now);
        }
        false
    }

    pub(crate) fn send_error(
        &mut self,
        conn: ConnId,
        error: ProtocolError,
        query_id: Option<QueryId>,
        now: Millis,
    ) {
        let message = ServerMessage::Error {
            error: error.to_string(),
            query_id,
        };
        self.send(conn, message, now);
    }

    /// Closes a connection from our side: interrupts its queries, leaves its room and
    /// channels, and sends nothing more to it.
    /// An HTTP request still waiting for its answer gets `reason`, with the status that says
    /// why (the reply was too large for the outbound cap: 429; anything else: 503).
    pub(crate) fn close(&mut self, conn: ConnId, code: u16, reason: &str, now: Millis) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let request_waits = c.dialect() == Dialect::Http && c.has_unanswered();
        if !c.mark_closing() {
            return;
        }
        if request_waits {
            let status = match code {
                close_code::POLICY_VIOLATION => 429,
                _ => 503,
            };
            let response = HttpResponse::error(status, reason);
            self.push(Effect::Respond { conn, response });
        }
        self.push(Effect::Close {
            conn,
            code,
            reason: reason.to_string(),
        });
        self.release_connection(conn, now);
    }

    /// Frees everything a connection holds. Idempotent.
    fn release_connection(&mut self, conn: ConnId, now: Millis) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let awaited_auth = !c.authenticated() && self.config.auth_token.is_some();
        let Released {
            inflight,
            held,
            room,
        } = c.release();
        self.abandon_queries(conn, inflight, &held);
        self.forget_channels_of(conn);
        self.forget_checks_of(conn);
        if let Some(room) = room {
            self.leave_room(conn, &room, now);
        }
        if awaited_auth {
            self.timers.cancel(&TimerKey::AuthDeadline(conn));
        }
        for key in [
            TimerKey::HttpIdle(conn),
            TimerKey::Ping(conn),
            TimerKey::PeerSilent(conn),
        ] {
            self.timers.cancel(&key);
        }
    }

    fn open(&mut self, conn: ConnId, info: ConnectionInfo, now: Millis) {
        let dialect = info.dialect;
        // WebSocket and HTTP connections are counted apart: a server full of WebSocket
        // clients still answers health checks and REST.
        let open_now = self
            .conns
            .values()
            .filter(|c| c.is_open() && c.dialect() == dialect)
            .count();
        let rights = if dialect == Dialect::Http {
            // Every HTTP request brings its own credentials.
            Some(Rights::Full)
        } else {
            let (bearer, url) = (info.bearer_token.as_deref(), info.url_token.as_deref());
            self.config.rights_of_credentials(bearer, url)
        };
        let authenticated = rights.is_some();
        self.conns.insert(conn, Conn::new(dialect, rights, now));
        if self.shutting_down {
            self.close(conn, close_code::GOING_AWAY, "server shutting down", now);
            return;
        }
        // A transport should refuse these before upgrading (HTTP 403); the core refuses them
        // too, so no transport can let a foreign web page in by forgetting to.
        // (An HTTP connection's requests are each checked: `http.rs` `route`.)
        if dialect != Dialect::Http {
            let (host, origin) = (info.host.as_deref(), info.origin.as_deref());
            if let Err(refusal) = self.config.check_where_from(host, info.local_ip, origin) {
                self.close(conn, close_code::POLICY_VIOLATION, refusal.message(), now);
                return;
            }
        }
        if let Some(limit) = self.config.limits.max_connections {
            if open_now >= limit {
                let reason = ProtocolError::CapExceeded {
                    cap: "max_connections",
                    limit,
                }
                .to_string();
                self.close(conn, close_code::TRY_AGAIN_LATER, &reason, now);
                return;
            }
        }
        if let (false, Some(timeout)) = (authenticated, self.config.auth_timeout_ms) {
            self.timers
                .set(TimerKey::AuthDeadline(conn), now.plus(timeout));
        }
        if dialect == Dialect::Http {
            self.arm_http_idle(conn, now);
        } else {
            if let Some(every) = self.config.ping_interval_ms {
                self.timers.set(TimerKey::Ping(conn), now.plus(every));
            }
            if let Some(silence) = self.config.idle_timeout_ms {
                self.timers
                    .set(TimerKey::PeerSilent(conn), now.plus(silence));
            }
        }
    }
}
