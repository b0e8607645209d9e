//! The codec against RFC 6455 / RFC 7692's rules, and round trips through both roles.

use super::*;
use crate::codec::Frame;
use bytes::Bytes;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame as a client sends it: masked.
fn client_frame(opcode: OpCode, fin: bool, compressed: bool, payload: &[u8]) -> Vec<u8> {
    encode_frame(opcode, fin, compressed, payload, Some(KEY))
}

fn server(max: Option<usize>, deflate: bool) -> Decoder {
    Decoder::new(Role::Server, max, deflate)
}

fn events(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<WsEvent>, WsError> {
    decoder.feed(bytes);
    let mut out = Vec::new();
    while let Some(event) = decoder.next_event()? {
        out.push(event);
    }
    Ok(out)
}

fn compressed_parts(message: &[u8], part_size: usize) -> Vec<Vec<u8>> {
    let mut deflater = MessageDeflater::new(6);
    let chunks: Vec<&[u8]> = message.chunks(part_size.max(1)).collect();
    let last = chunks.len().saturating_sub(1);
    if chunks.is_empty() {
        return vec![deflater.part(&[], true).unwrap()];
    }
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| deflater.part(chunk, i == last).unwrap())
        .collect()
}

#[test]
fn a_masked_text_message_decodes_even_when_fed_one_byte_at_a_time() {
    let wire = client_frame(OpCode::Text, true, false, "héllo".as_bytes());
    let mut decoder = server(Some(1024), false);
    let mut got = Vec::new();
    for byte in &wire {
        got.extend(events(&mut decoder, &[*byte]).unwrap());
    }
    assert_eq!(got, vec![WsEvent::Message(Frame::Text("héllo".into()))]);
}

#[test]
fn fragments_join_and_a_ping_between_them_is_handed_out_first() {
    let mut wire = client_frame(OpCode::Binary, false, false, b"abc");
    wire.extend(client_frame(OpCode::Ping, true, false, b"p"));
    wire.extend(client_frame(OpCode::Continuation, false, false, b"def"));
    wire.extend(client_frame(OpCode::Continuation, true, false, b"g"));
    let got = events(&mut server(Some(1024), false), &wire).unwrap();
    assert_eq!(
        got,
        vec![
            WsEvent::Ping(Bytes::from_static(b"p")),
            WsEvent::Message(Frame::Binary(Bytes::from_static(b"abcdefg"))),
        ]
    );
}

#[test]
fn long_lengths_use_the_16_and_64_bit_forms() {
    for len in [125usize, 126, 65_535, 65_536, 300_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let wire = client_frame(OpCode::Binary, true, false, &payload);
        let got = events(&mut server(None, false), &wire).unwrap();
        assert_eq!(
            got,
            vec![WsEvent::Message(Frame::Binary(payload.into()))],
            "{len}"
        );
    }
}

#[test]
fn a_compressed_message_in_several_fragments_inflates_to_the_original() {
    let message: String = (0..20_000).map(|i| format!("{{\"row\":{i}}},")).collect();
    let parts = compressed_parts(message.as_bytes(), 50_000);
    assert!(parts.len() > 1);
    let mut wire = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        wire.extend(client_frame(opcode, i + 1 == parts.len(), i == 0, part));
    }
    let compressed: usize = parts.iter().map(Vec::len).sum();
    assert!(
        compressed * 4 < message.len(),
        "{compressed} of {}",
        message.len()
    );
    let got = events(&mut server(Some(1 << 20), true), &wire).unwrap();
    assert_eq!(got, vec![WsEvent::Message(Frame::Text(message))]);
}

