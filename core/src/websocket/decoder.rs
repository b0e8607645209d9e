//! Bytes from the socket to WebSocket messages: frames are read as their bytes arrive (a
//! large message is never held twice), fragments joined, compressed messages inflated under
//! the cap, control frames handed out between fragments.

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{FrameHeader, OpCode};
use super::{Inflater, Role, WsError};
use crate::codec::Frame;

/// The most a declared length reserves at once when no cap bounds it.
const MAX_LENGTH_HINT: usize = 16 << 20;

/// What the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole data message.
    Message(Frame),
    /// Answer with a pong carrying the same bytes.
    Ping(Bytes),
    Pong(Bytes),
    /// The peer closes: its code and reason, if it gave one. Nothing after it is read.
    Close(Option<(u16, String)>),
}

/// A data message whose frames are still arriving.
struct Partial {
    text: bool,
    payload: Vec<u8>,
    /// Set when the message is compressed (RSV1 on its first frame).
    inflater: Option<Inflater>,
}

/// The frame whose payload is being read.
struct InFrame {
    header: FrameHeader,
    /// Payload bytes read so far (the masking key's position).
    read: u64,
    /// Its message was opened (a frame's payload may arrive over several reads).
    started: bool,
}

/// The reading half of a WebSocket connection's framing. Feed it the socket's bytes
/// ([`Decoder::feed`]), then take events ([`Decoder::next_event`]) until it has none.
pub struct Decoder {
    role: Role,
    max_message: Option<usize>,
    deflate: bool,
    input: BytesMut,
    frame: Option<InFrame>,
    message: Option<Partial>,
    closed: bool,
    poisoned: Option<WsError>,
}

impl Decoder {
    /// `max_message`: the cap on a message's size (inflated), `None` for none. `deflate`:
    /// whether `permessage-deflate` was negotiated (otherwise RSV1 is a protocol error).
    pub fn new(role: Role, max_message: Option<usize>, deflate: bool) -> Self {
        Decoder {
            role,
            max_message,
            deflate,
            input: BytesMut::new(),
            frame: None,
            message: None,
            closed: false,
            poisoned: None,
        }
    }

    /// Bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.closed && self.poisoned.is_none() {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next complete event, `Ok(None)` when more bytes are needed (or after a close).
    /// After an error every call returns it again.
    pub fn next_event(&mut self) -> Result<Option<WsEvent>, WsError> {
        if let Some(error) = &self.poisoned {
            return Err(error.clone());
        }
        let result = self.step();
        if let Err(error) = &result {
            self.poisoned = Some(error.clone());
            self.input = BytesMut::new();
            self.message = None;
        }
        result
    }

    fn step(&mut self) -> Result<Option<WsEvent>, WsError> {
        while !self.closed {
            let frame = match self.frame.take() {
                Some(frame) => frame,
                None => match FrameHeader::parse(&self.input)? {
                    Some(header) => {
                        self.check(&header)?;
                        self.input.advance(header.header_len);
                        InFrame {
                            header,
                            read: 0,
                            started: false,
                        }
                    }
                    None => return Ok(None),
                },
            };
            if frame.header.opcode.is_control() {
                let len = frame.header.payload_len as usize; // ≤ 125, checked
                if self.input.len() < len {
                    self.frame = Some(frame);
                    return Ok(None);
                }
                let mut payload = self.input.split_to(len);
                if let Some(key) = frame.header.mask {
                    super::mask(&mut payload, key, 0);
                }
                return self
                    .control(frame.header.opcode, payload.freeze())
                    .map(Some);
            }
            if let Some(event) = self.data(frame)? {
                return Ok(Some(event));
            }
            if self.frame.is_some() {
                return Ok(None); // the frame's payload is still arriving
            }
        }
        Ok(None)
    }

