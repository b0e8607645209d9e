//! Bytes a transport could not frame: an HTTP head or body it cannot read as one request, a
//! WebSocket message over the frame cap. The transport only reports what it saw
//! ([`Malformed`]); what the client is told (the HTTP status and text, the close code) is
//! decided here, so every transport refuses the same way.

use crate::http::HttpResponse;
use crate::ids::{ConnId, Millis};
use crate::limits::Limits;
use crate::server::{close_code, Server};
use crate::{Dialect, ProtocolError};

/// What was wrong with the bytes. After any of these the stream's framing is lost: the
/// connection gets its answer and is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// No complete request head within the transport's head timeout.
    HeadTimedOut,
    /// Not an HTTP/1.x request head (or one too large to read).
    BadHead,
    /// A `POST` without `Content-Length`.
    LengthRequired,
    /// `Transfer-Encoding` (chunked bodies are not read).
    ChunkedBody,
    /// A `Content-Length` that is not a number.
    BadContentLength,
    /// A body declared larger than `max_frame_bytes` (checked with
    /// [`Limits::check_frame`] before it is read).
    BodyTooLarge,
    /// The peer stopped sending before the declared body was complete.
    BodyEndedEarly,
    /// A WebSocket message larger than `max_frame_bytes` (inflated, if compressed): the
    /// WebSocket decoder stopped reading it at the cap.
    FrameTooLarge,
    /// WebSocket frames that break RFC 6455 or RFC 7692 (an unmasked frame, a reserved bit,
    /// a broken deflate stream…): close 1002.
    BrokenWebSocketFrames,
    /// A text message or close reason that is not UTF-8: close 1007.
    InvalidUtf8,
    /// A WebSocket upgrade asking for a protocol version other than 13.
    UnsupportedWebSocketVersion,
    /// A WebSocket upgrade the handshake refuses (a missing key, a wrong method…).
    BadUpgrade,
}

impl Malformed {
    /// The HTTP status and text of the refusal.
    fn http_refusal(self, limits: &Limits) -> (u16, String) {
        match self {
            Malformed::HeadTimedOut => (408, "request head timeout".into()),
            Malformed::BadHead => (400, "bad request".into()),
            Malformed::LengthRequired => (411, "Content-Length required".into()),
            Malformed::ChunkedBody => (
                411,
                "chunked bodies are not supported; send Content-Length".into(),
            ),
            Malformed::BadContentLength => (400, "invalid Content-Length".into()),
            Malformed::BodyEndedEarly => (400, "request body ended early".into()),
            // RFC 6455 §4.2.2: the transport names the version it speaks in a header.
            Malformed::UnsupportedWebSocketVersion => {
                (426, "unsupported Sec-WebSocket-Version (13 needed)".into())
            }
            Malformed::BadUpgrade => (400, "invalid WebSocket upgrade".into()),
            // Only WebSocket connections see these; an HTTP one would have a bad request.
            Malformed::BrokenWebSocketFrames | Malformed::InvalidUtf8 => {
                (400, "bad request".into())
            }
            Malformed::BodyTooLarge | Malformed::FrameTooLarge => {
                (413, frame_too_large(limits).to_string())
            }
        }
    }
}

/// The error of a frame or body over `max_frame_bytes`.
fn frame_too_large(limits: &Limits) -> ProtocolError {
    ProtocolError::CapExceeded {
        cap: "max_frame_bytes",
        limit: limits.max_frame_bytes.unwrap_or(usize::MAX),
    }
}

impl Server {
    pub(crate) fn malformed(&mut self, conn: ConnId, malformed: Malformed, now: Millis) {
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.is_open()) else {
            return;
        };
        if c.dialect() == Dialect::Http {
            let (status, message) = malformed.http_refusal(&self.config.limits);
            let slot = c.reserve_answer_slot();
            self.answer(conn, slot, HttpResponse::error(status, &message), now);
            self.close(conn, close_code::GOING_AWAY, &message, now);
            return;
        }
        let (code, reason) = match malformed {
            Malformed::BrokenWebSocketFrames => (
                close_code::PROTOCOL_ERROR,
                "invalid WebSocket frames".to_string(),
            ),
            Malformed::InvalidUtf8 => (
                close_code::INVALID_PAYLOAD,
                "text message is not valid UTF-8".to_string(),
            ),
            _ => (
                close_code::MESSAGE_TOO_BIG,
                frame_too_large(&self.config.limits).to_string(),
            ),
        };
        self.close(conn, code, &reason, now);
    }
}

impl From<&crate::websocket::WsError> for Malformed {
    fn from(error: &crate::websocket::WsError) -> Self {
        use crate::websocket::WsError;
        match error {
            WsError::TooLarge { .. } => Malformed::FrameTooLarge,
            WsError::Protocol(_) => Malformed::BrokenWebSocketFrames,
            WsError::InvalidUtf8 => Malformed::InvalidUtf8,
        }
    }
}
