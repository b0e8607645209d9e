//! A worker's own DuckDB connection, kept across read-only queries so that they skip opening
//! a connection and, when the same SQL comes again, planning it.
//!
//! Two facts of DuckDB shape this:
//! - A connection carries session state (`SET`, `USE`, `BEGIN`, temporary objects). Every
//!   query must behave as on a fresh connection, as it does in sqlrooms-server, so the
//!   connection is kept only after statements that cannot change that state (plain reads).
//! - A prepared statement's plan is specialised to the data it was planned against: the
//!   optimizer prunes with table statistics, so `select count(*) from t where k = 'x'` planned
//!   on an empty table answers 0 forever after. Reused plans are therefore forgotten whenever
//!   anything has written since they were made ([`WriteEpoch`]), and SQL that reads files
//!   (which can change outside the server) is never planned ahead ([`super::sql::plan_is_reusable`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use duckdb::Connection;

/// How many plans a worker keeps (DuckDB's own LRU per connection). A dashboard repeats a few
/// dozen distinct queries; more are simply planned again.
const PLANS_PER_WORKER: usize = 64;

/// Counts writes to the database. Advanced after a write completes and before its reply
/// is delivered, so a query sent after a client saw a write's reply never runs on a plan made
/// before that write.
#[derive(Debug, Default)]
pub struct WriteEpoch(AtomicU64);

impl WriteEpoch {
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// The connection a worker keeps between queries, and the write epoch its plans were made in.
#[derive(Default)]
pub struct WorkerConnection {
    kept: Option<(Connection, u64)>,
}

impl WorkerConnection {
    /// The connection for a query starting at write epoch `epoch`: the kept one (its plans
    /// forgotten if anything wrote since they were made) or a new clone of `base`.
    pub fn take(&mut self, base: &Mutex<Connection>, epoch: u64) -> Result<Connection, String> {
        if let Some((conn, planned_at)) = self.kept.take() {
            if planned_at != epoch {
                conn.flush_prepared_statement_cache();
            }
            return Ok(conn);
        }
        let conn = base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()
            .map_err(|e| format!("cannot open a DuckDB connection: {e}"))?;
        conn.set_prepared_statement_cache_capacity(PLANS_PER_WORKER);
        Ok(conn)
    }

    /// Hands the connection back after a query that started at `epoch`. It is kept only if the
    /// query could not have changed its session state; otherwise it is closed (rolling back
    /// anything left open) and the next query gets a fresh one.
    pub fn give_back(&mut self, conn: Connection, epoch: u64, read_only: bool) {
        if read_only && conn.is_autocommit() {
            self.kept = Some((conn, epoch));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.prepare_cached(sql)
            .unwrap()
            .query_row([], |row| row.get(0))
            .unwrap()
    }

    /// The DuckDB behaviour this module exists for: a reused plan answers from the
    /// statistics it was planned with, so plans must not outlive a write.
    #[test]
    fn plans_are_forgotten_after_a_write() {
        let base = Mutex::new(Connection::open_in_memory().unwrap());
        base.lock()
            .unwrap()
            .execute_batch("create table t(k varchar)")
            .unwrap();
        let writer = base.lock().unwrap().try_clone().unwrap();
        let epoch = WriteEpoch::default();
        let mut worker = WorkerConnection::default();
        let sql = "select count(*) from t where k = 'x'";

        let conn = worker.take(&base, epoch.current()).unwrap();
        assert_eq!(count(&conn, sql), 0);
        worker.give_back(conn, epoch.current(), true);

        writer.execute("insert into t values ('x')", []).unwrap();
        epoch.advance();

        let conn = worker.take(&base, epoch.current()).unwrap();
        assert_eq!(count(&conn, sql), 1);
    }

    #[test]
    fn session_state_does_not_survive_a_statement_that_may_change_it() {
        let base = Mutex::new(Connection::open_in_memory().unwrap());
        let mut worker = WorkerConnection::default();
        let conn = worker.take(&base, 0).unwrap();
        conn.execute_batch("create temp table scratch(x int); begin")
            .unwrap();
        worker.give_back(conn, 0, false);
        let conn = worker.take(&base, 0).unwrap();
        assert!(conn.is_autocommit());
        assert!(conn.execute_batch("select * from scratch").is_err());
    }

    #[test]
    fn an_open_transaction_is_never_kept() {
        let base = Mutex::new(Connection::open_in_memory().unwrap());
        let mut worker = WorkerConnection::default();
        let conn = worker.take(&base, 0).unwrap();
        conn.execute_batch("begin").unwrap();
        // Even if a caller wrongly calls it read-only.
        worker.give_back(conn, 0, true);
        assert!(worker.take(&base, 0).unwrap().is_autocommit());
    }
}
