//! An `uploadArrow` payload into batches DuckDB's appender takes, or an error: decoding is
//! total. arrow-rs' IPC reader trusts the lengths and offsets a stream declares (it slices
//! its body buffer with them and panics past its end), so every declared length is checked
//! against the bytes present before the reader sees the stream. Pure: no DuckDB here, so the
//! `upload` fuzz target (`fuzz/`, harness `duckwire_fuzzing::upload`) runs it alone.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use duckdb::arrow::array::ArrayRef;
use duckdb::arrow::datatypes::{DataType, Field, Fields, IntervalUnit, Schema, TimeUnit};
use duckdb::arrow::ipc;
use duckdb::arrow::ipc::reader::StreamReader;
use duckdb::arrow::record_batch::RecordBatch;

use super::quote_identifier;

/// Rows a batch may declare per byte of the upload, plus [`SPARE_ROWS`]. Every column but a
/// `Null` one needs at least a bit per row; this bounds what an all-`Null` table of a few
/// bytes can make DuckDB append.
const ROWS_PER_BYTE: u64 = 8;
const SPARE_ROWS: u64 = 1 << 16;

/// A decoded upload: the table's column definitions and its batches, ready to append.
#[derive(Debug)]
pub struct DecodedUpload {
    /// `"name" TYPE, …`
    pub columns: String,
    pub batches: Vec<RecordBatch>,
}

/// Decodes an Arrow IPC stream. Never panics; every malformed stream is an `Err` naming what
/// is wrong.
pub fn decode(payload: Bytes) -> Result<DecodedUpload, String> {
    check_stream_framing(&payload)?;
    let reader = StreamReader::try_new(Cursor::new(payload), None).map_err(invalid)?;
    let schema = reader.schema();
    if schema.fields().is_empty() {
        return Err(invalid("the schema has no columns"));
    }
    // Before any batch is read: an unsupported type (unions among them, whose reader slices
    // by the declared row count) is refused here.
    let columns = column_definitions(schema.fields())?;
    let batches = reader
        .map(|batch| appendable(batch.map_err(invalid)?))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DecodedUpload { columns, batches })
}

fn invalid(what: impl std::fmt::Display) -> String {
    format!("invalid Arrow IPC stream: {what}")
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

/// Walks the stream's messages and checks every declared length against the bytes actually
/// present: message sizes (the reader allocates a body from its declared length before
/// reading it), and each batch's buffers and row counts (the reader slices the body with
/// them).
fn check_stream_framing(stream: &[u8]) -> Result<(), String> {
    let read_u32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            stream.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let max_rows = (stream.len() as u64)
        .saturating_mul(ROWS_PER_BYTE)
        .saturating_add(SPARE_ROWS);
    let mut layout = Layout::default();
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
        let metadata = position
            .checked_add(metadata_len as usize)
            .and_then(|end| stream.get(position..end))
            .ok_or_else(|| invalid("message metadata longer than the upload"))?;
        let message = ipc::root_as_message(metadata)
            .map_err(|e| invalid(format!("bad message metadata ({e})")))?;
        position += metadata_len as usize;
        let body_len = u64::try_from(message.bodyLength())
            .map_err(|_| invalid("negative message body length"))?;
        if body_len > (stream.len() - position) as u64 {
            return Err(invalid("message body longer than the upload"));
        }
        match message.header_type() {
            ipc::MessageHeader::Schema => {
                if let Some(schema) = message.header_as_schema() {
                    layout = Layout::of(schema)?;
                }
            }
            ipc::MessageHeader::RecordBatch => {
                if let Some(batch) = message.header_as_record_batch() {
                    check_batch(&batch, body_len, max_rows)?;
                    check_widths(&batch, &layout.columns)?;
                }
            }
            ipc::MessageHeader::DictionaryBatch => {
                let dictionary = message.header_as_dictionary_batch();
                if let Some((id, batch)) = dictionary.and_then(|d| Some((d.id(), d.data()?))) {
                    check_batch(&batch, body_len, max_rows)?;
                    if let Some(values) = layout.dictionaries.get(&id) {
                        check_widths(&batch, std::slice::from_ref(values))?;
                    }
                }
            }
            _ => {}
        }
        position += body_len as usize;
    }
    Ok(())
}

/// What the stream's schema says its batches hold: the columns of a record batch and the
/// value type of each dictionary.
#[derive(Default)]
struct Layout {
    columns: Vec<DataType>,
    dictionaries: std::collections::BTreeMap<i64, DataType>,
}

