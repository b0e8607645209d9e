//! WebSocket framing (RFC 6455) and its `permessage-deflate` extension (RFC 7692) as a
//! sans-IO codec: bytes in, messages out ([`Decoder`]); messages in, frame headers and
//! payloads out ([`frame_header`], [`MessageDeflater`]). The transport owns the socket and
//! writes what this module produces with vectored writes, so a reply's bytes are never copied
//! into a frame buffer.
//!
//! Why our own framing rather than the WebSocket library's: the library has no extension hook
//! (it refuses any frame with RSV1 set) and copies every outgoing frame into its write
//! buffer. Framing is small, and owning it here puts it where the rest of the wire format
//! lives: strict, capped, poisoned after an error and fuzzed (`fuzz/fuzz_targets/websocket.rs`).
//!
//! Discipline, as the core's other codecs:
//! - **Caps**: a message (after inflation) over `max_message` bytes is [`WsError::TooLarge`]
//!   as soon as the bytes that push it over arrive; inflation stops there, so a small
//!   compressed frame that would inflate past the cap costs at most the cap.
//!   `None` disables the cap.
//! - **Strict validation**: reserved bits, opcodes, masking by role, control frame rules,
//!   fragmentation order, UTF-8 of text messages and close reasons, close codes.
//! - **Poisoning**: after an error the decoder returns that error forever; the stream's
//!   framing is lost and the connection must close (1002, 1007 or 1009).
//!
//! Documented divergences: a length not in its minimal encoding is accepted (RFC 6455 says a
//! sender must use the minimal one; refusing it protects nothing); `permessage-deflate` is
//! always negotiated without context takeover in both directions (see [`negotiate_deflate`]);
//! a compressed message that is both broken and over the cap may end in either error (1002 or
//! 1009) depending on how its bytes arrive, because the inflater drops the output it had not
//! yet released when it finds the break.

mod decoder;
mod deflate;
mod frame;

pub use decoder::{Decoder, WsEvent};
pub use deflate::{
    negotiate_deflate, DeflateAgreement, Inflater, MessageDeflater, DEFLATE_RESPONSE,
};
pub use frame::{close_payload, encode_frame, frame_header, mask, FrameHeader, OpCode};

/// Which end of the connection this codec is: a server reads masked frames and writes
/// unmasked ones, a client the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Why a stream of WebSocket bytes cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A message (inflated) or a frame over the cap: close 1009.
    #[error("message over max_frame_bytes ({limit} bytes)")]
    TooLarge { limit: usize },
    /// The frames break RFC 6455 or RFC 7692: close 1002.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or a close reason that is not UTF-8: close 1007.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
}

#[cfg(test)]
mod tests;
