//! The query lifecycle: the in-flight table, cancel, and exactly one terminal reply per
//! query (PROTOCOL §3).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::auth::Rights;
mod barrier;
pub(crate) mod flights;

use crate::codec::{encode_arrow_frame_header, Frame, JsonReplyHeader, QueryKind, ServerMessage};
use crate::conn::Conn;
use crate::effect::{Effect, Gate, QueryOutcome, RunQuery, StreamPolicy, UploadTable};
use crate::http::{HttpResponse, Slot};
use crate::ids::{ConnId, Millis, QueryHandle, QueryId};
use crate::limits::check_cap;
use crate::server::Server;
use crate::timers::TimerKey;
use crate::ProtocolError;
pub(crate) use barrier::InOrder;
use barrier::KnownReads;
use flights::{Flight, FlightKey, StoppedReading};

mod outcomes;
mod streaming;
mod uploads;

/// What a handle stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    Query(QueryKind),
    Upload,
}

#[derive(Debug)]
pub(crate) struct InFlight {
    conn: ConnId,
    query_id: QueryId,
    work: Work,
    /// The client cancelled it; a failure is then reported as "Query was cancelled".
    cancelled: bool,
    /// On an ordered connection (HTTP), the answer slot it fills.
    slot: Option<Slot>,
    /// Inbound bytes it holds until it finishes (the frame or body that started it).
    inbound: usize,
    /// It ran past `query_timeout_ms` and was interrupted for that.
    timed_out: bool,
    /// Ordered dialects, once dispatched: whether it may write (see [`HeldQuery`]).
    in_order_write: Option<bool>,
    /// Why it may only read, if it may only read.
    reads_only: Option<ReadsOnly>,
    /// What the executor was (or will be) asked to let run.
    gate: Gate,
    /// Dispatched with [`Gate::ClassifyFirst`] and DuckDB's verdict not in yet: the write
    /// barrier holds its connection's later queries until it is.
    unclassified: bool,
    /// [`Gate::ClassifyFirst`]: what to run again, alone, if DuckDB says it is not a read.
    barrier_retry: Option<(String, bool)>,
    /// Its result began to leave as a stream (`handle_query_streaming`): nothing more is
    /// sent for it, and only a failure still changes its connection (closed).
    streaming: bool,
}

/// Why a query may only read. DuckDB decides whether it is a read (see [`Gate::ReadsOnly`]);
/// this decides what its client is told when it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadsOnly {
    /// `--read-only`.
    Server,
    /// The client presented the read token (`--read-token`).
    ReadToken,
    /// A GET that shows neither an allowed `Origin` nor a bearer token: any web page can make
    /// a browser send one (`<img src>`), so it may not write (CSRF).
    UnprovenGet,
}

impl ReadsOnly {
    /// The error for something refused because of this restriction; `refused` says what
    /// (`` `exec` messages ``, `SQL that DuckDB classifies as INSERT`).
    pub(crate) fn refusal(self, refused: String) -> ProtocolError {
        match self {
            ReadsOnly::Server => ProtocolError::ReadOnly,
            ReadsOnly::ReadToken => ProtocolError::ReadTokenWrite(refused),
            ReadsOnly::UnprovenGet => ProtocolError::WriteOverGet(refused),
        }
    }
}

/// What a refusal names for a message type that writes by definition.
pub(crate) fn refused_message(type_name: &str) -> String {
    format!("`{type_name}` messages")
}

/// What a refusal names for SQL DuckDB classified.
fn refused_sql(classified_as: &str) -> String {
    format!("SQL that DuckDB classifies as {classified_as}")
}

/// Every query in flight, across connections, by handle.
#[derive(Debug, Default)]
pub(crate) struct Queries {
    by_handle: BTreeMap<QueryHandle, InFlight>,
    next_handle: u64,
    /// Texts DuckDB called a read when the write barrier asked ([`KnownReads`]).
    known_reads: KnownReads,
    /// Ordered connections where a query finished or was classified: their held queries may
    /// start.
    barrier_moved: std::collections::BTreeSet<ConnId>,
}

impl Queries {
    fn insert(&mut self, entry: InFlight) -> QueryHandle {
        self.next_handle += 1;
        let handle = QueryHandle(self.next_handle);
        self.by_handle.insert(handle, entry);
        handle
    }

