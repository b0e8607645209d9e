//! An independent decoder of server frames (invariant e: everything the server encodes
//! is well formed), written from the spec rather than from the encoder.

use serde_json::Value;

use duckwire_core::Frame;

/// A minimal independent decoder of server frames, used to check that everything the
/// server encodes is well-formed (invariant e).
pub fn decode_server_frame(frame: &Frame) -> Result<Value, String> {
    match frame {
        Frame::Text(text) => {
            let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            let kind = value.get("type").and_then(Value::as_str).ok_or("no type")?;
            let needs: &[&str] = match kind {
                "authAck" => &[],
                "error" => &["error"],
                "ok" | "uploadAck" => &["queryId"],
                "json" => &["queryId", "data"],
                "cancelAck" => &["queryId", "cancelled"],
                "subscribed" | "unsubscribed" | "notifyAck" => &["channel"],
                "notify" => &["channel", "payload"],
                "crdt-joined" | "crdt-snapshot-ack" | "crdt-update-ack" => &["roomId"],
                "crdt-snapshot" => &["roomId", "data"],
                other => return Err(format!("unknown server message {other}")),
            };
            for field in needs {
                if value.get(*field).is_none() {
                    return Err(format!("{kind} lacks {field}"));
                }
            }
            Ok(value)
        }
        Frame::Binary(bytes) => {
            if bytes.len() >= 4 {
                let n = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
                if n > 0 && n <= bytes.len() - 4 {
                    if let Ok(header) = serde_json::from_slice::<Value>(&bytes[4..4 + n]) {
                        if header.get("type") == Some(&Value::from("arrow")) {
                            return Ok(header);
                        }
                    }
                }
            }
            Ok(Value::String("raw".into()))
        }
    }
}