#[test]
fn a_message_whose_parts_change_level_inflates_to_the_original_then_the_next_does_too() {
    let message: String = (0..30_000)
        .map(|i| format!("{{\"row\":{i},\"v\":\"x{}\"}},", i % 97))
        .collect();
    let chunks: Vec<&[u8]> = message.as_bytes().chunks(40_000).collect();
    let mut deflater = MessageDeflater::new(2);
    let mut sizes_by_level = Vec::new();
    let mut wire = Vec::new();
    for round in 0..2 {
        for (i, chunk) in chunks.iter().enumerate() {
            let level = [1, 9, 2, 6, 4][i % 5];
            deflater.set_level(level);
            let part = deflater.part(chunk, i + 1 == chunks.len()).unwrap();
            if round == 0 {
                sizes_by_level.push((level, part.len()));
            }
            let opcode = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            wire.extend(client_frame(opcode, i + 1 == chunks.len(), i == 0, &part));
        }
    }
    let got = events(&mut server(Some(1 << 21), true), &wire).unwrap();
    let whole = WsEvent::Message(Frame::Text(message));
    assert_eq!(got, vec![whole.clone(), whole]);
    // The levels took effect: the first part (level 1) came out larger than the second
    // (level 9), two full chunks of the same kind of rows.
    assert_eq!((sizes_by_level[0].0, sizes_by_level[1].0), (1, 9));
    assert!(
        sizes_by_level[1].1 < sizes_by_level[0].1,
        "{sizes_by_level:?}"
    );
}

#[test]
fn an_empty_compressed_message_inflates_to_nothing() {
    let parts = compressed_parts(b"", 10);
    let wire = client_frame(OpCode::Binary, true, true, &parts[0]);
    let got = events(&mut server(Some(10), true), &wire).unwrap();
    assert_eq!(got, vec![WsEvent::Message(Frame::Binary(Bytes::new()))]);
}

#[test]
fn a_deflate_bomb_stops_at_the_cap() {
    // 64 MiB of zeros compress to about 64 KiB; the cap is 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let parts = compressed_parts(&zeros, zeros.len());
    assert!(parts[0].len() < 128 * 1024);
    let wire = client_frame(OpCode::Binary, true, true, &parts[0]);
    let mut decoder = server(Some(1 << 20), true);
    assert_eq!(
        events(&mut decoder, &wire),
        Err(WsError::TooLarge { limit: 1 << 20 })
    );
    // Poisoned: the same error again, whatever follows.
    assert_eq!(
        events(&mut decoder, &client_frame(OpCode::Text, true, false, b"x")),
        Err(WsError::TooLarge { limit: 1 << 20 })
    );
}

#[test]
fn a_message_exactly_at_the_cap_passes_and_one_byte_more_does_not() {
    let at_cap = vec![b'a'; 1000];
    let parts = compressed_parts(&at_cap, 1000);
    let wire = client_frame(OpCode::Binary, true, true, &parts[0]);
    assert!(events(&mut server(Some(1000), true), &wire).is_ok());
    assert_eq!(
        events(&mut server(Some(999), true), &wire),
        Err(WsError::TooLarge { limit: 999 })
    );
    let plain = client_frame(OpCode::Binary, true, false, &at_cap);
    assert_eq!(
        events(&mut server(Some(999), false), &plain),
        Err(WsError::TooLarge { limit: 999 })
    );
}

#[test]
fn uncompressed_fragments_are_capped_on_their_sum() {
    let mut wire = client_frame(OpCode::Binary, false, false, &[1; 600]);
    wire.extend(client_frame(OpCode::Continuation, true, false, &[1; 600]));
    assert_eq!(
        events(&mut server(Some(1000), false), &wire),
        Err(WsError::TooLarge { limit: 1000 })
    );
}