    fn remove(&mut self, handle: QueryHandle) -> Option<InFlight> {
        self.by_handle.remove(&handle)
    }

    fn work_of(&self, handle: QueryHandle) -> Option<Work> {
        self.by_handle.get(&handle).map(|entry| entry.work)
    }

    fn get_mut(&mut self, handle: QueryHandle) -> Option<&mut InFlight> {
        self.by_handle.get_mut(&handle)
    }
}

impl Server {
    /// Validates and registers a query or upload; `Err` carries the error and the id to
    /// reply with.
    pub(crate) fn admit(
        &mut self,
        conn: ConnId,
        query_id: Option<QueryId>,
        work: Work,
        slot: Option<Slot>,
    ) -> Result<(QueryHandle, QueryId), (ProtocolError, Option<QueryId>)> {
        if self.shutting_down {
            return Err((ProtocolError::ShuttingDown, query_id));
        }
        let query_id = self.ids.id_or_new(query_id);
        let limit = self.config.limits.max_inflight_per_conn;
        let Some(c) = self.conns.get(&conn) else {
            return Err((ProtocolError::Unauthorized, Some(query_id)));
        };
        if c.is_running(&query_id) {
            return Err((ProtocolError::DuplicateQueryId, Some(query_id)));
        }
        if let Err(e) = check_cap("max_inflight_per_conn", limit, c.inflight_count() + 1) {
            return Err((e, Some(query_id)));
        }
        let inbound = self.budget.hold_arriving(conn);
        let handle = self.queries.insert(InFlight {
            conn,
            query_id: query_id.clone(),
            work,
            cancelled: false,
            slot,
            inbound,
            timed_out: false,
            in_order_write: None,
            reads_only: None,
            gate: Gate::Any,
            unclassified: false,
            barrier_retry: None,
            streaming: false,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.track(query_id.clone(), handle);
        }
        Ok((handle, query_id))
    }

    /// Fault-injection builds: the configured SQL makes the handler panic.
    pub(crate) fn maybe_inject_panic(&self, _sql: &str) {
        #[cfg(feature = "fault-injection")]
        if self.config.panic_on_sql.as_deref() == Some(_sql) {
            panic!("fault injection: panic_on_sql matched");
        }
    }

    pub(crate) fn start_query(
        &mut self,
        conn: ConnId,
        kind: QueryKind,
        sql: String,
        query_id: Option<QueryId>,
        persist: bool,
        now: Millis,
    ) {
        self.maybe_inject_panic(&sql);
        if sql.trim().is_empty() {
            let id = self.ids.id_or_new(query_id);
            self.send_error(conn, ProtocolError::EmptySql, Some(id), now);
            return;
        }
        let reads_only = self.reads_only_for(conn, None);
        if let (Some(restriction), QueryKind::Exec) = (reads_only, kind) {
            let id = self.ids.id_or_new(query_id);
            let error = restriction.refusal(refused_message(kind.as_str()));
            return self.send_error(conn, error, Some(id), now);
        }
        match self.admit(conn, query_id, Work::Query(kind), None) {
            Ok((query, _)) => {
                let gate = match reads_only {
                    Some(_) => Gate::ReadsOnly,
                    None => Gate::Any,
                };
                if let Some(entry) = self.queries.get_mut(query) {
                    entry.reads_only = reads_only;
                }
                self.dispatch_query(query, conn, kind, sql, persist, gate, now);
            }
            Err((error, id)) => self.send_error(conn, error, id, now),
        }
    }

    /// The restriction a query of `conn` runs under: the server's (`--read-only`), then the
    /// connection's credential (read token), then the door's (an unproven GET).
    pub(crate) fn reads_only_for(
        &self,
        conn: ConnId,
        door: Option<ReadsOnly>,
    ) -> Option<ReadsOnly> {
        if self.config.read_only {
            return Some(ReadsOnly::Server);
        }
        let rights = self.conns.get(&conn).and_then(Conn::rights);
        if rights == Some(Rights::ReadOnly) {
            return Some(ReadsOnly::ReadToken);
        }
        door
    }

    /// The error for a message that writes by its type (`exec`, uploads, notifies, CRDT
    /// changes) from a connection that may only read; `None` if it may write.
    pub(crate) fn write_refusal(&self, conn: ConnId, type_name: &str) -> Option<ProtocolError> {
        self.reads_only_for(conn, None)
            .map(|restriction| restriction.refusal(refused_message(type_name)))
    }

    /// Runs an admitted query, or, for a persisted read identical to one running, makes it
    /// wait for that one's result (see [`flights`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dispatch_query(
        &mut self,
        query: QueryHandle,
        conn: ConnId,
        kind: QueryKind,
        sql: String,
        persist: bool,
        gate: Gate,
        now: Millis,
    ) {
        let Some(entry) = self.queries.get_mut(query) else {
            return;
        };
        entry.gate = gate;
        let (query_id, bare) = (entry.query_id.clone(), entry.slot.is_some());
        if let Some(limit) = self.config.query_timeout_ms {
            self.timers
                .set(TimerKey::QueryTimeout(query), now.plus(limit));
        }
        let persist = persist && kind != QueryKind::Exec;
        if !persist {
            let run = self.run_query(query, conn, kind, sql, false, query_id, bare, gate);
            self.push(Effect::RunQuery(run));
            return;
        }
        let key = FlightKey { kind, sql, bare };
        if let Some(leader) = self.flights.joinable(&key) {
            self.flights.wait(leader, query);
            return;
        }
        let sql = key.sql.clone();
        let run = self.run_query(query, conn, kind, sql, true, query_id, bare, gate);
        self.flights.lead(query, key, run.arrow_header.len());
        self.push(Effect::RunQuery(run));
    }

