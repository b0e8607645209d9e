//! The `upload` harness: any bytes as an `uploadArrow` payload decode to batches or to an
//! error naming what is wrong, never a panic (`duckwire_smol`'s upload decoder, which runs
//! before DuckDB sees anything). Seeds are real Arrow IPC streams ([`seed_streams`]).

use std::sync::Arc;

use bytes::Bytes;
use duckwire_smol::duckdb::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, NullArray,
    StringArray, StringDictionaryBuilder, StructArray,
};
use duckwire_smol::duckdb::arrow::datatypes::{DataType, Field, Int32Type};
use duckwire_smol::duckdb::arrow::ipc::writer::StreamWriter;
use duckwire_smol::duckdb::arrow::record_batch::RecordBatch;
use duckwire_smol::executor::upload::decode::decode;

pub fn run(data: &[u8]) -> Result<(), String> {
    match decode(Bytes::copy_from_slice(data)) {
        Ok(upload) if upload.columns.is_empty() => {
            Err("a stream was accepted without columns".into())
        }
        Ok(_) => Ok(()),
        Err(error)
            if !error.starts_with("invalid Arrow IPC stream")
                && !error.starts_with("unsupported")
                && !error.starts_with("cannot decode") =>
        {
            Err(format!("an error that does not say what is wrong: {error}"))
        }
        Err(_) => Ok(()),
    }
}

/// Valid streams of the column types clients upload: numbers, strings (plain and as the
/// dictionaries apache-arrow JS writes), booleans, nulls, lists and structs, in one and in
/// several batches.
pub fn seed_streams() -> Vec<Vec<u8>> {
    let mut dictionary = StringDictionaryBuilder::<Int32Type>::new();
    for value in ["a", "b", "a", "c"] {
        dictionary.append_value(value);
    }
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
        Some(vec![Some(1), None]),
        None,
        Some(vec![]),
        Some(vec![Some(4)]),
    ]);
    let structs = StructArray::from(vec![(
        Arc::new(Field::new("inner", DataType::Int64, true)),
        Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])) as ArrayRef,
    )]);
    let mixed = RecordBatch::try_from_iter(vec![
        (
            "i",
            Arc::new(Int32Array::from(vec![1, 2, 3, 4])) as ArrayRef,
        ),
        (
            "f",
            Arc::new(Float64Array::from(vec![0.5, f64::NAN, -1.0, 2.0])),
        ),
        (
            "s",
            Arc::new(StringArray::from(vec![
                Some("x"),
                None,
                Some(""),
                Some("é"),
            ])),
        ),
        ("d", Arc::new(dictionary.finish())),
        (
            "b",
            Arc::new(BooleanArray::from(vec![true, false, true, false])),
        ),
        ("n", Arc::new(NullArray::new(4))),
        ("l", Arc::new(list)),
        ("st", Arc::new(structs)),
    ])
    .expect("a valid batch");
    vec![
        stream(std::slice::from_ref(&mixed)),
        stream(&[mixed.slice(0, 2), mixed.slice(2, 2)]),
        stream(&[mixed.slice(0, 0)]),
    ]
}

fn stream(batches: &[RecordBatch]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = StreamWriter::try_new(&mut bytes, &batches[0].schema()).expect("writer");
    for batch in batches {
        writer.write(batch).expect("write");
    }
    writer.finish().expect("finish");
    drop(writer);
    bytes
}