impl Layout {
    fn of(schema: ipc::Schema) -> Result<Layout, String> {
        let arrow_schema = ipc::convert::try_fb_to_schema(schema).map_err(invalid)?;
        let mut layout = Layout {
            columns: arrow_schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
            dictionaries: Default::default(),
        };
        if let Some(fields) = schema.fields() {
            for (fb_field, field) in fields.iter().zip(arrow_schema.fields()) {
                layout.find_dictionaries(fb_field, field.data_type());
            }
        }
        Ok(layout)
    }

    /// Dictionary ids are in the flatbuffer schema, the types in the Arrow one: both trees
    /// have the same shape.
    fn find_dictionaries(&mut self, fb_field: ipc::Field, data_type: &DataType) {
        let value_type = match (fb_field.dictionary(), data_type) {
            (Some(encoding), DataType::Dictionary(_, value)) => {
                self.dictionaries.insert(encoding.id(), (**value).clone());
                value.as_ref()
            }
            _ => data_type,
        };
        let children: Vec<&DataType> = match value_type {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                vec![f.data_type()]
            }
            DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
            _ => Vec::new(),
        };
        if let Some(fb_children) = fb_field.children() {
            for (fb_child, child) in fb_children.iter().zip(children) {
                self.find_dictionaries(fb_child, child);
            }
        }
    }
}

/// arrow-rs views a buffer as a slice of its values and panics when the buffer's length is
/// not a whole number of them; valid writers never produce such a buffer, so it is refused.
/// The buffers are checked up to the first column whose layout cannot be known (a type
/// uploads do not support, refused with the schema before any batch is read, or a view
/// column without its variadic buffer count, which the reader refuses when it gets there):
/// the reader builds, and validates, every column before that one.
fn check_widths(batch: &ipc::RecordBatch, columns: &[DataType]) -> Result<(), String> {
    let Some(buffers) = batch.buffers() else {
        return Ok(());
    };
    let mut variadic = batch.variadicBufferCounts().into_iter().flatten();
    let mut widths = Vec::new();
    for column in columns {
        if buffer_widths(column, &mut variadic, buffers.len(), &mut widths).is_none() {
            break;
        }
    }
    for (buffer, width) in buffers.iter().zip(widths) {
        if buffer.length() % width as i64 != 0 {
            return Err(invalid(format!(
                "a buffer of {} bytes does not hold whole values of {width} bytes",
                buffer.length()
            )));
        }
    }
    Ok(())
}