    /// `query` ran past `query_timeout_ms`: a waiter ends now; a running query is
    /// interrupted and answered with the timeout once the executor reports.
    pub(crate) fn query_timed_out(&mut self, query: QueryHandle, now: Millis) {
        let Some(limit) = self.config.query_timeout_ms else {
            return;
        };
        if self.flights.leave(query) {
            if let Some(entry) = self.finish(query) {
                self.deliver_timeout(entry, limit, now);
            }
            self.start_held_queries(now);
            return;
        }
        let timeout = ProtocolError::QueryTimeout(limit);
        if self.stop_reading_shared(query, timeout, now) {
            self.start_held_queries(now);
            return;
        }
        if let Some(entry) = self.queries.get_mut(query) {
            if !entry.timed_out {
                entry.timed_out = true;
                self.push(Effect::Interrupt { query });
            }
        }
    }

    fn deliver_timeout(&mut self, entry: InFlight, limit: u64, now: Millis) {
        let error = ProtocolError::QueryTimeout(limit);
        match (entry.slot, entry.work) {
            (Some(slot), _) => {
                let response = HttpResponse::error(504, error);
                self.answer(entry.conn, slot, response, now);
            }
            _ => self.send_error(entry.conn, error, Some(entry.query_id), now),
        }
    }

    /// The `RunQuery` effect: SQLRooms reply headers, or bare results for ordered dialects.
    #[allow(clippy::too_many_arguments)]
    fn run_query(
        &self,
        query: QueryHandle,
        conn: ConnId,
        kind: QueryKind,
        sql: String,
        persist: bool,
        query_id: QueryId,
        bare: bool,
        gate: Gate,
    ) -> RunQuery {
        let (arrow_header, json_header) = if bare {
            (Bytes::new(), None)
        } else {
            (
                encode_arrow_frame_header(&query_id),
                Some(JsonReplyHeader::new(&query_id)),
            )
        };
        RunQuery {
            query,
            conn,
            kind,
            sql,
            persist,
            arrow_header,
            json_header,
            query_id,
            gate,
            // Arrow and JSON alike are encoded as they are produced (an `exec` has no rows).
            stream: self
                .config
                .stream_results_above
                .filter(|_| kind != QueryKind::Exec)
                .map(|above| StreamPolicy {
                    above,
                    window: self.config.stream_window_bytes,
                }),
        }
    }

    /// Persisted reads answered from an identical query that was already running (for
    /// metrics: they never reach the executor).
    pub fn queries_shared(&self) -> u64 {
        self.flights.shared
    }

