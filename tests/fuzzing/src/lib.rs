//! Fuzzing and replay harnesses for the core, shared by the cargo-fuzz targets in `fuzz/`
//! and the stable-toolchain corpus replay in `cargo test`, so both check the same things.
//!
//! Compiled only for tests and with the `fuzzing` feature; never part of a normal build.
//! Inputs are plain bytes read through [`arbitrary::Unstructured`]; each harness has an
//! encoder that is the exact inverse of its reader, so seed corpora can be written from real
//! protocol traffic. A harness returns `Err` naming the invariant a run broke.

pub mod crdt;
pub mod oracle;
pub mod ordered;
pub mod session;
pub mod upload;
pub mod websocket;

use arbitrary::Unstructured;
use bytes::Bytes;

use duckwire_core::{decode_client_frame, Frame, Limits};

/// The decode target: the first byte says text (even) or binary (odd), the rest is the frame.
/// Decoding must never panic, must be deterministic, and every error must say something.
pub fn decode(data: &[u8]) -> Result<(), String> {
    let Some((&kind, body)) = data.split_first() else {
        return Ok(());
    };
    let frame = if kind % 2 == 0 {
        match std::str::from_utf8(body) {
            Ok(text) => Frame::Text(text.to_string()),
            Err(_) => return Ok(()),
        }
    } else {
        Frame::Binary(Bytes::copy_from_slice(body))
    };
    for limits in [Limits::default(), Limits::unlimited(), tight_limits()] {
        let first = decode_client_frame(&frame, &limits);
        let second = decode_client_frame(&frame, &limits);
        if format!("{first:?}") != format!("{second:?}") {
            return Err(format!("decoding is not deterministic for {frame:?}"));
        }
        if let Err(error) = first {
            if error.error.to_string().is_empty() {
                return Err(format!("an error without a message for {frame:?}"));
            }
        }
    }
    Ok(())
}

/// Caps small enough that fuzzed inputs reach them.
fn tight_limits() -> Limits {
    Limits {
        max_frame_bytes: Some(64),
        max_header_bytes: Some(16),
        max_query_id_len: Some(4),
        max_channel_len: Some(4),
        max_room_id_len: Some(4),
        ..Limits::default()
    }
}

/// Encodes a frame for the decode target (the inverse of [`decode`]'s reading).
pub fn encode_decode_input(frame: &Frame) -> Vec<u8> {
    match frame {
        Frame::Text(text) => [&[0u8][..], text.as_bytes()].concat(),
        Frame::Binary(bytes) => [&[1u8][..], bytes].concat(),
    }
}

/// An input step of a harness that can be written back as the bytes its reader reads.
pub trait Encode {
    fn write(&self, out: &mut Vec<u8>);
}

/// Encodes steps into the byte input a harness reads back (its seeds are written this way).
pub fn encode<T: Encode>(ops: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.write(&mut out);
    }
    out
}

/// Reads one byte; 0 once the input is exhausted (as `Unstructured` does).
fn byte(u: &mut Unstructured<'_>) -> u8 {
    u.arbitrary::<u8>().unwrap_or(0)
}

/// Reads a length byte and that many bytes (fewer if the input ends).
fn short_bytes(u: &mut Unstructured<'_>) -> Vec<u8> {
    let len = usize::from(byte(u)).min(u.len());
    u.bytes(len).map(<[u8]>::to_vec).unwrap_or_default()
}

fn push_short_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&bytes[..len]);
}

/// Recorded client traffic from files named `NNNNN.text` / `NNNNN.bin` (as
/// `scripts/js-compat/record.mjs` writes them), in name order. The caller reads the files:
/// the core does no IO.
pub fn traffic_frames(mut files: Vec<(String, Vec<u8>)>) -> Vec<Frame> {
    files.sort();
    files
        .into_iter()
        .filter_map(|(name, bytes)| {
            if name.ends_with(".text") {
                String::from_utf8(bytes).ok().map(Frame::Text)
            } else if name.ends_with(".bin") {
                Some(Frame::Binary(Bytes::from(bytes)))
            } else {
                None
            }
        })
        .collect()
}

/// The raw CRDT updates among recorded frames (binary frames that are not framed uploads).
pub fn crdt_updates(traffic: &[Frame]) -> Vec<Vec<u8>> {
    traffic
        .iter()
        .filter_map(
            |frame| match decode_client_frame(frame, &Limits::default()) {
                Ok(duckwire_core::ClientMessage::CrdtUpdate(bytes)) => Some(bytes.to_vec()),
                _ => None,
            },
        )
        .collect()
}
