//! Frames and messages: decoding client frames (PROTOCOL §2–§3) and encoding server replies.

mod client;
mod json_reply;
mod server;

pub use client::{decode_client_frame, ClientMessage, DecodeError, QueryKind};
pub use json_reply::{escape_string_content, JsonReply, JsonReplyHeader, JsonReplyWriter};
pub use server::{encode_arrow_frame_header, ServerMessage};

use bytes::Bytes;

/// One WebSocket message, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
}

impl Frame {
    /// Payload length in bytes (what outbound accounting counts).
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
