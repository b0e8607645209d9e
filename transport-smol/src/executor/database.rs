//! The one DuckDB database, and DuckDB's verdict on what a SQL text is.
//!
//! What a statement does is DuckDB's answer, not a keyword guess: before anything runs, a
//! worker asks DuckDB's parser to split the text into statements
//! (`duckdb_extract_statements`) and prepares a single statement to learn its type
//! (`duckdb_prepared_statement_type`). duckdb-rs offers neither, so the database is opened
//! through the C API (the handle duckdb-rs connections are then made from) and each worker
//! keeps a raw connection of its own for classifying.
//!
//! Preparing binds, and binding is not always free of effects (DuckDB's binder creates the
//! directory of an `EXPORT DATABASE`, even under `EXPLAIN`). Where only a read may run
//! ([`Classifier::reads_only_verdict`]), nothing is bound: DuckDB's parser alone decides, by
//! serializing the text (`json_serialize_sql` serializes exactly one kind of statement, the
//! SELECT), and the read then runs in a read-only transaction.
//!
//! Only one statement of DuckDB's `SELECT` type is a read (DESCRIBE, SHOW, SUMMARIZE, PIVOT,
//! VALUES, FROM-first and `PRAGMA table_info` are SELECTs to DuckDB). `EXPLAIN` is a read
//! unless it says `ANALYZE` anywhere outside quotes and comments: `EXPLAIN ANALYZE` runs its
//! statement, and the C API does not tell the two apart, so that keyword may only make a read
//! a write. Everything else (`CALL`, `PRAGMA`, `SET`, `COPY`, `ATTACH`, `EXPORT`,
//! `INSTALL`/`LOAD`, DDL, DML, several statements) is not a read. A SELECT that writes
//! (`nextval`) is refused by DuckDB itself where only reads may run: those run in a read-only
//! transaction (see `super::Worker::query`).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::sync::Arc;

use duckdb::{ffi, Connection};
use duckwire_core::Verdict;

/// The database handle of the C API. Connections made from it keep the database itself alive
/// (DuckDB counts them); the handle is needed to make new ones, so whoever may still clone a
/// connection holds an `Arc` of this.
pub struct Database {
    raw: ffi::duckdb_database,
}

// SAFETY: a `duckdb_database` is a pointer to DuckDB's thread-safe database wrapper; DuckDB
// allows connecting to it from any thread.
unsafe impl Send for Database {}
unsafe impl Sync for Database {}

impl Database {
    /// Opens `path` (`:memory:` for an in-memory database) with these DuckDB settings
    /// (`access_mode`, `lambda_syntax`, …), which DuckDB validates.
    pub fn open(path: &str, settings: &[(&str, &str)]) -> Result<Arc<Database>, String> {
        let c_path = CString::new(path).map_err(|_| "the path contains a NUL byte".to_string())?;
        let mut config: ffi::duckdb_config = std::ptr::null_mut();
        // SAFETY: out-parameters point at locals; the config is destroyed on every path.
        unsafe {
            if ffi::duckdb_create_config(&mut config) != ffi::DuckDBSuccess {
                return Err("cannot create a DuckDB configuration".into());
            }
            for (key, value) in settings {
                let (Ok(c_key), Ok(c_value)) = (CString::new(*key), CString::new(*value)) else {
                    ffi::duckdb_destroy_config(&mut config);
                    return Err(format!("invalid DuckDB setting {key}={value}"));
                };
                if ffi::duckdb_set_config(config, c_key.as_ptr(), c_value.as_ptr())
                    != ffi::DuckDBSuccess
                {
                    ffi::duckdb_destroy_config(&mut config);
                    return Err(format!("DuckDB refused the setting {key}={value}"));
                }
            }
            let mut raw: ffi::duckdb_database = std::ptr::null_mut();
            let mut error: *mut c_char = std::ptr::null_mut();
            let state = ffi::duckdb_open_ext(c_path.as_ptr(), &mut raw, config, &mut error);
            ffi::duckdb_destroy_config(&mut config);
            if state != ffi::DuckDBSuccess {
                let message = if error.is_null() {
                    "DuckDB could not open the database".to_string()
                } else {
                    let message = CStr::from_ptr(error).to_string_lossy().into_owned();
                    ffi::duckdb_free(error.cast());
                    message
                };
                return Err(message);
            }
            Ok(Arc::new(Database { raw }))
        }
    }