/// The width in bytes of the values in each buffer of a column (1 for bitmaps and bytes), in
/// the order the IPC format lays them out; `None` where the layout cannot be known (a type
/// uploads do not support, a view column without its variadic count), the widths already
/// pushed being right.
fn buffer_widths(
    data_type: &DataType,
    variadic: &mut impl Iterator<Item = i64>,
    max_buffers: usize,
    widths: &mut Vec<usize>,
) -> Option<()> {
    use DataType::*;
    if widths.len() > max_buffers {
        return Some(()); // more than the batch has: the reader reports the mismatch
    }
    let mut fixed = |width: usize| widths.extend([1, width]);
    match data_type {
        Null => {}
        Boolean | Int8 | UInt8 => fixed(1),
        Int16 | UInt16 | Float16 => fixed(2),
        Int32 | UInt32 | Float32 | Date32 | Time32(_) => fixed(4),
        Int64 | UInt64 | Float64 | Date64 | Time64(_) | Timestamp(..) | Duration(_) => fixed(8),
        Interval(unit) => fixed(match unit {
            IntervalUnit::YearMonth => 4,
            IntervalUnit::DayTime => 8,
            IntervalUnit::MonthDayNano => 16,
        }),
        Decimal128(..) => fixed(16),
        Utf8 | Binary => widths.extend([1, 4, 1]),
        LargeUtf8 | LargeBinary => widths.extend([1, 8, 1]),
        Utf8View | BinaryView => {
            widths.extend([1, 16]);
            let data_buffers = usize::try_from(variadic.next()?).ok()?.min(max_buffers);
            widths.extend(std::iter::repeat_n(1, data_buffers));
        }
        Dictionary(key, _) => return buffer_widths(key, variadic, max_buffers, widths),
        List(child) | Map(child, _) => {
            widths.extend([1, 4]);
            return buffer_widths(child.data_type(), variadic, max_buffers, widths);
        }
        LargeList(child) => {
            widths.extend([1, 8]);
            return buffer_widths(child.data_type(), variadic, max_buffers, widths);
        }
        FixedSizeList(child, _) => {
            widths.push(1);
            return buffer_widths(child.data_type(), variadic, max_buffers, widths);
        }
        Struct(fields) => {
            widths.push(1);
            for field in fields {
                buffer_widths(field.data_type(), variadic, max_buffers, widths)?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// A batch's buffers lie inside its message body, and its row counts are plausible.
fn check_batch(batch: &ipc::RecordBatch, body_len: u64, max_rows: u64) -> Result<(), String> {
    let plausible_rows = |rows: i64| u64::try_from(rows).is_ok_and(|rows| rows <= max_rows);
    if !plausible_rows(batch.length()) {
        return Err(invalid(format!(
            "a batch declares {} rows, more than the upload can hold",
            batch.length()
        )));
    }
    for node in batch.nodes().iter().flatten() {
        if !plausible_rows(node.length()) || !(0..=node.length()).contains(&node.null_count()) {
            return Err(invalid(
                "a column declares an impossible length or null count",
            ));
        }
    }
    for buffer in batch.buffers().iter().flatten() {
        let inside_body = u64::try_from(buffer.offset())
            .ok()
            .zip(u64::try_from(buffer.length()).ok())
            .and_then(|(offset, length)| offset.checked_add(length))
            .is_some_and(|end| end <= body_len);
        if !inside_body {
            return Err(invalid("a buffer lies outside its message body"));
        }
    }
    Ok(())
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

    /// The body offset of the first buffer of the stream's record batch, found by decoding
    /// its metadata (so the test corrupts exactly that field).
    fn corrupt_first_buffer(stream: &mut [u8], offset: i64, length: i64) {
        let mut position = 0;
        loop {
            let len = u32::from_le_bytes(stream[position + 4..position + 8].try_into().unwrap());
            let start = position + 8;
            let metadata = &stream[start..start + len as usize];
            let message = ipc::root_as_message(metadata).unwrap();
            let body = message.bodyLength() as usize;
            if let Some(batch) = message.header_as_record_batch() {
                let buffer = batch.buffers().unwrap().get(1);
                let (old_offset, old_length) = (buffer.offset(), buffer.length());
                // Find the 16-byte (offset, length) pair inside the metadata and rewrite it.
                let mut needle = old_offset.to_le_bytes().to_vec();
                needle.extend_from_slice(&old_length.to_le_bytes());
                let at = metadata
                    .windows(16)
                    .position(|w| w == needle.as_slice())
                    .unwrap();
                stream[start + at..start + at + 8].copy_from_slice(&offset.to_le_bytes());
                stream[start + at + 8..start + at + 16].copy_from_slice(&length.to_le_bytes());
                return;
            }
            position = start + len as usize + body;
        }
    }

    #[test]
    fn buffers_outside_the_body_are_refused_before_the_reader_slices_them() {
        for (offset, length) in [(1 << 20, 8), (0, 1 << 20), (-8, 8), (8, -1), (i64::MAX, 8)] {
            let mut stream = stream_of_one_batch();
            corrupt_first_buffer(&mut stream, offset, length);
            let error = decode(Bytes::from(stream)).unwrap_err();
            assert_eq!(
                error, "invalid Arrow IPC stream: a buffer lies outside its message body",
                "offset {offset}, length {length}"
            );
        }
    }

    #[test]
    fn corrupted_streams_are_errors_never_panics() {
        let valid = stream_of_one_batch();
        assert_eq!(decode(Bytes::from(valid.clone())).unwrap().batches.len(), 1);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..5_000 {
            let mut stream = valid.clone();
            match round % 3 {
                0 => {
                    let bit = next() as usize % (stream.len() * 8);
                    stream[bit / 8] ^= 1 << (bit % 8);
                }
                1 => stream.truncate(next() as usize % stream.len()),
                _ => {
                    let at = next() as usize % (stream.len() - 8);
                    stream[at..at + 8].copy_from_slice(&next().to_le_bytes());
                }
            }
            let _ = decode(Bytes::from(stream)); // must return, whatever it says
        }
    }

    /// Found by the `upload` fuzz target: a list whose offsets buffer holds 2 bytes too many,
    /// in a batch whose last column (a binary view) has no variadic buffer count. The view's
    /// layout cannot be known, and the check once gave up on every buffer of the batch, so
    /// arrow-rs's validation of the list panicked on the odd offsets.
    #[test]
    fn buffers_before_a_column_of_unknown_layout_are_still_checked() {
        let stream =
            include_bytes!("testdata/odd_list_offsets_before_a_view_without_counts.arrows");
        let error = decode(Bytes::from_static(stream)).unwrap_err();
        assert!(
            error.starts_with("invalid Arrow IPC stream: a buffer of")
                && error.ends_with("does not hold whole values of 4 bytes"),
            "{error}"
        );
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
        assert_eq!(
            super::super::quote_qualified("main.t\"x"),
            r#""main"."t""x""#
        );
    }
}
