//! Client → server decoding with strict validation. Unknown fields are ignored; every
//! error says what was wrong and keeps the request's `queryId` when it had one.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::Frame;
use crate::ids::QueryId;
use crate::limits::{check_cap, Limits};
use crate::ProtocolError;

/// Which result format a query asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueryKind {
    Arrow,
    Json,
    Exec,
}

impl QueryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryKind::Arrow => "arrow",
            QueryKind::Json => "json",
            QueryKind::Exec => "exec",
        }
    }
}

/// A decoded client message (PROTOCOL §3).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Auth {
        token: String,
    },
    Query {
        kind: QueryKind,
        sql: String,
        query_id: Option<QueryId>,
        persist: bool,
    },
    Cancel {
        query_id: QueryId,
    },
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
    },
    Notify {
        channel: String,
        payload: Value,
    },
    CrdtJoin {
        room_id: String,
    },
    CrdtSnapshot {
        room_id: String,
        data: Vec<u8>,
    },
    /// Framed binary `uploadArrow`: `payload` is the Arrow IPC stream, a zero-copy slice
    /// of the incoming frame.
    UploadArrow {
        query_id: Option<QueryId>,
        table_name: String,
        payload: Bytes,
    },
    /// Raw binary frame: a Loro update for the joined room.
    CrdtUpdate(Bytes),
}

impl ClientMessage {
    /// The message's `type`, as clients write it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::Auth { .. } => "auth",
            ClientMessage::Query { kind, .. } => kind.as_str(),
            ClientMessage::Cancel { .. } => "cancel",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::Notify { .. } => "notify",
            ClientMessage::CrdtJoin { .. } => "crdt-join",
            ClientMessage::CrdtSnapshot { .. } => "crdt-snapshot",
            ClientMessage::UploadArrow { .. } => "uploadArrow",
            ClientMessage::CrdtUpdate(_) => "crdt-update",
        }
    }

    /// Whether the message changes something others see by its type alone (whatever SQL it
    /// carries): `exec`, uploads, notifies and CRDT changes. A read token may send none.
    pub fn writes_by_type(&self) -> bool {
        matches!(
            self,
            ClientMessage::Query {
                kind: QueryKind::Exec,
                ..
            } | ClientMessage::UploadArrow { .. }
                | ClientMessage::Notify { .. }
                | ClientMessage::CrdtSnapshot { .. }
                | ClientMessage::CrdtUpdate(_)
        )
    }

    /// The `queryId` the request carried, if any.
    pub fn query_id(&self) -> Option<&QueryId> {
        match self {
            ClientMessage::Query { query_id, .. } | ClientMessage::UploadArrow { query_id, .. } => {
                query_id.as_ref()
            }
            ClientMessage::Cancel { query_id } => Some(query_id),
            _ => None,
        }
    }
}

/// A frame that could not be decoded, with the `queryId` it carried (if it got that far).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub error: ProtocolError,
    pub query_id: Option<QueryId>,
}

impl From<ProtocolError> for DecodeError {
    fn from(error: ProtocolError) -> Self {
        DecodeError {
            error,
            query_id: None,
        }
    }
}

/// Decodes one client frame. The `max_frame_bytes` cap is the caller's business (it closes
/// the connection rather than answering an error); every other cap is checked here.
pub fn decode_client_frame(frame: &Frame, limits: &Limits) -> Result<ClientMessage, DecodeError> {
    match frame {
        Frame::Text(text) => decode_text(text, limits),
        Frame::Binary(bytes) => decode_binary(bytes, limits),
    }
}

fn decode_text(text: &str, limits: &Limits) -> Result<ClientMessage, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(ProtocolError::NotAnObject.into());
    };
    let Some(Value::String(kind)) = object.get("type") else {
        return Err(ProtocolError::MissingType.into());
    };
    // Parse the id first so every later error can carry it.
    let query_id = optional_query_id(&object, limits)?;
    let with_id = |error: ProtocolError| DecodeError {
        error,
        query_id: query_id.clone(),
    };
    let message = match kind.as_str() {
        "auth" => ClientMessage::Auth {
            token: required_string(&object, "token")?,
        },
        "arrow" | "json" | "exec" => {
            let kind = match kind.as_str() {
                "arrow" => QueryKind::Arrow,
                "json" => QueryKind::Json,
                _ => QueryKind::Exec,
            };
            ClientMessage::Query {
                kind,
                sql: required_string(&object, "sql").map_err(with_id)?,
                persist: optional_bool(&object, "persist").map_err(with_id)?,
                query_id: query_id.clone(),
            }
        }
        "cancel" => ClientMessage::Cancel {
            query_id: query_id.ok_or(ProtocolError::MissingField("queryId"))?,
        },
        "subscribe" => ClientMessage::Subscribe {
            channel: channel_name(&object, limits)?,
        },
        "unsubscribe" => ClientMessage::Unsubscribe {
            channel: channel_name(&object, limits)?,
        },
        "notify" => ClientMessage::Notify {
            channel: channel_name(&object, limits)?,
            payload: object.get("payload").cloned().unwrap_or(Value::Null),
        },
        "crdt-join" => ClientMessage::CrdtJoin {
            room_id: room_id(&object, limits)?,
        },
        "crdt-snapshot" => {
            let room_id = room_id(&object, limits)?;
            let encoded = required_string(&object, "data")?;
            let data = base64_decode(&encoded).map_err(|_| ProtocolError::InvalidBase64)?;
            ClientMessage::CrdtSnapshot { room_id, data }
        }
        other => {
            return Err(DecodeError {
                error: ProtocolError::UnknownType(truncate_for_error(other)),
                query_id,
            })
        }
    };
    Ok(message)
}