    /// The rules a header must follow before any of its payload is read.
    fn check(&self, header: &FrameHeader) -> Result<(), WsError> {
        match (self.role, header.mask) {
            (Role::Server, None) => return Err(WsError::Protocol("unmasked client frame")),
            (Role::Client, Some(_)) => return Err(WsError::Protocol("masked server frame")),
            _ => {}
        }
        if header.opcode.is_control() {
            if !header.fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if header.payload_len > 125 {
                return Err(WsError::Protocol("control frame over 125 bytes"));
            }
        }
        if header.compressed {
            if !self.deflate {
                return Err(WsError::Protocol("RSV1 set without permessage-deflate"));
            }
            if header.opcode != OpCode::Text && header.opcode != OpCode::Binary {
                return Err(WsError::Protocol(
                    "RSV1 set on a control or continuation frame",
                ));
            }
        }
        match (header.opcode, self.message.is_some()) {
            (OpCode::Continuation, false) => {
                return Err(WsError::Protocol("continuation frame without a message"))
            }
            (OpCode::Text | OpCode::Binary, true) => {
                return Err(WsError::Protocol("new message before the last one ended"))
            }
            _ => {}
        }
        if let Some(limit) = self.max_message {
            // Compressed or not, no frame carries more than the cap on the wire; an
            // uncompressed message's frames add up to the message.
            let so_far = match &self.message {
                Some(partial) if partial.inflater.is_none() => partial.payload.len() as u64,
                _ => 0,
            };
            if header.payload_len > limit as u64
                || (!header.compressed && so_far + header.payload_len > limit as u64)
            {
                return Err(WsError::TooLarge { limit });
            }
        }
        Ok(())
    }

    /// Reads what has arrived of a data frame's payload; the message once its last frame is
    /// complete.
    fn data(&mut self, mut frame: InFrame) -> Result<Option<WsEvent>, WsError> {
        if !frame.started && frame.header.opcode != OpCode::Continuation {
            self.message = Some(Partial {
                text: frame.header.opcode == OpCode::Text,
                payload: Vec::new(),
                inflater: frame.header.compressed.then(Inflater::default),
            });
        }
        frame.started = true;
        let partial = self.message.as_mut().expect("checked: a message is open");
        let remaining = frame.header.payload_len - frame.read;
        let take = remaining.min(self.input.len() as u64) as usize;
        let mut chunk = self.input.split_to(take);
        if let Some(key) = frame.header.mask {
            super::mask(&mut chunk, key, (frame.read % 4) as usize);
        }
        frame.read += take as u64;
        match &mut partial.inflater {
            Some(inflater) => inflater.inflate(&chunk, &mut partial.payload, self.max_message)?,
            None => {
                if partial.payload.is_empty() && frame.header.fin {
                    // One allocation for a single-frame message; its length was checked
                    // against the cap, but bytes not yet sent reserve at most a bounded hint.
                    let hint = frame.header.payload_len.min(MAX_LENGTH_HINT as u64);
                    partial.payload.reserve_exact(hint as usize);
                }
                partial.payload.extend_from_slice(&chunk);
            }
        }
        if frame.read < frame.header.payload_len {
            self.frame = Some(frame);
            return Ok(None);
        }
        if !frame.header.fin {
            return Ok(None);
        }
        let mut partial = self.message.take().expect("checked: a message is open");
        if let Some(inflater) = &mut partial.inflater {
            inflater.finish(&mut partial.payload, self.max_message)?;
        }
        let frame = if partial.text {
            Frame::Text(String::from_utf8(partial.payload).map_err(|_| WsError::InvalidUtf8)?)
        } else {
            Frame::Binary(Bytes::from(partial.payload))
        };
        Ok(Some(WsEvent::Message(frame)))
    }

    fn control(&mut self, opcode: OpCode, payload: Bytes) -> Result<WsEvent, WsError> {
        Ok(match opcode {
            OpCode::Ping => WsEvent::Ping(payload),
            OpCode::Pong => WsEvent::Pong(payload),
            _ => {
                self.closed = true;
                self.input = BytesMut::new();
                WsEvent::Close(close_reason(&payload)?)
            }
        })
    }
}

/// A close frame's code and reason (RFC 6455 §5.5.1, §7.4).
fn close_reason(payload: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame with a one-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !allowed {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}