    /// A duckdb-rs connection to this database. It may be cloned (`try_clone`) only while
    /// this `Database` is alive.
    pub fn connect(&self) -> Result<Connection, String> {
        // SAFETY: `raw` is an open database handle for as long as `self` lives.
        unsafe { Connection::open_from_raw(self.raw) }.map_err(|e| e.to_string())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // SAFETY: opened in `open`, closed once. Connections still open keep DuckDB's database
        // alive on their own.
        unsafe { ffi::duckdb_close(&mut self.raw) };
    }
}

/// How many verdicts a worker remembers. A statement's type depends on its text alone, so a
/// dashboard's repeated queries are classified once per worker.
const VERDICTS_REMEMBERED: usize = 512;

/// A worker's raw connection for asking DuckDB what a SQL text is.
pub struct Classifier {
    raw: ffi::duckdb_connection,
    /// For asking DuckDB's parser alone (`json_serialize_sql`) about a statement its binder
    /// rejects (see [`Classifier::parser_verdict`]).
    parser: Connection,
    remembered: HashMap<String, Verdict>,
    /// The parser's verdicts ([`Classifier::reads_only_verdict`]).
    parsed: HashMap<String, Verdict>,
    _database: Arc<Database>,
}

// SAFETY: the connection is used by one worker thread at a time (`&mut self`).
unsafe impl Send for Classifier {}

impl Classifier {
    pub fn new(database: &Arc<Database>) -> Result<Classifier, String> {
        let mut raw: ffi::duckdb_connection = std::ptr::null_mut();
        // SAFETY: the database handle is open (we hold its `Arc`); `raw` is an out-parameter.
        if unsafe { ffi::duckdb_connect(database.raw, &mut raw) } != ffi::DuckDBSuccess {
            return Err("cannot open a DuckDB connection".into());
        }
        let parser = match database.connect() {
            Ok(parser) => parser,
            Err(e) => {
                // SAFETY: connected just above, disconnected once.
                unsafe { ffi::duckdb_disconnect(&mut raw) };
                return Err(e);
            }
        };
        Ok(Classifier {
            raw,
            parser,
            remembered: HashMap::new(),
            parsed: HashMap::new(),
            _database: database.clone(),
        })
    }

    /// The verdict where only a read may run: DuckDB's parser alone, nothing bound (see the
    /// module docs). One SELECT is a read (a read of a table that does not exist fails as a
    /// read when run; a SELECT that writes is refused by the read-only transaction it runs
    /// in); anything else is not. `Err` when the parser rejects the text.
    pub fn reads_only_verdict(&mut self, sql: &str) -> Result<Verdict, String> {
        if let Some(verdict) = self.parsed.get(sql) {
            return Ok(verdict.clone());
        }
        let verdict = self.parser_verdict(sql)?;
        Ok(remember(&mut self.parsed, sql, verdict))
    }

    /// `json_serialize_sql` serializes SELECT statements only, without binding them.
    fn parser_verdict(&mut self, sql: &str) -> Result<Verdict, String> {
        let serialized: String = self
            .parser
            .prepare_cached("SELECT json_serialize_sql(?::VARCHAR)")
            .and_then(|mut statement| statement.query_row([sql], |row| row.get(0)))
            .map_err(|e| e.to_string())?;
        let parsed: serde_json::Value =
            serde_json::from_str(&serialized).map_err(|e| e.to_string())?;
        let statements = parsed["statements"].as_array().map_or(0, Vec::len);
        match (parsed["error"].as_bool(), statements) {
            (Some(false), 1) => Ok(Verdict::Read),
            (Some(false), n) => Ok(Verdict::NotARead(format!("{n} statements"))),
            // The parser's own error: the text is not SQL it understands.
            _ if parsed["error_type"] == "parser" => Err(parsed["error_message"]
                .as_str()
                .unwrap_or("Parser Error")
                .to_string()),
            _ => Ok(Verdict::NotARead("a statement other than SELECT".into())),
        }
    }

    /// DuckDB's verdict on `sql`; `Err` with DuckDB's message when its parser or binder
    /// rejects the text (nothing ran).
    pub fn classify(&mut self, sql: &str) -> Result<Verdict, String> {
        if let Some(verdict) = self.remembered.get(sql) {
            return Ok(verdict.clone());
        }
        let verdict = self.ask_duckdb(sql)?;
        Ok(remember(&mut self.remembered, sql, verdict))
    }

    fn ask_duckdb(&self, sql: &str) -> Result<Verdict, String> {
        let c_sql = CString::new(sql).map_err(|_| "SQL contains a NUL byte".to_string())?;
        let mut extracted: ffi::duckdb_extracted_statements = std::ptr::null_mut();
        // SAFETY: `raw` is an open connection owned by `self`; `extracted` is destroyed below
        // on every path, as the C API asks even when nothing was extracted.
        unsafe {
            let count = ffi::duckdb_extract_statements(self.raw, c_sql.as_ptr(), &mut extracted);
            let verdict = match count {
                0 => Err(extract_error(extracted)),
                1 => self.statement_verdict(extracted, sql),
                n => Ok(Verdict::NotARead(format!("{n} statements"))),
            };
            ffi::duckdb_destroy_extracted(&mut extracted);
            verdict
        }
    }