fn decode_binary(bytes: &Bytes, limits: &Limits) -> Result<ClientMessage, DecodeError> {
    let Some(header_len) = framed_header_len(bytes) else {
        return Ok(ClientMessage::CrdtUpdate(bytes.clone()));
    };
    let header_bytes = &bytes[4..4 + header_len];
    // A framed header is a JSON object, so it starts with `{` (after optional whitespace).
    // Anything else is a raw CRDT update whose first bytes happen to look like a length.
    let looks_like_json = header_bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !looks_like_json {
        return Ok(ClientMessage::CrdtUpdate(bytes.clone()));
    }
    check_cap("max_header_bytes", limits.max_header_bytes, header_len)?;
    let Ok(header_text) = std::str::from_utf8(header_bytes) else {
        return Err(ProtocolError::HeaderNotUtf8.into());
    };
    let header = match serde_json::from_str::<Value>(header_text) {
        Ok(Value::Object(object)) => object,
        // PROTOCOL §2: not a JSON object with a string `type` → raw.
        _ => return Ok(ClientMessage::CrdtUpdate(bytes.clone())),
    };
    let Some(Value::String(kind)) = header.get("type") else {
        return Ok(ClientMessage::CrdtUpdate(bytes.clone()));
    };
    let query_id = optional_query_id(&header, limits)?;
    match kind.as_str() {
        "uploadArrow" => {
            let table_name = required_string(&header, "tableName")
                .and_then(|name| validate_table_name(&name).map(|()| name))
                .map_err(|error| DecodeError {
                    error,
                    query_id: query_id.clone(),
                })?;
            Ok(ClientMessage::UploadArrow {
                query_id,
                table_name,
                payload: bytes.slice(4 + header_len..),
            })
        }
        other => Err(DecodeError {
            error: ProtocolError::UnknownBinaryType(truncate_for_error(other)),
            query_id,
        }),
    }
}

/// `Some(N)` when the first 4 bytes give `0 < N ≤ len-4` (PROTOCOL §2).
fn framed_header_len(bytes: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let n = u32::from_be_bytes(prefix) as usize;
    (n > 0 && n <= bytes.len() - 4).then_some(n)
}

/// Table names for `uploadArrow`: one to three dot-separated parts (catalog.schema.table),
/// each an unquoted SQL identifier. The executor still quotes every part.
pub(crate) fn validate_table_name(name: &str) -> Result<(), ProtocolError> {
    let invalid = || ProtocolError::InvalidTableName(truncate_for_error(name));
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 3 || name.len() > 255 {
        return Err(invalid());
    }
    for part in parts {
        let mut chars = part.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid());
        }
    }
    Ok(())
}

fn required_string(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<String, ProtocolError> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(ProtocolError::MissingField(field)),
        Some(_) => Err(ProtocolError::WrongFieldType {
            field,
            expected: "a string",
        }),
    }
}

fn optional_bool(object: &Map<String, Value>, field: &'static str) -> Result<bool, ProtocolError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ProtocolError::WrongFieldType {
            field,
            expected: "a boolean",
        }),
    }
}

fn optional_query_id(
    object: &Map<String, Value>,
    limits: &Limits,
) -> Result<Option<QueryId>, ProtocolError> {
    let id = match object.get("queryId") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => QueryId::Str(s.clone()),
        Some(Value::Number(n)) => QueryId::Num(n.to_string()),
        Some(_) => {
            return Err(ProtocolError::WrongFieldType {
                field: "queryId",
                expected: "a string or a number",
            })
        }
    };
    check_cap("max_query_id_len", limits.max_query_id_len, id.len())?;
    Ok(Some(id))
}

fn channel_name(object: &Map<String, Value>, limits: &Limits) -> Result<String, ProtocolError> {
    let channel = required_string(object, "channel")?;
    if channel.is_empty() {
        return Err(ProtocolError::EmptyField("channel"));
    }
    check_cap("max_channel_len", limits.max_channel_len, channel.len())?;
    Ok(channel)
}

fn room_id(object: &Map<String, Value>, limits: &Limits) -> Result<String, ProtocolError> {
    let room = required_string(object, "roomId")?;
    if room.is_empty() {
        return Err(ProtocolError::EmptyField("roomId"));
    }
    check_cap("max_room_id_len", limits.max_room_id_len, room.len())?;
    Ok(room)
}

fn base64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// Echoing an attacker-chosen string into an error is fine, echoing megabytes is not.
fn truncate_for_error(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
