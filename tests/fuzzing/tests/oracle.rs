//! The independent decoder of server frames (invariant e of the session harness) accepts
//! every message the core encodes.

use bytes::Bytes;
use duckwire_core::{Frame, QueryId, ServerMessage};
use duckwire_fuzzing::oracle::decode_server_frame;
use serde_json::json;

#[test]
fn every_server_message_encodes_to_a_decodable_frame() {
    let id = QueryId::Num("12".into());
    let messages = vec![
        ServerMessage::AuthAck,
        ServerMessage::Error {
            error: "e".into(),
            query_id: Some(id.clone()),
        },
        ServerMessage::Error {
            error: "e".into(),
            query_id: None,
        },
        ServerMessage::Ok {
            query_id: id.clone(),
        },
        ServerMessage::Json {
            query_id: id.clone(),
            data: "[]".into(),
        },
        ServerMessage::CancelAck {
            query_id: id.clone(),
            cancelled: true,
        },
        ServerMessage::Subscribed {
            channel: "c".into(),
        },
        ServerMessage::Unsubscribed {
            channel: "c".into(),
        },
        ServerMessage::Notify {
            channel: "c".into(),
            payload: json!(null),
        },
        ServerMessage::NotifyAck {
            channel: "c".into(),
        },
        ServerMessage::CrdtJoined {
            room_id: "r".into(),
        },
        ServerMessage::CrdtSnapshot {
            room_id: "r".into(),
            snapshot: vec![1, 2, 3],
        },
        ServerMessage::CrdtSnapshotAck {
            room_id: "r".into(),
        },
        ServerMessage::CrdtUpdateAck {
            room_id: "r".into(),
        },
        ServerMessage::UploadAck { query_id: id },
        ServerMessage::CrdtUpdate(Bytes::from_static(b"loro")),
    ];
    for message in messages {
        let frame = message.encode();
        decode_server_frame(&frame).unwrap_or_else(|e| panic!("{message:?}: {e}"));
    }
    let snapshot = ServerMessage::CrdtSnapshot {
        room_id: "r".into(),
        snapshot: vec![1, 2, 3],
    }
    .encode();
    assert_eq!(
        snapshot,
        Frame::Text(r#"{"data":"AQID","roomId":"r","type":"crdt-snapshot"}"#.into())
    );
}
