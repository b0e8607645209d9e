//! Running one SQL text on a worker's connection and shaping its last result: statement by
//! statement, on a kept plan where that is safe, inside a read-only transaction where only
//! reads may run, into Arrow IPC or JSON rows.

use super::*;
use stream::{Begin, Finished, ResultWriter};

/// Whether a query may run on a plan its connection kept from an earlier run of the same SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plans {
    Fresh,
    /// Only for SQL that [`sql::plan_is_reusable`] allows, on a connection whose plans are
    /// forgotten after every write (see [`connection`]).
    Reuse,
}

/// How a result is shaped: the kind asked for and the reply headers the core gave.
#[derive(Clone, Copy)]
pub(super) struct Output<'a> {
    pub(super) kind: QueryKind,
    /// Prefixes Arrow output.
    pub(super) arrow_header: &'a Bytes,
    /// JSON is built as the whole reply ([`QueryOutcome::JsonReply`]) when given, else as the
    /// plain rows text ([`QueryOutcome::Json`]).
    pub(super) json_reply: Option<&'a JsonReplyHeader>,
    /// Arrow results past the policy's threshold are streamed, announced through `Begin`.
    pub(super) stream: Option<(StreamPolicy, Begin<'a>)>,
    /// Set (by `Begin`) once the result began to leave: it cannot be retried then.
    pub(super) began: &'a std::cell::Cell<bool>,
}

/// Runs `sql` and shapes its last result. `arrow_header` prefixes Arrow output; JSON comes
/// as the plain rows text.
pub fn run_sql(
    conn: &Connection,
    kind: QueryKind,
    sql: &str,
    arrow_header: &Bytes,
) -> Result<QueryOutcome, String> {
    let never_streams = std::cell::Cell::new(false);
    let output = Output {
        kind,
        arrow_header,
        json_reply: None,
        stream: None,
        began: &never_streams,
    };
    run_sql_planned(conn, output, sql, Plans::Fresh)
}

/// Runs `sql` on `conn` and shapes its last result.
pub(super) fn run_sql_planned(
    conn: &Connection,
    output: Output<'_>,
    sql: &str,
    plans: Plans,
) -> Result<QueryOutcome, String> {
    let kind = output.kind;
    if sql.trim().is_empty() {
        return Err(duckwire_core::ProtocolError::EmptySql.to_string());
    }
    // How to read the result (rows, or `ok`); never what the statement may do.
    if kind == QueryKind::Exec || !sql::classify(sql).returns_rows {
        let mut statement = conn.prepare(sql).map_err(|e| e.to_string())?;
        statement.execute([]).map_err(|e| e.to_string())?;
        return Ok(QueryOutcome::NoResultSet);
    }
    let shaped = if plans == Plans::Reuse {
        let mut statement = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
        let shaped = shape_result(&mut statement, output);
        if shaped.is_err() {
            // A result stopped midway stays open in the statement; never keep that.
            statement.discard();
        }
        shaped
    } else {
        let mut statement = conn.prepare(sql).map_err(|e| e.to_string())?;
        shape_result(&mut statement, output)
    };
    shaped
}

/// Runs `run` inside a read-only transaction when `read_only`, so DuckDB itself refuses any
/// write (a SELECT calling `nextval`, say) before it happens; the transaction ends either way.
pub(super) fn in_transaction<T>(
    conn: &Connection,
    read_only: bool,
    run: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    if !read_only {
        return run();
    }
    conn.execute_batch("BEGIN TRANSACTION READ ONLY")
        .map_err(|e| e.to_string())?;
    let result = run();
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match (conn.execute_batch(end), result) {
        (Err(e), Ok(_)) => Err(e.to_string()),
        (_, result) => result,
    }
}

/// Executes a prepared statement and encodes its rows as Arrow IPC or JSON.
fn shape_result(
    statement: &mut duckdb::Statement<'_>,
    output: Output<'_>,
) -> Result<QueryOutcome, String> {
    let arrow_header = output.arrow_header;
    // Stream the result: DuckDB hands over one chunk at a time, so a large result is held
    // once, as the bytes being written.
    drop(statement.stream_arrow([]).map_err(|e| e.to_string())?);
    let schema = statement.schema();
    let batches = std::iter::from_fn(|| match statement.step() {
        Ok(Some(chunk)) => Some(Ok(RecordBatch::from(&chunk))),
        Ok(None) => None,
        Err(e) => Some(Err(e.to_string())),
    });
    match output.kind {
        QueryKind::Arrow => {
            // Held whole while small; past the policy's threshold it leaves as it is written
            // (a failure then drops the writer, and its stream ends without its last piece).
            let mut frame = ResultWriter::new(arrow_header.len() + 4096, output.stream, false);
            std::io::Write::write_all(&mut frame, arrow_header)
                .map_err(|e| format!("result buffer: {e}"))?;
            ipc::write_stream(&mut frame, &schema, batches)?;
            match frame.finish().map_err(|e| e.to_string())? {
                Finished::Whole(bytes) => Ok(QueryOutcome::Arrow(bytes)),
                Finished::Streamed => Ok(QueryOutcome::Streamed),
            }
        }
        _ => {
            // Encoded batch by batch as DuckDB produces them (never the whole result twice:
            // batches and text), held whole while small and streamed past the policy's
            // threshold, as Arrow is: a SQLRooms `json` reply (the rows escaped into its
            // `data` string) or the bare rows array.
            let names =
                json::unique_column_names(schema.fields().iter().map(|f| f.name().as_str()));
            let header = output.json_reply;
            let form = match header {
                Some(_) => json::RowsForm::EscapedInString,
                None => json::RowsForm::Json,
            };
            let mut text = ResultWriter::new(4096, output.stream, true);
            let mut write = |bytes: &[u8]| {
                std::io::Write::write_all(&mut text, bytes)
                    .map_err(|e| format!("result buffer: {e}"))
            };
            if let Some(header) = header {
                write(header.as_str().as_bytes())?;
            }
            json::for_each_chunk(batches, &names, form, |chunk| write(chunk.as_bytes()))?;
            if let Some(header) = header {
                write(header.closing().as_bytes())?;
            }
            let bytes = match text.finish().map_err(|e| e.to_string())? {
                Finished::Whole(bytes) => bytes,
                Finished::Streamed => return Ok(QueryOutcome::Streamed),
            };
            // Only whole `str`s were written.
            let text = String::from_utf8(Vec::from(bytes)).map_err(|e| e.to_string())?;
            match header {
                Some(header) => JsonReply::from_text(header, text)
                    .map(QueryOutcome::JsonReply)
                    .ok_or_else(|| "internal error: a json reply without its frame".to_string()),
                None => Ok(QueryOutcome::Json(text)),
            }
        }
    }
}
