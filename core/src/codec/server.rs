//! Server → client encoding.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::json_reply::{JsonReplyHeader, JsonReplyWriter};
use super::Frame;
use crate::ids::QueryId;

/// A server reply that the core encodes itself (Arrow result frames are assembled by the
/// executor around [`encode_arrow_frame_header`], so the IPC bytes are never copied here).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    AuthAck,
    Error {
        error: String,
        query_id: Option<QueryId>,
    },
    Ok {
        query_id: QueryId,
    },
    Json {
        query_id: QueryId,
        /// The JSON array of rows, already serialized; sent as a string field.
        data: String,
    },
    CancelAck {
        query_id: QueryId,
        cancelled: bool,
    },
    Subscribed {
        channel: String,
    },
    Unsubscribed {
        channel: String,
    },
    Notify {
        channel: String,
        payload: Value,
    },
    NotifyAck {
        channel: String,
    },
    CrdtJoined {
        room_id: String,
    },
    /// A full room snapshot (base64-encoded on the wire).
    CrdtSnapshot {
        room_id: String,
        snapshot: Vec<u8>,
    },
    CrdtSnapshotAck {
        room_id: String,
    },
    CrdtUpdateAck {
        room_id: String,
    },
    UploadAck {
        query_id: QueryId,
    },
    /// Raw Loro update bytes relayed to other room members.
    CrdtUpdate(Bytes),
}

impl ServerMessage {
    pub fn encode(&self) -> Frame {
        let value = match self {
            ServerMessage::CrdtUpdate(bytes) => return Frame::Binary(bytes.clone()),
            ServerMessage::AuthAck => json!({"type": "authAck"}),
            ServerMessage::Error { error, query_id } => match query_id {
                Some(id) => json!({"type": "error", "queryId": id.to_json(), "error": error}),
                None => json!({"type": "error", "error": error}),
            },
            ServerMessage::Ok { query_id } => json!({"type": "ok", "queryId": query_id.to_json()}),
            // Results can be large: escape the rows text once, straight into a buffer sized
            // for it, instead of copying it into a JSON value first.
            ServerMessage::Json { query_id, data } => {
                let mut reply = JsonReplyWriter::new(&JsonReplyHeader::new(query_id), data.len());
                reply.push_rows(data);
                return Frame::Text(reply.finish().into_text());
            }
            ServerMessage::CancelAck {
                query_id,
                cancelled,
            } => {
                json!({"type": "cancelAck", "queryId": query_id.to_json(), "cancelled": cancelled})
            }
            ServerMessage::Subscribed { channel } => {
                json!({"type": "subscribed", "channel": channel})
            }
            ServerMessage::Unsubscribed { channel } => {
                json!({"type": "unsubscribed", "channel": channel})
            }
            ServerMessage::Notify { channel, payload } => {
                json!({"type": "notify", "channel": channel, "payload": payload})
            }
            ServerMessage::NotifyAck { channel } => {
                json!({"type": "notifyAck", "channel": channel})
            }
            ServerMessage::CrdtJoined { room_id } => {
                json!({"type": "crdt-joined", "roomId": room_id})
            }
            ServerMessage::CrdtSnapshot { room_id, snapshot } => {
                use base64::Engine;
                let data = base64::engine::general_purpose::STANDARD.encode(snapshot);
                json!({"type": "crdt-snapshot", "roomId": room_id, "data": data})
            }
            ServerMessage::CrdtSnapshotAck { room_id } => {
                json!({"type": "crdt-snapshot-ack", "roomId": room_id})
            }
            ServerMessage::CrdtUpdateAck { room_id } => {
                json!({"type": "crdt-update-ack", "roomId": room_id})
            }
            ServerMessage::UploadAck { query_id } => {
                json!({"type": "uploadAck", "queryId": query_id.to_json()})
            }
        };
        Frame::Text(value.to_string())
    }
}

/// `[u32 BE N][N bytes of {"type":"arrow","queryId":…}]` — the prefix of an Arrow result
/// frame (PROTOCOL §2). The executor appends the IPC stream to the same buffer.
pub fn encode_arrow_frame_header(query_id: &QueryId) -> Bytes {
    let header = json!({"type": "arrow", "queryId": query_id.to_json()}).to_string();
    let mut buf = BytesMut::with_capacity(4 + header.len());
    buf.put_u32(header.len() as u32);
    buf.put_slice(header.as_bytes());
    buf.freeze()
}
