//! Every client message kind and every decode error (PROTOCOL §2, §3, §7).

use bytes::Bytes;
use serde_json::json;

use crate::codec::{decode_client_frame, ClientMessage, Frame, QueryKind};
use crate::{Limits, ProtocolError, QueryId};

fn text(value: serde_json::Value) -> Result<ClientMessage, crate::DecodeError> {
    decode_client_frame(&Frame::Text(value.to_string()), &Limits::default())
}

fn error_of(value: serde_json::Value) -> ProtocolError {
    text(value).unwrap_err().error
}

fn framed(header: &str, payload: &[u8]) -> Bytes {
    let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(payload);
    Bytes::from(bytes)
}

#[test]
fn decodes_every_text_message_kind() {
    assert_eq!(
        text(json!({"type":"auth","token":"t"})).unwrap(),
        ClientMessage::Auth { token: "t".into() }
    );
    for (kind, expected) in [
        ("arrow", QueryKind::Arrow),
        ("json", QueryKind::Json),
        ("exec", QueryKind::Exec),
    ] {
        assert_eq!(
            text(json!({"type":kind,"sql":"select 1","queryId":"q","persist":true})).unwrap(),
            ClientMessage::Query {
                kind: expected,
                sql: "select 1".into(),
                query_id: Some(QueryId::Str("q".into())),
                persist: true
            }
        );
    }
    assert_eq!(
        text(json!({"type":"cancel","queryId":7})).unwrap(),
        ClientMessage::Cancel {
            query_id: QueryId::Num("7".into())
        }
    );
    assert_eq!(
        text(json!({"type":"subscribe","channel":"c"})).unwrap(),
        ClientMessage::Subscribe {
            channel: "c".into()
        }
    );
    assert_eq!(
        text(json!({"type":"unsubscribe","channel":"c"})).unwrap(),
        ClientMessage::Unsubscribe {
            channel: "c".into()
        }
    );
    assert_eq!(
        text(json!({"type":"notify","channel":"c","payload":{"a":[1]}})).unwrap(),
        ClientMessage::Notify {
            channel: "c".into(),
            payload: json!({"a":[1]})
        }
    );
    assert_eq!(
        text(json!({"type":"crdt-join","roomId":"r","clientId":"x"})).unwrap(),
        ClientMessage::CrdtJoin {
            room_id: "r".into()
        }
    );
    assert_eq!(
        text(json!({"type":"crdt-snapshot","roomId":"r","data":"AQI="})).unwrap(),
        ClientMessage::CrdtSnapshot {
            room_id: "r".into(),
            data: vec![1, 2]
        }
    );
}

#[test]
fn unknown_fields_are_ignored_and_persist_defaults_false() {
    let message = text(json!({"type":"json","sql":"s","extra":{"x":1}})).unwrap();
    assert_eq!(
        message,
        ClientMessage::Query {
            kind: QueryKind::Json,
            sql: "s".into(),
            query_id: None,
            persist: false
        }
    );
}

#[test]
fn text_errors_name_what_was_wrong() {
    let invalid = decode_client_frame(&Frame::Text("{nope".into()), &Limits::default());
    assert!(matches!(
        invalid.unwrap_err().error,
        ProtocolError::InvalidJson(_)
    ));
    assert_eq!(error_of(json!([1, 2])), ProtocolError::NotAnObject);
    assert_eq!(error_of(json!({"sql":"x"})), ProtocolError::MissingType);
    assert_eq!(error_of(json!({"type":5})), ProtocolError::MissingType);
    assert_eq!(
        error_of(json!({"type":"bogus"})),
        ProtocolError::UnknownType("bogus".into())
    );
    assert_eq!(
        error_of(json!({"type":"auth"})),
        ProtocolError::MissingField("token")
    );
    assert_eq!(
        error_of(json!({"type":"json","sql":3})),
        ProtocolError::WrongFieldType {
            field: "sql",
            expected: "a string"
        }
    );
    assert_eq!(
        error_of(json!({"type":"json","sql":"s","persist":"yes"})),
        ProtocolError::WrongFieldType {
            field: "persist",
            expected: "a boolean"
        }
    );
    assert_eq!(
        error_of(json!({"type":"json","sql":"s","queryId":[1]})),
        ProtocolError::WrongFieldType {
            field: "queryId",
            expected: "a string or a number"
        }
    );
    assert_eq!(
        error_of(json!({"type":"cancel"})),
        ProtocolError::MissingField("queryId")
    );
    assert_eq!(
        error_of(json!({"type":"subscribe","channel":""})),
        ProtocolError::EmptyField("channel")
    );
    assert_eq!(
        error_of(json!({"type":"crdt-join","roomId":""})),
        ProtocolError::EmptyField("roomId")
    );
    assert_eq!(
        error_of(json!({"type":"crdt-snapshot","roomId":"r","data":"***"})),
        ProtocolError::InvalidBase64
    );
}