    /// Something may have written: cached results go, and running flights can no longer be
    /// joined. Always before the reply that acknowledges the write.
    pub(crate) fn invalidate_cache(&mut self) {
        self.flights.seal_all();
        self.push(Effect::InvalidateCache);
    }

    /// The connection's queries, as it goes: their bytes leave the budget, a waiter leaves
    /// its flight, a leader's waiters run on their own, and whatever runs is interrupted
    /// (`held` ones, stopped by the write barrier, never ran).
    pub(crate) fn abandon_queries(
        &mut self,
        conn: ConnId,
        inflight: Vec<QueryHandle>,
        held: &std::collections::BTreeSet<QueryHandle>,
    ) {
        for handle in inflight {
            if let Some(entry) = self.queries.remove(handle) {
                self.budget.release(conn, entry.inbound);
            }
            if held.contains(&handle) {
                continue;
            }
            if self.flights.leave(handle) {
                continue; // a waiter: nothing runs
            }
            match self.flights.stop_reading(handle) {
                // Others still read the stream it read: it runs on for them.
                Some(StoppedReading::OthersRead) => continue,
                Some(StoppedReading::Last { source }) => {
                    self.push(Effect::Interrupt { query: source });
                    continue;
                }
                None => {}
            }
            if let Some(flight) = self.flights.land(handle) {
                // Its waiters belong to other connections: they run on their own now.
                self.release_waiters(flight);
            }
            self.push(Effect::Interrupt { query: handle });
        }
    }

    pub(crate) fn cancel_query(&mut self, conn: ConnId, query_id: QueryId, now: Millis) {
        let handle = self
            .conns
            .get(&conn)
            .and_then(|c| c.query_handle(&query_id));
        if let Some(waiter) = handle.filter(|h| self.flights.is_waiting(*h)) {
            // Waiting for an identical query: nothing runs, so it ends now.
            self.flights.leave(waiter);
            self.finish(waiter);
            self.send(
                conn,
                ServerMessage::CancelAck {
                    query_id: query_id.clone(),
                    cancelled: true,
                },
                now,
            );
            self.send_error(conn, ProtocolError::Cancelled, Some(query_id), now);
            return;
        }
        if let Some(reader) = handle.filter(|h| self.flights.reads_shared_stream(*h)) {
            // Others read the same stream: it stops reading alone, its connection closing
            // as a stream cut by a cancel does.
            self.send(
                conn,
                ServerMessage::CancelAck {
                    query_id,
                    cancelled: true,
                },
                now,
            );
            self.stop_reading_shared(reader, ProtocolError::Cancelled, now);
            self.start_held_queries(now);
            return;
        }
        let cancelled = match handle.and_then(|h| self.queries.get_mut(h).map(|q| (h, q))) {
            Some((handle, entry)) => {
                if !entry.cancelled {
                    entry.cancelled = true;
                    self.push(Effect::Interrupt { query: handle });
                }
                true
            }
            None => false,
        };
        self.send(
            conn,
            ServerMessage::CancelAck {
                query_id,
                cancelled,
            },
            now,
        );
    }

    /// Removes a finished query from both tables; `None` if it is unknown or its connection
    /// is gone (then nothing is sent).
    pub(crate) fn finish(&mut self, handle: QueryHandle) -> Option<InFlight> {
        let entry = self.queries.remove(handle)?;
        if let Some(c) = self.conns.get_mut(&entry.conn) {
            c.untrack(&entry.query_id);
            if let Some(write) = entry.in_order_write {
                c.in_order().finished(write, entry.unclassified);
                self.queries.barrier_moved.insert(entry.conn);
            }
        }
        self.budget.release(entry.conn, entry.inbound);
        self.timers.cancel(&TimerKey::QueryTimeout(handle));
        Some(entry)
    }
}

/// What waiters of a flight may receive: a result, or a failure DuckDB would repeat for them.
/// `None` for an interruption, which belongs to the leader's client alone.
fn outcome_to_share(outcome: &QueryOutcome) -> Option<QueryOutcome> {
    let shareable = !outcome.is_interruption() && !matches!(outcome, QueryOutcome::NotARead(_));
    shareable.then(|| outcome.clone())
}
