//! `uploadArrow`: an Arrow IPC stream into `CREATE OR REPLACE TABLE`, in one transaction.

use std::io::Cursor;

use bytes::Bytes;
use std::sync::Arc;

use duckdb::arrow::array::ArrayRef;
use duckdb::arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use duckdb::arrow::ipc::reader::StreamReader;
use duckdb::arrow::record_batch::RecordBatch;
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
        DataType::Struct(fields) => format!("STRUCT({})", column_definitions(fields)?),
        other => return Err(format!("unsupported Arrow type in upload: {other}")),
    })
}

/// `"name" TYPE, …` for a table's columns or a struct's members.
fn column_definitions(fields: &Fields) -> Result<String, String> {
    let definitions = fields
        .iter()
        .map(|f| {
            Ok(format!(
                "{} {}",
                quote_identifier(f.name()),
                sql_type(f.data_type())?
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(definitions.join(", "))
}

/// The plain type the DuckDB appender takes for `data_type` (it rejects dictionaries, which
/// apache-arrow JS uses for every string column, and the large/view variants).
fn appendable_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        DataType::Dictionary(_, value) => Some(appendable_type(value).unwrap_or((**value).clone())),
        DataType::LargeUtf8 | DataType::Utf8View => Some(DataType::Utf8),
        DataType::LargeBinary | DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    }
}

fn appendable(batch: RecordBatch) -> Result<RecordBatch, String> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| appendable_type(f.data_type()).is_some())
    {
        return Ok(batch);
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match appendable_type(field.data_type()) {
            Some(target) => {
                let cast = duckdb::arrow::compute::cast(column, &target)
                    .map_err(|e| format!("cannot decode column {}: {e}", field.name()))?;
                fields.push(Field::new(field.name(), target, field.is_nullable()));
                columns.push(cast);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// Walks the stream's message framing and checks every declared length against the bytes
/// actually present. The Arrow reader allocates a message body from its declared length
/// before reading it, so a corrupted length would otherwise abort the process on allocation.
fn check_stream_framing(stream: &[u8]) -> Result<(), String> {
    let invalid = |what: &str| format!("invalid Arrow IPC stream: {what}");
    let read_u32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(stream.get(at..at + 4)?.try_into().ok()?))
    };
    let mut position = 0;
    while position < stream.len() {
        let mut metadata_len = read_u32(position).ok_or_else(|| invalid("truncated message"))?;
        position += 4;
        if metadata_len == 0xFFFF_FFFF {
            metadata_len = read_u32(position).ok_or_else(|| invalid("truncated message"))?;
            position += 4;
        }
        if metadata_len == 0 {
            return Ok(()); // end-of-stream marker
        }
        let metadata = stream
            .get(position..position + metadata_len as usize)
            .ok_or_else(|| invalid("message metadata longer than the upload"))?;
        let message = duckdb::arrow::ipc::root_as_message(metadata)
            .map_err(|e| invalid(&format!("bad message metadata ({e})")))?;
        position += metadata_len as usize;
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| invalid("negative message body length"))?;
        if body_len > stream.len() - position {
            return Err(invalid("message body longer than the upload"));
        }
        position += body_len;
    }
    Ok(())
}

pub fn upload(conn: &Connection, table_name: &str, payload: Bytes) -> Result<(), String> {
    check_stream_framing(&payload)?;
    let reader = StreamReader::try_new(Cursor::new(payload), None)
        .map_err(|e| format!("invalid Arrow IPC stream: {e}"))?;
    let schema = reader.schema();
    if schema.fields().is_empty() {
        return Err("invalid Arrow IPC stream: the schema has no columns".into());
    }
    let columns = column_definitions(schema.fields())?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid Arrow IPC stream: {e}"))?;

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
                    .append_record_batch(appendable(batch)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of_one_batch() -> Vec<u8> {
        use duckdb::arrow::array::Int64Array;
        let batch = RecordBatch::try_from_iter(vec![(
            "x",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
        )])
        .unwrap();
        let mut buffer = Vec::new();
        let mut writer =
            duckdb::arrow::ipc::writer::StreamWriter::try_new(&mut buffer, &batch.schema())
                .unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        drop(writer);
        buffer
    }

    #[test]
    fn stream_framing_accepts_valid_streams_and_refuses_impossible_lengths() {
        let valid = stream_of_one_batch();
        assert_eq!(check_stream_framing(&valid), Ok(()));
        assert_eq!(
            check_stream_framing(&valid[..valid.len() - 8]),
            Ok(()),
            "EOS is optional"
        );
        // Every truncation point either passes framing (the reader then reports it) or is
        // refused here; none may declare more bytes than exist.
        for cut in 0..valid.len() {
            let _ = check_stream_framing(&valid[..cut]);
        }
        // A metadata length far beyond the payload.
        let mut huge = valid.clone();
        huge[4..8].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        assert!(check_stream_framing(&huge)
            .unwrap_err()
            .contains("longer than the upload"));
    }

    #[test]
    fn column_definitions_quote_names_and_map_nested_types() {
        let inner = Fields::from(vec![Field::new("a b", DataType::Int32, true)]);
        let fields = Fields::from(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Struct(inner), true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            Field::new(
                "d",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
        ]);
        assert_eq!(
            column_definitions(&fields).unwrap(),
            r#""id" BIGINT, "s" STRUCT("a b" INTEGER), "tags" VARCHAR[], "d" VARCHAR"#
        );
        let unsupported = Fields::from(vec![Field::new("f", DataType::Decimal256(50, 2), true)]);
        assert_eq!(
            column_definitions(&unsupported).unwrap_err(),
            "unsupported Arrow type in upload: Decimal256(50, 2)"
        );
        assert_eq!(quote_qualified("main.t\"x"), r#""main"."t""x""#);
    }
}
