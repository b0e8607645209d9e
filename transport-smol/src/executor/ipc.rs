//! Arrow IPC *stream* output (schema, record batches, end-of-stream marker), written after
//! the frame header in one buffer so the frame goes to the socket without another copy.

use duckdb::arrow::datatypes::SchemaRef;
use duckdb::arrow::ipc::writer::StreamWriter;
use duckdb::arrow::record_batch::RecordBatch;

pub fn write_stream(
    buffer: &mut impl std::io::Write,
    schema: &SchemaRef,
    batches: impl IntoIterator<Item = Result<RecordBatch, String>>,
) -> Result<(), String> {
    let mut writer = StreamWriter::try_new(buffer, schema).map_err(|e| e.to_string())?;
    for batch in batches {
        writer.write(&batch?).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())
}