#[test]
fn errors_keep_the_query_id_they_carried() {
    let error = text(json!({"type":"arrow","queryId":"q9"})).unwrap_err();
    assert_eq!(error.error, ProtocolError::MissingField("sql"));
    assert_eq!(error.query_id, Some(QueryId::Str("q9".into())));
}

#[test]
fn caps_are_enforced_and_named_and_none_disables_them() {
    let long = "x".repeat(257);
    for (message, cap) in [
        (
            json!({"type":"json","sql":"s","queryId":long}),
            "max_query_id_len",
        ),
        (
            json!({"type":"subscribe","channel":long}),
            "max_channel_len",
        ),
        (json!({"type":"crdt-join","roomId":long}), "max_room_id_len"),
    ] {
        let error = error_of(message.clone());
        assert_eq!(error, ProtocolError::CapExceeded { cap, limit: 256 });
        assert_eq!(error.to_string(), format!("{cap} exceeded (limit 256)"));
        let unlimited =
            decode_client_frame(&Frame::Text(message.to_string()), &Limits::unlimited());
        assert!(unlimited.is_ok(), "{cap} = None must disable the cap");
    }
}

#[test]
fn framed_upload_is_decoded_without_copying_the_payload() {
    let frame = framed(
        r#"{"type":"uploadArrow","queryId":"u1","tableName":"main.t"}"#,
        b"IPC",
    );
    let decoded = decode_client_frame(&Frame::Binary(frame.clone()), &Limits::default()).unwrap();
    let ClientMessage::UploadArrow {
        query_id,
        table_name,
        payload,
    } = decoded
    else {
        panic!("expected upload, got {decoded:?}");
    };
    assert_eq!(query_id, Some(QueryId::Str("u1".into())));
    assert_eq!(table_name, "main.t");
    assert_eq!(&payload[..], b"IPC");
    // Same allocation: the payload is a slice of the frame.
    assert_eq!(payload.as_ptr(), frame[frame.len() - 3..].as_ptr());
}

#[test]
fn binary_frames_that_are_not_framed_are_raw() {
    let limits = Limits::default();
    let raw = |bytes: &[u8]| {
        decode_client_frame(&Frame::Binary(Bytes::copy_from_slice(bytes)), &limits).unwrap()
    };
    // Loro's magic makes N huge; too short; N = 0; header not JSON; JSON without type.
    assert!(matches!(raw(b"loro\x00\x01"), ClientMessage::CrdtUpdate(_)));
    assert!(matches!(raw(b"\x00\x01"), ClientMessage::CrdtUpdate(_)));
    assert!(matches!(
        raw(b"\x00\x00\x00\x00{}"),
        ClientMessage::CrdtUpdate(_)
    ));
    assert!(matches!(
        raw(&framed("{nope", b"")),
        ClientMessage::CrdtUpdate(_)
    ));
    assert!(matches!(
        raw(&framed("{\"a\":1}", b"")),
        ClientMessage::CrdtUpdate(_)
    ));
    assert!(matches!(
        raw(&framed("[1]", b"")),
        ClientMessage::CrdtUpdate(_)
    ));
}

#[test]
fn binary_header_errors() {
    let limits = Limits {
        max_header_bytes: Some(16),
        ..Limits::default()
    };
    let decode = |bytes: Bytes, limits: &Limits| {
        decode_client_frame(&Frame::Binary(bytes), limits)
            .unwrap_err()
            .error
    };
    let big = framed(r#"{"type":"uploadArrow","tableName":"t"}"#, b"");
    assert_eq!(
        decode(big, &limits),
        ProtocolError::CapExceeded {
            cap: "max_header_bytes",
            limit: 16
        }
    );
    let mut not_utf8 = 3u32.to_be_bytes().to_vec();
    not_utf8.extend_from_slice(&[b'{', 0xff, b'}']);
    assert_eq!(
        decode(Bytes::from(not_utf8), &Limits::default()),
        ProtocolError::HeaderNotUtf8
    );
    assert_eq!(
        decode(framed(r#"{"type":"other"}"#, b""), &Limits::default()),
        ProtocolError::UnknownBinaryType("other".into())
    );
    for bad in ["1t", "t;drop", "a.b.c.d", "", "t-x", "\"t\""] {
        let header = json!({"type":"uploadArrow","tableName":bad}).to_string();
        let error = decode(framed(&header, b""), &Limits::default());
        assert_eq!(error, ProtocolError::InvalidTableName(bad.into()), "{bad}");
    }
}

#[test]
fn arrow_header_keeps_the_query_id_json_type() {
    let header = crate::encode_arrow_frame_header(&QueryId::Num("5".into()));
    let n = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    assert_eq!(n, header.len() - 4);
    let value: serde_json::Value = serde_json::from_slice(&header[4..]).unwrap();
    assert_eq!(value, json!({"type":"arrow","queryId":5}));
}
