//! The write barrier of ordered connections (HTTP and Mosaic's socket, whose answers leave in
//! request order): their reads run concurrently, a statement that may write runs alone, and a
//! query the keyword hint takes for a read is classified by DuckDB
//! ([`Gate::ClassifyFirst`]) before any later query of its connection starts (PROTOCOL §3a,
//! §4a).

use crate::codec::QueryKind;
use crate::effect::{Gate, Verdict};
use crate::http::Slot;
use crate::ids::{ConnId, Millis, QueryHandle, QueryId};
use crate::queries::{refused_message, ReadsOnly, Work};
use crate::server::Server;
use crate::ProtocolError;

/// A query of an ordered connection admitted (its answer slot taken) but not started yet.
///
/// Mosaic's own servers run a socket's messages one at a time, so a client may send a write
/// and the reads that depend on it back to back. duckwire runs an ordered connection's reads
/// concurrently, but a statement that may write runs alone: after every query received
/// before it has finished, and before any query received after it starts.
#[derive(Debug)]
pub(crate) struct HeldQuery {
    query: QueryHandle,
    kind: QueryKind,
    sql: String,
    persist: bool,
    write: bool,
}

/// An ordered connection's queries, as the write barrier sees them (each connection keeps
/// one; only this module's methods change it).
#[derive(Debug, Default)]
pub(crate) struct InOrder {
    /// Admitted, waiting for the barrier, in request order.
    held: std::collections::VecDeque<HeldQuery>,
    /// Dispatched and not finished.
    running: usize,
    /// One of the running ones may write.
    write_running: bool,
    /// Running ones whose verdict DuckDB has not given yet ([`Gate::ClassifyFirst`]): one
    /// of them may still turn out to be a write that must run before later queries.
    unclassified: usize,
}

impl InOrder {
    /// Whether a query received now (or the oldest held one) must wait.
    fn must_wait(&self, write: bool) -> bool {
        self.write_running || self.unclassified > 0 || (write && self.running > 0)
    }

    /// A query received now, held back if it must wait; it comes back when it may start.
    fn admit(&mut self, held: HeldQuery) -> Option<HeldQuery> {
        if !self.held.is_empty() || self.must_wait(held.write) {
            self.held.push_back(held);
            return None;
        }
        Some(held)
    }

    fn started(&mut self, write: bool, gate: Gate) {
        self.running += 1;
        self.write_running |= write;
        self.unclassified += usize::from(gate == Gate::ClassifyFirst);
    }

    fn classified(&mut self) {
        self.unclassified = self.unclassified.saturating_sub(1);
    }

    /// A running query finished: `write` as it was started, `unclassified` if DuckDB had
    /// not given its verdict yet.
    pub(crate) fn finished(&mut self, write: bool, unclassified: bool) {
        self.running = self.running.saturating_sub(1);
        if write {
            self.write_running = false;
        }
        if unclassified {
            self.classified();
        }
    }

    /// The oldest held query, taken off the queue if the barrier lets it start.
    fn next_startable(&mut self) -> Option<HeldQuery> {
        let next = self.held.front()?;
        if self.must_wait(next.write) {
            return None;
        }
        self.held.pop_front()
    }

    /// The held queries, forgotten (the connection is gone).
    pub(crate) fn drain_held(&mut self) -> impl Iterator<Item = QueryHandle> + '_ {
        self.held.drain(..).map(|held| held.query)
    }
}

/// SQL texts DuckDB classified as reads, so the write barrier need not ask again: what a text
/// is depends on the text alone (DuckDB's parser says which statement it is). Bounded: texts
/// up to [`KnownReads::MAX_TEXT`] bytes, [`KnownReads::MAX_TEXTS`] of them, forgotten all at
/// once when full. A text not remembered is simply asked about again.
#[derive(Debug, Default)]
pub(crate) struct KnownReads {
    texts: std::collections::BTreeSet<String>,
}

impl KnownReads {
    const MAX_TEXT: usize = 4096;
    const MAX_TEXTS: usize = 1024;

    pub(crate) fn learn(&mut self, sql: String) {
        if sql.len() > Self::MAX_TEXT {
            return;
        }
        if self.texts.len() >= Self::MAX_TEXTS {
            self.texts.clear();
        }
        self.texts.insert(sql);
    }

    pub(crate) fn contains(&self, sql: &str) -> bool {
        self.texts.contains(sql)
    }
}

