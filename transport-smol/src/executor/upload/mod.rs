//! `uploadArrow`: an Arrow IPC stream into `CREATE OR REPLACE TABLE`, in one transaction.
//! Decoding (total, fuzzed) is [`decode`]; this module only writes what it decoded.

pub mod decode;

use bytes::Bytes;
use duckdb::Connection;
/// `a.b.c` → `"a"."b"."c"` (parts were validated by the core; quoting is still applied).
pub fn quote_qualified(name: &str) -> String {
    name.split('.')
        .map(quote_identifier)
        .collect::<Vec<_>>()
        .join(".")
}

pub fn quote_identifier(part: &str) -> String {
    format!("\"{}\"", part.replace('"', "\"\""))
}

pub fn upload(conn: &Connection, table_name: &str, payload: Bytes) -> Result<(), String> {
    let decode::DecodedUpload { columns, batches } = decode::decode(payload)?;

    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let ddl = format!(
            "CREATE OR REPLACE TABLE {} ({columns})",
            quote_qualified(table_name),
        );
        conn.execute_batch(&ddl).map_err(|e| e.to_string())?;
        let parts: Vec<&str> = table_name.split('.').collect();
        let mut appender = match parts.as_slice() {
            [table] => conn.appender(table),
            [schema, table] => conn.appender_to_db(table, schema),
            [catalog, schema, table] => conn.appender_to_catalog_and_db(table, catalog, schema),
            _ => unreachable!("validated by the core"),
        }
        .map_err(|e| e.to_string())?;
        for batch in batches {
            if batch.num_rows() > 0 {
                appender
                    .append_record_batch(batch)
                    .map_err(|e| e.to_string())?;
            }
        }
        appender.flush().map_err(|e| e.to_string())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
