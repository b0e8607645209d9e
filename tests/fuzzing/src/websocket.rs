//! The `websocket` harness: WebSocket framing and permessage-deflate
//! (`duckwire_core::websocket`).
//!
//! Input layout: byte 0 picks the mode. Even: **raw bytes** — byte 1 sets the role, whether
//! deflate was negotiated and the cap, byte 2 the size of the pieces the rest is fed in; the
//! decoder must not panic, must give the same events and the same error however the bytes
//! are split, must never hand out a message over its cap, and after an error must keep
//! returning it. Odd: **round trip** — the rest describes messages (opcode, fragment sizes,
//! compressed or not, payload) that are encoded with the codec's own encoder and must decode
//! to the same messages.

use arbitrary::Unstructured;
use bytes::Bytes;
use duckwire_core::websocket::{
    encode_frame, Decoder, MessageDeflater, OpCode, Role, WsError, WsEvent,
};
use duckwire_core::Frame;

pub fn run(data: &[u8]) -> Result<(), String> {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 0 => raw(rest),
        Some((_, rest)) => round_trip(rest),
        None => Ok(()),
    }
}

const BROKEN_DEFLATE: WsError = WsError::Protocol("invalid deflate data");

type Outcome = (Vec<WsEvent>, Option<WsError>);

fn decode_in_pieces(decoder: &mut Decoder, wire: &[u8], piece: usize) -> Outcome {
    let mut events = Vec::new();
    for chunk in wire.chunks(piece.max(1)) {
        decoder.feed(chunk);
        loop {
            match decoder.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(error) => return (events, Some(error)),
            }
        }
    }
    (events, None)
}

fn raw(data: &[u8]) -> Result<(), String> {
    let [settings, piece, wire @ ..] = data else {
        return Ok(());
    };
    let role = if settings & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let deflate = settings & 2 != 0;
    let cap = match settings >> 2 {
        0 => None,
        n => Some(usize::from(n) * 97),
    };
    let mut whole = Decoder::new(role, cap, deflate);
    let (events, error) = decode_in_pieces(&mut whole, wire, wire.len());
    let mut split = Decoder::new(role, cap, deflate);
    let split_outcome = decode_in_pieces(&mut split, wire, usize::from(*piece));
    // The same messages and an error in both or neither. Which error may differ in one
    // case only (a documented divergence): a compressed message that is both broken and over
    // the cap, where the inflater drops the output it had not released when it finds the
    // break, so how much of the message was seen first depends on how its bytes arrived.
    let same_error = match (&error, &split_outcome.1) {
        (None, None) => true,
        (Some(a), Some(b)) => a == b || [a, b].contains(&&BROKEN_DEFLATE),
        _ => false,
    };
    if events != split_outcome.0 || !same_error {
        return Err(format!(
            "fed whole and in pieces of {piece}, the same bytes decode differently"
        ));
    }
    for event in &events {
        if let (WsEvent::Message(frame), Some(cap)) = (event, cap) {
            if frame.len() > cap {
                return Err(format!(
                    "a {}-byte message passed a {cap}-byte cap",
                    frame.len()
                ));
            }
        }
    }
    if let Some(error) = error {
        whole.feed(b"\x81\x80\0\0\0\0");
        if whole.next_event() != Err(error.clone()) {
            return Err(format!("the decoder forgot its error {error:?}"));
        }
    }
    Ok(())
}

fn round_trip(data: &[u8]) -> Result<(), String> {
    let mut input = Unstructured::new(data);
    let role = if input.arbitrary::<bool>().unwrap_or(false) {
        Role::Server
    } else {
        Role::Client
    };
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    let mut deflater = MessageDeflater::new(input.int_in_range(0..=9).unwrap_or(1));
    while !input.is_empty() && sent.len() < 16 {
        let text = input.arbitrary::<bool>().unwrap_or(false);
        let compressed = input.arbitrary::<bool>().unwrap_or(false);
        let fragments = input.int_in_range(1..=4usize).unwrap_or(1);
        let payload: Vec<u8> = if text {
            String::from(input.arbitrary::<&str>().unwrap_or("")).into_bytes()
        } else {
            input.arbitrary::<&[u8]>().unwrap_or(&[]).to_vec()
        };
        let part = payload.len().div_ceil(fragments).max(1);
        let pieces: Vec<&[u8]> = if payload.is_empty() {
            vec![&[]]
        } else {
            payload.chunks(part).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let body = if compressed {
                deflater.part(piece, last).map_err(|e| e.to_string())?
            } else {
                piece.to_vec()
            };
            let opcode = match (i, text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let key = match role {
                Role::Server => Some([i as u8, 0x5A, 0xC3, payload.len() as u8]),
                Role::Client => None,
            };
            wire.extend(encode_frame(opcode, last, compressed && i == 0, &body, key));
        }
        sent.push(if text {
            Frame::Text(String::from_utf8(payload).expect("built from a str"))
        } else {
            Frame::Binary(Bytes::from(payload))
        });
    }
    let (events, error) = decode_in_pieces(&mut Decoder::new(role, None, true), &wire, 7);
    if let Some(error) = error {
        return Err(format!("our own frames did not decode: {error}"));
    }
    let received: Vec<Frame> = events
        .into_iter()
        .filter_map(|event| match event {
            WsEvent::Message(frame) => Some(frame),
            _ => None,
        })
        .collect();
    if received != sent {
        return Err(format!(
            "sent {} messages, read back different ones",
            sent.len()
        ));
    }
    Ok(())
}

/// Seeds: a browser's compressed query, fragments with a ping between them, a close, and
/// round-trip descriptions.
pub fn seeds() -> Vec<Vec<u8>> {
    let key = [1, 2, 3, 4];
    let masked = |opcode, fin, compressed, payload: &[u8]| {
        encode_frame(opcode, fin, compressed, payload, Some(key))
    };
    let query = br#"{"type":"arrow","sql":"select 1","queryId":"q1"}"#;
    let compressed = MessageDeflater::new(6).part(query, true).expect("deflate");
    let mut fragments = masked(OpCode::Binary, false, false, b"abc");
    fragments.extend(masked(OpCode::Ping, true, false, b"p"));
    fragments.extend(masked(OpCode::Continuation, true, false, b"def"));
    let raw_inputs = [
        (0b0000_0000u8, masked(OpCode::Text, true, false, query)),
        (0b0000_0010, masked(OpCode::Text, true, true, &compressed)),
        (0b0000_0110, masked(OpCode::Text, true, true, &compressed)),
        (0b0000_0000, fragments),
        (
            0b0000_0000,
            masked(OpCode::Close, true, false, &[0x03, 0xE8, b'o', b'k']),
        ),
    ];
    let mut seeds: Vec<Vec<u8>> = raw_inputs
        .into_iter()
        .map(|(settings, wire)| [&[0u8, settings, 5][..], &wire].concat())
        .collect();
    seeds.push([&[1u8, 1, 3][..], b"\x01\x01\x02hello world, hello world"].concat());
    seeds.push([&[1u8, 0, 6][..], &[0u8, 1, 4, 200][..], &[7u8; 200][..]].concat());
    seeds
}