#[test]
fn frames_that_break_the_rules_are_protocol_errors() {
    let unmasked = encode_frame(OpCode::Text, true, false, b"x", None);
    let rsv2 = {
        let mut f = client_frame(OpCode::Text, true, false, b"x");
        f[0] |= 0x20;
        f
    };
    let bad_opcode = {
        let mut f = client_frame(OpCode::Text, true, false, b"x");
        f[0] = 0x83;
        f
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("unmasked", unmasked, false),
        ("rsv2", rsv2, false),
        ("opcode 3", bad_opcode, false),
        (
            "rsv1 without deflate",
            client_frame(OpCode::Text, true, true, b"x"),
            false,
        ),
        (
            "rsv1 on a ping",
            client_frame(OpCode::Ping, true, true, b""),
            true,
        ),
        (
            "fragmented ping",
            client_frame(OpCode::Ping, false, false, b""),
            false,
        ),
        (
            "long ping",
            client_frame(OpCode::Ping, true, false, &[0; 126]),
            false,
        ),
        (
            "lone continuation",
            client_frame(OpCode::Continuation, true, false, b"x"),
            false,
        ),
        (
            "one-byte close",
            client_frame(OpCode::Close, true, false, &[3]),
            false,
        ),
        (
            "close 1005",
            client_frame(OpCode::Close, true, false, &1005u16.to_be_bytes()),
            false,
        ),
        (
            "close 2000",
            client_frame(OpCode::Close, true, false, &2000u16.to_be_bytes()),
            false,
        ),
        (
            "garbage deflate",
            client_frame(OpCode::Binary, true, true, &[0xff; 8]),
            true,
        ),
    ];
    for (name, wire, deflate) in cases {
        match events(&mut server(Some(1000), deflate), &wire) {
            Err(WsError::Protocol(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut interleaved = client_frame(OpCode::Text, false, false, b"a");
    interleaved.extend(client_frame(OpCode::Text, true, false, b"b"));
    assert!(matches!(
        events(&mut server(None, false), &interleaved),
        Err(WsError::Protocol(_))
    ));
    let masked_from_server = encode_frame(OpCode::Text, true, false, b"x", Some(KEY));
    assert!(matches!(
        events(
            &mut Decoder::new(Role::Client, None, false),
            &masked_from_server
        ),
        Err(WsError::Protocol(_))
    ));
}

#[test]
fn invalid_utf8_is_its_own_error() {
    let text = client_frame(OpCode::Text, true, false, &[0xC3]);
    assert_eq!(
        events(&mut server(None, false), &text),
        Err(WsError::InvalidUtf8)
    );
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.push(0xff);
    let close = client_frame(OpCode::Close, true, false, &close);
    assert_eq!(
        events(&mut server(None, false), &close),
        Err(WsError::InvalidUtf8)
    );
}

#[test]
fn a_close_ends_reading() {
    let mut wire = client_frame(OpCode::Close, true, false, &close_payload(1000, "bye"));
    wire.extend(client_frame(OpCode::Text, true, false, b"ignored"));
    let got = events(&mut server(None, false), &wire).unwrap();
    assert_eq!(got, vec![WsEvent::Close(Some((1000, "bye".into())))]);
}

#[test]
fn close_reasons_are_cut_to_fit_a_control_frame_on_a_character_boundary() {
    let payload = close_payload(1009, &"é".repeat(100));
    assert!(payload.len() <= 125);
    assert!(std::str::from_utf8(&payload[2..]).is_ok());
}

#[test]
fn unmasked_server_frames_decode_in_the_client_role() {
    let parts = compressed_parts(b"reply reply reply", 100);
    let wire = encode_frame(OpCode::Binary, true, true, &parts[0], None);
    let got = events(&mut Decoder::new(Role::Client, None, true), &wire).unwrap();
    assert_eq!(
        got,
        vec![WsEvent::Message(Frame::Binary(Bytes::from_static(
            b"reply reply reply"
        )))]
    );
}

#[test]
fn masking_at_any_offset_matches_masking_the_whole() {
    let data: Vec<u8> = (0..37).collect();
    let mut whole = data.clone();
    mask(&mut whole, KEY, 0);
    for split in 0..data.len() {
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(split);
        mask(a, KEY, 0);
        mask(b, KEY, split);
        assert_eq!(pieces, whole, "split at {split}");
    }
}

#[test]
fn negotiation_accepts_what_browsers_and_python_offer() {
    let chromium = "permessage-deflate; client_max_window_bits";
    let websockets = "permessage-deflate; server_max_window_bits=15; client_max_window_bits=15";
    for offer in [
        chromium,
        websockets,
        "permessage-deflate",
        "PerMessage-Deflate; client_no_context_takeover",
    ] {
        assert_eq!(
            negotiate_deflate([offer]),
            Some(DeflateAgreement),
            "{offer}"
        );
    }
    assert_eq!(
        DeflateAgreement.response_header(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

#[test]
fn negotiation_declines_offers_it_cannot_honour_and_takes_a_later_one() {
    for offer in [
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; mystery",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits",
        "x-webkit-deflate-frame",
    ] {
        assert_eq!(negotiate_deflate([offer]), None, "{offer}");
    }
    let fallback = "permessage-deflate; server_max_window_bits=10, permessage-deflate";
    assert_eq!(negotiate_deflate([fallback]), Some(DeflateAgreement));
    assert_eq!(
        negotiate_deflate(["foo", "permessage-deflate; client_max_window_bits"]),
        Some(DeflateAgreement)
    );
    assert_eq!(negotiate_deflate([]), None);
}
