//! Arrow record batches → a JSON array of row objects, valued as the Python server's pandas
//! `to_json(orient="records")` values them (PROTOCOL §3), with the documented divergences: blobs
//! are base64 strings and 64-bit integers stay exact.
//!
//! Longer than 600 lines for a reason: about a third is the tests of the type-by-type mapping,
//! kept beside it so a reader checks both against PROTOCOL §3 at once.

use base64::Engine;
use duckdb::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericBinaryArray, GenericListArray,
    GenericStringArray, OffsetSizeTrait, PrimitiveArray, StringViewArray,
};
use duckdb::arrow::datatypes::{self as dt, DataType, IntervalUnit, TimeUnit};
use duckdb::arrow::record_batch::RecordBatch;
use duckdb::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

const MS_PER_DAY: i64 = 86_400_000;

/// Column names with duplicates suffixed `_1`, `_2`… in order of appearance.
pub fn unique_column_names<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut taken: std::collections::HashSet<String> = Default::default();
    let names: Vec<&str> = names.collect();
    taken.extend(names.iter().map(|n| n.to_string()));
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let count = seen.entry(name.to_string()).or_insert(0);
        if *count == 0 {
            out.push(name.to_string());
        } else {
            let mut candidate = format!("{name}_{count}");
            while taken.contains(&candidate) {
                *count += 1;
                candidate = format!("{name}_{count}");
            }
            taken.insert(candidate.clone());
            out.push(candidate);
        }
        *count += 1;
    }
    out
}

/// How the rows text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsForm {
    /// A JSON array (Mosaic's answers, the cache).
    Json,
    /// The same array already escaped as the content of a JSON string: the `data` of a
    /// SQLRooms `json` reply, written in one pass instead of written and then escaped again.
    /// Numbers, literals and punctuation need no escaping; keys are escaped once per result;
    /// only string cells are escaped as they are written.
    EscapedInString,
}

/// Writes the rows of `batches`, as DuckDB produces them (one at a time: a result is never
/// held whole), as one JSON array in `form`, handing it to `emit` a batch of rows at a time
/// so a consumer works on text that is still in cache. `emit` may fail (a streamed reply's
/// reader gone); the first error, of a batch or of `emit`, ends it.
pub fn for_each_chunk<B: std::borrow::Borrow<RecordBatch>, E>(
    batches: impl IntoIterator<Item = Result<B, E>>,
    names: &[String],
    form: RowsForm,
    mut emit: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let keys: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            let key = format!("{}:", Value::String(n.clone()));
            match form {
                RowsForm::Json => key.into_bytes(),
                RowsForm::EscapedInString => {
                    let mut escaped = Vec::with_capacity(key.len() + 4);
                    duckwire_core::escape_string_content(&mut escaped, &key);
                    escaped
                }
            }
        })
        .collect();
    let mut chunk: Vec<u8> = Vec::new();
    let mut scratch: Vec<u8> = Vec::new();
    chunk.push(b'[');
    let mut first_row = true;
    for batch in batches {
        let batch = batch?;
        let batch = batch.borrow();
        let arrays: Vec<ArrayRef> = batch.columns().iter().map(decode_dictionary).collect();
        let columns: Vec<ColumnCells<'_>> =
            arrays.iter().map(|a| ColumnCells::of(a.as_ref())).collect();
        for row in 0..batch.num_rows() {
            if !first_row {
                chunk.push(b',');
            }
            first_row = false;
            chunk.push(b'{');
            for (i, column) in columns.iter().enumerate() {
                if i > 0 {
                    chunk.push(b',');
                }
                chunk.extend_from_slice(&keys[i]);
                if !column.write_plain(row, &mut chunk) {
                    // A cell whose JSON has quotes (strings, and everything value_at builds).
                    match form {
                        RowsForm::Json => column.write_quoted(row, &mut chunk),
                        RowsForm::EscapedInString => {
                            scratch.clear();
                            column.write_quoted(row, &mut scratch);
                            let text =
                                std::str::from_utf8(&scratch).expect("serde_json writes UTF-8");
                            duckwire_core::escape_string_content(&mut chunk, text);
                        }
                    }
                }
            }
            chunk.push(b'}');
        }
        emit(std::str::from_utf8(&chunk).expect("serde_json writes UTF-8"))?;
        chunk.clear();
    }
    chunk.push(b']');
    emit(std::str::from_utf8(&chunk).expect("serde_json writes UTF-8"))
}

fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("writing JSON to memory cannot fail");
}

/// A column's cells with its type resolved once per batch: the row loop then matches a
/// small enum and reads the typed array, instead of matching the data type and downcasting
/// for every cell (and skips the null check of a column without nulls).
struct ColumnCells<'a> {
    array: &'a dyn Array,
    has_nulls: bool,
    typed: Typed<'a>,
}

enum Typed<'a> {
    Boolean(&'a BooleanArray),
    Int8(&'a PrimitiveArray<dt::Int8Type>),
    Int16(&'a PrimitiveArray<dt::Int16Type>),
    Int32(&'a PrimitiveArray<dt::Int32Type>),
    Int64(&'a PrimitiveArray<dt::Int64Type>),
    UInt8(&'a PrimitiveArray<dt::UInt8Type>),
    UInt16(&'a PrimitiveArray<dt::UInt16Type>),
    UInt32(&'a PrimitiveArray<dt::UInt32Type>),
    UInt64(&'a PrimitiveArray<dt::UInt64Type>),
    Float32(&'a PrimitiveArray<dt::Float32Type>),
    Float64(&'a PrimitiveArray<dt::Float64Type>),
    Date32(&'a PrimitiveArray<dt::Date32Type>),
    Utf8(&'a GenericStringArray<i32>),
    LargeUtf8(&'a GenericStringArray<i64>),
    Utf8View(&'a StringViewArray),
    /// Everything else goes through [`value_at`].
    Other,
}

impl<'a> ColumnCells<'a> {
    fn of(array: &'a dyn Array) -> Self {
        let typed = match array.data_type() {
            DataType::Boolean => Typed::Boolean(array.as_boolean()),
            DataType::Int8 => Typed::Int8(array.as_primitive()),
            DataType::Int16 => Typed::Int16(array.as_primitive()),
            DataType::Int32 => Typed::Int32(array.as_primitive()),
            DataType::Int64 => Typed::Int64(array.as_primitive()),
            DataType::UInt8 => Typed::UInt8(array.as_primitive()),
            DataType::UInt16 => Typed::UInt16(array.as_primitive()),
            DataType::UInt32 => Typed::UInt32(array.as_primitive()),
            DataType::UInt64 => Typed::UInt64(array.as_primitive()),
            DataType::Float32 => Typed::Float32(array.as_primitive()),
            DataType::Float64 => Typed::Float64(array.as_primitive()),
            DataType::Date32 => Typed::Date32(array.as_primitive()),
            DataType::Utf8 => Typed::Utf8(array.as_string()),
            DataType::LargeUtf8 => Typed::LargeUtf8(array.as_string()),
            DataType::Utf8View => Typed::Utf8View(array.as_string_view()),
            _ => Typed::Other,
        };
        ColumnCells {
            array,
            has_nulls: array.null_count() > 0,
            typed,
        }
    }

    /// Writes a cell whose JSON has no quote, backslash or control character (null,
    /// numbers, booleans, dates as numbers) straight into `out`, without building a
    /// [`Value`]; `false` (nothing written) for the other cells. The same text [`value_at`]
    /// gives (tested below).
    fn write_plain(&self, row: usize, out: &mut Vec<u8>) -> bool {
        /// A float as serde_json writes it (an f32 as the shortest text that reads back as
        /// that f32, not its widened f64), NaN and ±inf as `null`.
        fn float(out: &mut Vec<u8>, finite: bool, value: &impl serde::Serialize) {
            if finite {
                put(out, value);
            } else {
                out.extend_from_slice(b"null");
            }
        }
        fn int(out: &mut Vec<u8>, value: impl itoa::Integer) {
            out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
        if self.has_nulls && self.array.is_null(row) {
            out.extend_from_slice(b"null");
            return true;
        }
        match self.typed {
            Typed::Boolean(a) => {
                out.extend_from_slice(if a.value(row) { b"true" } else { b"false" })
            }
            Typed::Int8(a) => int(out, a.value(row)),
            Typed::Int16(a) => int(out, a.value(row)),
            Typed::Int32(a) => int(out, a.value(row)),
            Typed::Int64(a) => int(out, a.value(row)),
            Typed::UInt8(a) => int(out, a.value(row)),
            Typed::UInt16(a) => int(out, a.value(row)),
            Typed::UInt32(a) => int(out, a.value(row)),
            Typed::UInt64(a) => int(out, a.value(row)),
            Typed::Float32(a) => {
                let value = a.value(row);
                float(out, value.is_finite(), &value);
            }
            Typed::Float64(a) => {
                let value = a.value(row);
                float(out, value.is_finite(), &value);
            }
            Typed::Date32(a) => int(out, i64::from(a.value(row)) * MS_PER_DAY),
            Typed::Utf8(_) | Typed::LargeUtf8(_) | Typed::Utf8View(_) | Typed::Other => {
                return false
            }
        }
        true
    }

    /// Writes any other cell: strings without building a [`Value`], the rest through
    /// [`value_at`].
    fn write_quoted(&self, row: usize, out: &mut Vec<u8>) {
        match self.typed {
            Typed::Utf8(a) => put(out, a.value(row)),
            Typed::LargeUtf8(a) => put(out, a.value(row)),
            Typed::Utf8View(a) => put(out, a.value(row)),
            _ => put(out, &value_at(self.array, row)),
        }
    }
}

fn decode_dictionary(array: &ArrayRef) -> ArrayRef {
    match array.data_type() {
        DataType::Dictionary(_, value_type) => {
            duckdb::arrow::compute::cast(array, value_type).unwrap_or_else(|_| array.clone())
        }
        _ => array.clone(),
    }
}

fn number_f64(value: f64) -> Value {
    Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// A FLOAT as the shortest decimal that reads back as the same 32-bit float (`0.1`, as DuckDB
/// prints it), not its widened double (`0.10000000149011612`, digits the column never held).
fn float32(value: f32) -> Value {
    if !value.is_finite() {
        return Value::Null;
    }
    number_f64(value.to_string().parse().unwrap_or(f64::from(value)))
}

/// One cell as a JSON value.
pub fn value_at(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Null => Value::Null,
        DataType::Boolean => {
            let a: &BooleanArray = array.as_boolean();
            Value::Bool(a.value(row))
        }
        DataType::Int8 => array.as_primitive::<dt::Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<dt::Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<dt::Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<dt::Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<dt::UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<dt::UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<dt::UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<dt::UInt64Type>().value(row).into(),
        DataType::Float16 => {
            number_f64(array.as_primitive::<dt::Float16Type>().value(row).to_f64())
        }
        DataType::Float32 => float32(array.as_primitive::<dt::Float32Type>().value(row)),
        DataType::Float64 => number_f64(array.as_primitive::<dt::Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => decimal(
            array.as_primitive::<dt::Decimal128Type>().value(row),
            *scale,
        ),
        DataType::Utf8 => string(array.as_string::<i32>(), row),
        DataType::LargeUtf8 => string(array.as_string::<i64>(), row),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Binary => blob(array.as_binary::<i32>(), row),
        DataType::LargeBinary => blob(array.as_binary::<i64>(), row),
        DataType::BinaryView => base64_value(array.as_binary_view().value(row)),
        DataType::FixedSizeBinary(_) => base64_value(array.as_fixed_size_binary().value(row)),
        DataType::Date32
        | DataType::Date64
        | DataType::Timestamp(..)
        | DataType::Duration(_)
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Interval(_) => temporal_value(array, row),
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..)
        | DataType::Dictionary(..) => nested_value(array, row),
        // Anything else (unions, decimals of 256 bits…) as Arrow's display text.
        _ => display_value(array, row),
    }
}

/// A date, time, timestamp, duration or interval cell: epoch milliseconds (pandas' `to_json`
/// default), times of day as `HH:MM:SS[.ffffff]` text.
fn temporal_value(array: &dyn Array, row: usize) -> Value {
    match array.data_type() {
        DataType::Date32 => {
            (i64::from(array.as_primitive::<dt::Date32Type>().value(row)) * MS_PER_DAY).into()
        }
        DataType::Date64 => array.as_primitive::<dt::Date64Type>().value(row).into(),
        DataType::Timestamp(unit, _) => {
            let raw = match unit {
                TimeUnit::Second => array.as_primitive::<dt::TimestampSecondType>().value(row),
                TimeUnit::Millisecond => array
                    .as_primitive::<dt::TimestampMillisecondType>()
                    .value(row),
                TimeUnit::Microsecond => array
                    .as_primitive::<dt::TimestampMicrosecondType>()
                    .value(row),
                TimeUnit::Nanosecond => array
                    .as_primitive::<dt::TimestampNanosecondType>()
                    .value(row),
            };
            to_millis(raw, *unit).into()
        }
        DataType::Duration(unit) => {
            let raw = match unit {
                TimeUnit::Second => array.as_primitive::<dt::DurationSecondType>().value(row),
                TimeUnit::Millisecond => array
                    .as_primitive::<dt::DurationMillisecondType>()
                    .value(row),
                TimeUnit::Microsecond => array
                    .as_primitive::<dt::DurationMicrosecondType>()
                    .value(row),
                TimeUnit::Nanosecond => array
                    .as_primitive::<dt::DurationNanosecondType>()
                    .value(row),
            };
            to_millis(raw, *unit).into()
        }
        DataType::Time32(unit) => {
            let raw = match unit {
                TimeUnit::Second => {
                    i64::from(array.as_primitive::<dt::Time32SecondType>().value(row)) * 1_000_000
                }
                _ => {
                    i64::from(array.as_primitive::<dt::Time32MillisecondType>().value(row)) * 1_000
                }
            };
            Value::String(time_of_day(raw))
        }
        DataType::Time64(unit) => {
            let raw = match unit {
                TimeUnit::Nanosecond => {
                    array.as_primitive::<dt::Time64NanosecondType>().value(row) / 1_000
                }
                _ => array.as_primitive::<dt::Time64MicrosecondType>().value(row),
            };
            Value::String(time_of_day(raw))
        }
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = array
                .as_primitive::<dt::IntervalMonthDayNanoType>()
                .value(row);
            let ms = i64::from(v.months) * 30 * MS_PER_DAY
                + i64::from(v.days) * MS_PER_DAY
                + v.nanoseconds / 1_000_000;
            ms.into()
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let v = array.as_primitive::<dt::IntervalDayTimeType>().value(row);
            (i64::from(v.days) * MS_PER_DAY + i64::from(v.milliseconds)).into()
        }
        DataType::Interval(IntervalUnit::YearMonth) => {
            let months = array.as_primitive::<dt::IntervalYearMonthType>().value(row);
            (i64::from(months) * 30 * MS_PER_DAY).into()
        }
        _ => display_value(array, row),
    }
}

/// A list, struct, map or dictionary cell: its values, each as [`value_at`] makes them.
fn nested_value(array: &dyn Array, row: usize) -> Value {
    match array.data_type() {
        DataType::List(_) => list(array.as_list::<i32>(), row),
        DataType::LargeList(_) => list(array.as_list::<i64>(), row),
        DataType::FixedSizeList(_, _) => {
            let values = array.as_fixed_size_list().value(row);
            Value::Array(
                (0..values.len())
                    .map(|i| value_at(values.as_ref(), i))
                    .collect(),
            )
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let names = unique_column_names(fields.iter().map(|f| f.name().as_str()));
            let mut object = Map::new();
            for (i, name) in names.into_iter().enumerate() {
                object.insert(name, value_at(s.column(i).as_ref(), row));
            }
            Value::Object(object)
        }
        DataType::Map(_, _) => {
            let entries = array.as_map().value(row);
            let mut object = Map::new();
            for i in 0..entries.len() {
                let key = match value_at(entries.column(0).as_ref(), i) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                object.insert(key, value_at(entries.column(1).as_ref(), i));
            }
            Value::Object(object)
        }
        DataType::Dictionary(_, _) => {
            let decoded = decode_dictionary(&array.slice(row, 1));
            value_at(decoded.as_ref(), 0)
        }
        _ => display_value(array, row),
    }
}

/// Arrow's display text, for types pandas has no JSON form for.
fn display_value(array: &dyn Array, row: usize) -> Value {
    let options = FormatOptions::default();
    match ArrayFormatter::try_new(array, &options) {
        Ok(formatter) => Value::String(formatter.value(row).to_string()),
        Err(_) => Value::Null,
    }
}

fn string<O: OffsetSizeTrait>(a: &GenericStringArray<O>, row: usize) -> Value {
    Value::String(a.value(row).to_string())
}

fn blob<O: OffsetSizeTrait>(a: &GenericBinaryArray<O>, row: usize) -> Value {
    base64_value(a.value(row))
}

fn base64_value(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn list<O: OffsetSizeTrait>(a: &GenericListArray<O>, row: usize) -> Value {
    let values = a.value(row);
    Value::Array(
        (0..values.len())
            .map(|i| value_at(values.as_ref(), i))
            .collect(),
    )
}

/// Decimals (and HUGEINT, which DuckDB exports as DECIMAL(38,0)) as JSON numbers: exact
/// when they are integers that fit 64 bits, else the nearest double.
fn decimal(raw: i128, scale: i8) -> Value {
    if scale <= 0 {
        let value = raw.saturating_mul(10i128.saturating_pow(u32::from(scale.unsigned_abs())));
        if let Ok(v) = i64::try_from(value) {
            return v.into();
        }
        if let Ok(v) = u64::try_from(value) {
            return v.into();
        }
        return number_f64(value as f64);
    }
    number_f64(raw as f64 / 10f64.powi(i32::from(scale)))
}

fn to_millis(raw: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => raw.saturating_mul(1_000),
        TimeUnit::Millisecond => raw,
        TimeUnit::Microsecond => raw.div_euclid(1_000),
        TimeUnit::Nanosecond => raw.div_euclid(1_000_000),
    }
}

/// Microseconds since midnight → `HH:MM:SS[.ffffff]`.
fn time_of_day(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (h, m, s) = (seconds / 3600, (seconds / 60) % 60, seconds % 60);
    if fraction == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{fraction:06}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_names_get_suffixes() {
        let names = unique_column_names(["x", "x", "y", "x"].into_iter());
        assert_eq!(names, vec!["x", "x_1", "y", "x_2"]);
        // A real column named like a suffix keeps its name; the duplicate skips past it.
        let names = unique_column_names(["x", "x", "x_1"].into_iter());
        assert_eq!(names, vec!["x", "x_2", "x_1"]);
    }

    #[test]
    fn cells_written_directly_match_their_json_values() {
        use duckdb::arrow::array::{
            BooleanArray, Date32Array, Float32Array, Float64Array, Int16Array, Int64Array,
            Int8Array, LargeStringArray, StringArray, StringViewArray, UInt64Array,
        };
        use std::sync::Arc;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(BooleanArray::from(vec![
                Some(true),
                None,
                Some(false),
                Some(true),
            ])),
            Arc::new(Int8Array::from(vec![Some(-128), Some(0), None, Some(127)])),
            Arc::new(Int16Array::from(vec![Some(-1), Some(2), Some(3), None])),
            Arc::new(Int64Array::from(vec![
                Some(i64::MIN),
                Some(i64::MAX),
                None,
                Some(0),
            ])),
            Arc::new(UInt64Array::from(vec![
                Some(u64::MAX),
                None,
                Some(1),
                Some(0),
            ])),
            Arc::new(Float32Array::from(vec![
                Some(0.1),
                Some(f32::NAN),
                None,
                Some(-2.5),
            ])),
            Arc::new(Float32Array::from(vec![
                Some(16_777_216.0),
                Some(f32::MAX),
                Some(1e-7),
                Some(f32::from_bits(1)),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(1e300),
                Some(f64::INFINITY),
                Some(-0.0),
                Some(0.1 + 0.2),
            ])),
            Arc::new(StringArray::from(vec![
                Some("a\"b\\c\n"),
                None,
                Some("é€😀"),
                Some("\u{1}"),
            ])),
            Arc::new(LargeStringArray::from(vec![
                Some(""),
                Some("x"),
                None,
                Some("</script>"),
            ])),
            Arc::new(StringViewArray::from(vec![
                Some("a longer string than twelve"),
                None,
                Some("s"),
                Some("\t"),
            ])),
            Arc::new(Date32Array::from(vec![
                Some(0),
                Some(-1),
                Some(19_000),
                None,
            ])),
        ];
        for column in &columns {
            for row in 0..column.len() {
                let mut direct = Vec::new();
                let cells = ColumnCells::of(column.as_ref());
                if !cells.write_plain(row, &mut direct) {
                    cells.write_quoted(row, &mut direct);
                }
                let through_value = serde_json::to_vec(&value_at(column.as_ref(), row)).unwrap();
                assert_eq!(
                    String::from_utf8(direct).unwrap(),
                    String::from_utf8(through_value).unwrap(),
                    "{:?} row {row}",
                    column.data_type()
                );
            }
        }
    }

    #[test]
    fn rows_escaped_in_one_pass_are_the_rows_escaped_afterwards() {
        use duckdb::arrow::array::{Float64Array, Int32Array, StringArray};
        use duckdb::arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int32, true),
            Field::new("q\"uote\\d", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None, Some(-3)])),
                Arc::new(StringArray::from(vec![
                    Some("a\"b\\c\n\u{1}"),
                    Some("é😀"),
                    None,
                ])),
                Arc::new(Float64Array::from(vec![
                    Some(0.5),
                    Some(f64::NAN),
                    Some(1e-7),
                ])),
            ],
        )
        .unwrap();
        let batches = [batch.clone(), batch];
        let names = unique_column_names(
            batches[0]
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str()),
        );
        let write = |form, out: &mut String| {
            let batches = batches.iter().map(Ok::<_, std::convert::Infallible>);
            for_each_chunk(batches, &names, form, |c| {
                out.push_str(c);
                Ok(())
            })
        };
        let (mut plain, mut one_pass) = (String::new(), String::new());
        write(RowsForm::Json, &mut plain).unwrap();
        write(RowsForm::EscapedInString, &mut one_pass).unwrap();
        let mut afterwards = Vec::new();
        duckwire_core::escape_string_content(&mut afterwards, &plain);
        assert_eq!(one_pass, String::from_utf8(afterwards).unwrap());
        let rows: Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(rows[0]["q\"uote\\d"], "a\"b\\c\n\u{1}");
        assert_eq!(rows.as_array().unwrap().len(), 6);
    }

    #[test]
    fn times_and_decimals() {
        assert_eq!(time_of_day(3_723_000_000), "01:02:03");
        assert_eq!(time_of_day(3_723_000_500), "01:02:03.000500");
        assert_eq!(decimal(12345, 2), serde_json::json!(123.45));
        assert_eq!(
            decimal(i128::from(i64::MAX), 0),
            serde_json::json!(i64::MAX)
        );
        assert_eq!(to_millis(-1, TimeUnit::Microsecond), -1);
    }

    #[test]
    fn floats_keep_the_digits_of_their_own_width() {
        assert_eq!(float32(0.1).to_string(), "0.1");
        assert_eq!(float32(-2.5).to_string(), "-2.5");
        assert_eq!(float32(f32::INFINITY), Value::Null);
        // Every FLOAT written reads back as the same 32-bit float.
        for bits in [
            1u32,
            0x3dcc_cccd,
            0x4b80_0000,
            0x7f7f_ffff,
            0x0080_0000,
            0xbf80_0001,
        ] {
            let value = f32::from_bits(bits);
            let text = float32(value).to_string();
            assert_eq!(text.parse::<f32>().unwrap(), value, "{text}");
        }
    }
}
