//! `uploadArrow`: an Arrow IPC stream into `CREATE OR REPLACE TABLE`, in one transaction.

use std::io::Cursor;

use bytes::Bytes;
use duckdb::arrow::datatypes::{DataType, TimeUnit};
use duckdb::arrow::ipc::reader::StreamReader;
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

/// The DuckDB column type for an Arrow type, or an error naming the unsupported type.
fn sql_type(data_type: &DataType) -> Result<String, String> {
    Ok(match data_type {
        DataType::Null => "INTEGER".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "UTINYINT".into(),
        DataType::UInt16 => "USMALLINT".into(),
        DataType::UInt32 => "UINTEGER".into(),
        DataType::UInt64 => "UBIGINT".into(),
        DataType::Float16 | DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BLOB".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Timestamp(TimeUnit::Second, None) => "TIMESTAMP_S".into(),
        DataType::Timestamp(TimeUnit::Millisecond, None) => "TIMESTAMP_MS".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "TIMESTAMP".into(),
        DataType::Timestamp(TimeUnit::Nanosecond, None) => "TIMESTAMP_NS".into(),
        DataType::Interval(_) | DataType::Duration(_) => "INTERVAL".into(),
        DataType::Dictionary(_, value) => sql_type(value)?,
        DataType::List(field) | DataType::LargeList(field) => {
            format!("{}[]", sql_type(field.data_type())?)
        }
        DataType::FixedSizeList(field, n) => format!("{}[{n}]", sql_type(field.data_type())?),
        DataType::Struct(fields) => {
            let members = fields
                .iter()
                .map(|f| {
                    Ok(format!(
                        "{} {}",
                        quote_identifier(f.name()),
                        sql_type(f.data_type())?
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            format!("STRUCT({})", members.join(", "))
        }
        other => return Err(format!("unsupported Arrow type in upload: {other}")),
    })
}

pub fn upload(conn: &Connection, table_name: &str, payload: Bytes) -> Result<(), String> {
    let reader = StreamReader::try_new(Cursor::new(payload), None)
        .map_err(|e| format!("invalid Arrow IPC stream: {e}"))?;
    let schema = reader.schema();
    if schema.fields().is_empty() {
        return Err("invalid Arrow IPC stream: the schema has no columns".into());
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(format!(
                "{} {}",
                quote_identifier(f.name()),
                sql_type(f.data_type())?
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid Arrow IPC stream: {e}"))?;

    conn.execute_batch("BEGIN TRANSACTION")
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let ddl = format!(
            "CREATE OR REPLACE TABLE {} ({})",
            quote_qualified(table_name),
            columns.join(", ")
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