    /// # Safety
    /// `extracted` must hold at least one statement extracted on `self.raw`.
    unsafe fn statement_verdict(
        &self,
        extracted: ffi::duckdb_extracted_statements,
        sql: &str,
    ) -> Result<Verdict, String> {
        let mut prepared: ffi::duckdb_prepared_statement = std::ptr::null_mut();
        let state = unsafe {
            ffi::duckdb_prepare_extracted_statement(self.raw, extracted, 0, &mut prepared)
        };
        let result = if state == ffi::DuckDBSuccess {
            let statement_type = unsafe { ffi::duckdb_prepared_statement_type(prepared) };
            Ok(verdict_of(statement_type, sql))
        } else {
            let error = unsafe { ffi::duckdb_prepare_error(prepared) };
            Err(if error.is_null() {
                "DuckDB could not prepare the statement".to_string()
            } else {
                unsafe { CStr::from_ptr(error) }
                    .to_string_lossy()
                    .into_owned()
            })
        };
        unsafe { ffi::duckdb_destroy_prepare(&mut prepared) };
        result
    }
}

/// Keeps `verdict` for `sql` (forgetting all at once when full) and hands it back.
fn remember(verdicts: &mut HashMap<String, Verdict>, sql: &str, verdict: Verdict) -> Verdict {
    if verdicts.len() >= VERDICTS_REMEMBERED {
        verdicts.clear();
    }
    verdicts.insert(sql.to_string(), verdict.clone());
    verdict
}

impl Drop for Classifier {
    fn drop(&mut self) {
        // SAFETY: connected in `new`, disconnected once, before the database `Arc` goes.
        unsafe { ffi::duckdb_disconnect(&mut self.raw) };
    }
}

/// # Safety
/// `extracted` must come from `duckdb_extract_statements`.
unsafe fn extract_error(extracted: ffi::duckdb_extracted_statements) -> String {
    let error = unsafe { ffi::duckdb_extract_statements_error(extracted) };
    if error.is_null() {
        return duckwire_core::ProtocolError::EmptySql.to_string();
    }
    unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned()
}

/// The verdict for one prepared statement of `statement_type`.
fn verdict_of(statement_type: ffi::duckdb_statement_type, sql: &str) -> Verdict {
    match statement_type {
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT => Verdict::Read,
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPLAIN
            if duckwire_core::sql::has_keyword(sql, "ANALYZE")
                || duckwire_core::sql::has_keyword(sql, "ANALYSE") =>
        {
            Verdict::NotARead("EXPLAIN ANALYZE".into())
        }
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPLAIN => Verdict::Read,
        other => Verdict::NotARead(statement_type_name(other).into()),
    }
}