impl Server {
    /// A query of an ordered connection: bare results, answered in its `slot`'s turn. `door`
    /// is the restriction the request itself carries (an unproven GET, a read token).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_query_answered_in_order(
        &mut self,
        conn: ConnId,
        kind: QueryKind,
        sql: String,
        query_id: QueryId,
        persist: bool,
        slot: Slot,
        door: Option<ReadsOnly>,
        now: Millis,
    ) -> Result<(), ProtocolError> {
        self.maybe_inject_panic(&sql);
        if sql.trim().is_empty() {
            return Err(ProtocolError::EmptySql);
        }
        let reads_only = self.reads_only_for(conn, door);
        if let (Some(restriction), QueryKind::Exec) = (reads_only, kind) {
            return Err(restriction.refusal(refused_message(kind.as_str())));
        }
        let (query, _) = self
            .admit(conn, Some(query_id), Work::Query(kind), Some(slot))
            .map_err(|(error, _)| error)?;
        if let Some(entry) = self.queries.get_mut(query) {
            entry.reads_only = reads_only;
        }
        // A query that may only read cannot write, whatever it is. Otherwise the keyword hint
        // may only make a query a write (it runs alone at once); one it calls a read is still
        // asked of DuckDB before later queries may start (`Gate::ClassifyFirst`).
        let write = reads_only.is_none() && crate::sql::hint_may_write(kind, &sql);
        let held = HeldQuery {
            query,
            kind,
            sql,
            persist,
            write,
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if let Some(held) = c.in_order().admit(held) {
            self.dispatch_in_order(conn, held, now);
        }
        Ok(())
    }

    /// Starts a query of an ordered connection, counted by its write barrier.
    fn dispatch_in_order(&mut self, conn: ConnId, held: HeldQuery, now: Millis) {
        let known_read = self.queries.known_reads.contains(&held.sql);
        let Some(entry) = self.queries.get_mut(held.query) else {
            return;
        };
        let gate = match (entry.reads_only, held.write) {
            (Some(_), _) => Gate::ReadsOnly,
            (None, true) => Gate::Any,
            // DuckDB called this very text a read before.
            (None, false) if known_read => Gate::Any,
            (None, false) => Gate::ClassifyFirst,
        };
        entry.in_order_write = Some(held.write);
        if gate == Gate::ClassifyFirst {
            entry.unclassified = true;
            entry.barrier_retry = Some((held.sql.clone(), held.persist));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.in_order().started(held.write, gate);
        }
        self.dispatch_query(
            held.query,
            conn,
            held.kind,
            held.sql,
            held.persist,
            gate,
            now,
        )
    }

    /// DuckDB's verdict on a [`Gate::ClassifyFirst`] query, before it runs. A read lets the
    /// connection's later queries start (and those waiting for its result: same SQL, same
    /// verdict); anything else comes back as [`QueryOutcome::NotARead`].
    pub(crate) fn query_classified(&mut self, handle: QueryHandle, verdict: Verdict, now: Millis) {
        if !verdict.is_read() {
            return;
        }
        let waiters = self.flights.waiters_of(handle).to_vec();
        for query in std::iter::once(handle).chain(waiters) {
            self.mark_classified(query);
        }
        self.start_held_queries(now);
    }

    fn mark_classified(&mut self, handle: QueryHandle) {
        let Some(entry) = self.queries.get_mut(handle) else {
            return;
        };
        if !std::mem::take(&mut entry.unclassified) {
            return;
        }
        let conn = entry.conn;
        if let Some((sql, _)) = entry.barrier_retry.take() {
            self.queries.known_reads.learn(sql);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.in_order().classified();
            self.queries.barrier_moved.insert(conn);
        }
    }

    /// A [`Gate::ClassifyFirst`] query DuckDB says is not a read: not run, it goes back to the
    /// front of its connection's queue as a write, to run alone once the queries before it
    /// finish. `false` if it was not such a query.
    pub(crate) fn hand_back_to_barrier(&mut self, handle: QueryHandle) -> bool {
        let Some(entry) = self.queries.get_mut(handle) else {
            return false;
        };
        let (Work::Query(kind), Some((sql, persist))) = (entry.work, entry.barrier_retry.take())
        else {
            return false;
        };
        let was_unclassified = std::mem::take(&mut entry.unclassified);
        entry.in_order_write = None;
        let conn = entry.conn;
        let Some(c) = self.conns.get_mut(&conn) else {
            return true;
        };
        let in_order = c.in_order();
        in_order.finished(false, was_unclassified);
        // Back to the front of the queue, as a write.
        in_order.held.push_front(HeldQuery {
            query: handle,
            kind,
            sql,
            persist,
            write: true,
        });
        self.queries.barrier_moved.insert(conn);
        true
    }

    /// The oldest held query of `conn`, taken off its queue if the write barrier lets it start.
    fn next_startable(&mut self, conn: ConnId) -> Option<HeldQuery> {
        self.conns.get_mut(&conn)?.in_order().next_startable()
    }

    /// Starts the held queries of the connections whose running queries finished, as far as
    /// the write barrier allows.
    pub(crate) fn start_held_queries(&mut self, now: Millis) {
        while let Some(conn) = self.queries.barrier_moved.pop_first() {
            while let Some(held) = self.next_startable(conn) {
                let query = held.query;
                if self.queries.work_of(query).is_none() {
                    continue;
                }
                self.dispatch_in_order(conn, held, now);
            }
        }
    }
}