/// DuckDB's name for a statement type (`StatementTypeToString`).
fn statement_type_name(statement_type: ffi::duckdb_statement_type) -> &'static str {
    match statement_type {
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT => "SELECT",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_INSERT => "INSERT",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_UPDATE => "UPDATE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPLAIN => "EXPLAIN",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_DELETE => "DELETE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_PREPARE => "PREPARE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_CREATE => "CREATE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXECUTE => "EXECUTE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_ALTER => "ALTER",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_TRANSACTION => "TRANSACTION",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_COPY => "COPY",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_ANALYZE => "ANALYZE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_VARIABLE_SET => "SET VARIABLE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_CREATE_FUNC => "CREATE FUNCTION",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_DROP => "DROP",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXPORT => "EXPORT",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_PRAGMA => "PRAGMA",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_VACUUM => "VACUUM",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_CALL => "CALL",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SET => "SET",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_LOAD => "LOAD",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_RELATION => "RELATION",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_EXTENSION => "EXTENSION",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_LOGICAL_PLAN => "LOGICAL PLAN",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_ATTACH => "ATTACH",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_DETACH => "DETACH",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_MULTI => "MULTI",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_COPY_DATABASE => "COPY DATABASE",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_UPDATE_EXTENSIONS => "UPDATE EXTENSIONS",
        ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_MERGE_INTO => "MERGE INTO",
        _ => "a statement of unknown type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        let database = Database::open(":memory:", &[]).unwrap();
        let setup = database.connect().unwrap();
        setup
            .execute_batch("create table t(x int); create sequence s")
            .unwrap();
        Classifier::new(&database).unwrap()
    }

    fn verdict(classifier: &mut Classifier, sql: &str) -> Verdict {
        classifier
            .classify(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    #[test]
    fn reads_are_one_statement_duckdb_calls_a_select() {
        let mut c = classifier();
        for sql in [
            "select 1",
            "  (WITH a AS (select 1) SELECT * FROM a)",
            "from t",
            "values (1), (2)",
            "table t",
            "describe t",
            "show tables",
            "summarize t",
            "select 'insert into t values (1)' as s",
            "-- insert into t\nselect 1",
            "explain select * from t",
            "select * from t;",
        ] {
            assert_eq!(verdict(&mut c, sql), Verdict::Read, "{sql}");
        }
    }

    #[test]
    fn writes_and_everything_else_are_not_reads_whatever_they_look_like() {
        let mut c = classifier();
        for (sql, named) in [
            (
                "with a as (select 1) insert into t select * from a",
                "INSERT",
            ),
            (
                "WiTh a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
                "INSERT",
            ),
            ("/* select */ insert into t values (1)", "INSERT"),
            ("insert into t values (1) returning x", "INSERT"),
            (
                "explain analyze insert into t values (2)",
                "EXPLAIN ANALYZE",
            ),
            ("EXPLAIN ANALYZE select 1", "EXPLAIN ANALYZE"),
            ("update t set x = 2", "UPDATE"),
            ("delete from t", "DELETE"),
            ("create table u(x int)", "CREATE"),
            ("drop table t", "DROP"),
            ("call pragma_version()", "CALL"),
            // DuckDB 2.0 turns this PRAGMA into a SET; either way not a read.
            ("pragma enable_profiling", ""),
            ("set threads = 1", "SET"),
            ("copy (select 1) to '/tmp/duckwire-never.csv'", "COPY"),
            ("attach ':memory:' as m", "ATTACH"),
            ("load json", "LOAD"),
            ("checkpoint", ""),
            ("select 1; select 2", "2 statements"),
            ("select 1; insert into t values (1)", "2 statements"),
        ] {
            match verdict(&mut c, sql) {
                Verdict::NotARead(what) => {
                    if !named.is_empty() {
                        assert_eq!(what, named, "{sql}")
                    }
                }
                Verdict::Read => panic!("{sql} was called a read"),
            }
        }
    }

    #[test]
    fn text_duckdb_cannot_parse_or_bind_is_its_error_and_not_remembered() {
        let mut c = classifier();
        let error = c.classify("selec 1").unwrap_err();
        assert!(error.contains("Parser Error"), "{error}");
        let error = c.classify("select * from missing").unwrap_err();
        assert!(error.contains("missing"), "{error}");
        assert!(c.remembered.is_empty());
    }

    /// Where only reads may run, nothing is bound: binding `EXPORT DATABASE` creates its
    /// directory (the test `export_binding_acts` shows why this matters).
    /// The DuckDB behaviour that keeps binding away from reads-only verdicts.
    #[test]
    fn export_binding_acts() {
        let mut c = classifier();
        let dir = std::env::temp_dir().join(format!("duckwire-bound-{}", std::process::id()));
        let verdict = c.classify(&format!("export database '{}'", dir.display()));
        assert_eq!(verdict, Ok(Verdict::NotARead("EXPORT".into())));
        assert!(
            dir.exists(),
            "DuckDB no longer acts when binding EXPORT: simplify"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_only_verdicts_come_from_the_parser_and_bind_nothing() {
        let mut c = classifier();
        let dir = std::env::temp_dir().join(format!("duckwire-export-{}", std::process::id()));
        for sql in [
            format!("export database '{}'", dir.display()),
            "insert into missing values (1)".into(),
            "with a as (select 1) insert into missing select * from a".into(),
            "explain analyze select * from missing".into(),
            "explain select 1".into(),
            "pragma table_info('t')".into(),
            "call pragma_version()".into(),
            "select 1; select * from missing".into(),
        ] {
            let verdict = c.reads_only_verdict(&sql).unwrap();
            assert!(!verdict.is_read(), "{sql}");
        }
        assert!(!dir.exists(), "binding created {}", dir.display());
        for sql in [
            "select * from missing",
            "select 1",
            "from t",
            "describe t",
            "summarize t",
            "show tables",
            "values (1)",
        ] {
            assert_eq!(c.reads_only_verdict(sql), Ok(Verdict::Read), "{sql}");
        }
        let error = c.reads_only_verdict("selec 1").unwrap_err();
        assert!(error.contains("syntax error"), "{error}");
    }
}
