//! One frame's header (RFC 6455 §5.2): reading it from bytes, writing it, and masking.

use super::WsError;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Result<OpCode, WsError> {
        Ok(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return Err(WsError::Protocol("unknown opcode")),
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A frame header as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: with `permessage-deflate`, set on the first frame of a compressed message.
    pub compressed: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes the header took.
    pub header_len: usize,
}

impl FrameHeader {
    /// The header at the start of `bytes`; `Ok(None)` while it is incomplete.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Option<FrameHeader>, WsError> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        if first & 0x30 != 0 {
            return Err(WsError::Protocol("reserved bits RSV2/RSV3 set"));
        }
        let opcode = OpCode::from_bits(first & 0x0F)?;
        let masked = second & 0x80 != 0;
        let (payload_len, mut at) = match second & 0x7F {
            126 => match bytes.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match bytes.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                    if len >> 63 != 0 {
                        return Err(WsError::Protocol("payload length with its top bit set"));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let mask = if masked {
            let Some(key) = bytes.get(at..at + 4) else {
                return Ok(None);
            };
            at += 4;
            Some(key.try_into().expect("4 bytes"))
        } else {
            None
        };
        Ok(Some(FrameHeader {
            fin: first & 0x80 != 0,
            compressed: first & 0x40 != 0,
            opcode,
            mask,
            payload_len,
            header_len: at,
        }))
    }
}

/// The header of a frame carrying `payload_len` bytes, at most 14 bytes: write it, then the
/// payload (masked with `mask` when a client sends).
pub fn frame_header(
    opcode: OpCode,
    fin: bool,
    compressed: bool,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut header = Vec::with_capacity(14);
    header.push(u8::from(fin) << 7 | u8::from(compressed) << 6 | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload_len {
        0..=125 => header.push(mask_bit | payload_len as u8),
        126..=0xFFFF => {
            header.push(mask_bit | 126);
            header.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            header.push(mask_bit | 127);
            header.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        header.extend_from_slice(&key);
    }
    header
}

/// A whole frame in one buffer: its header, then `payload`, masked with `mask` when given (a
/// client's frames). The server's writer sends header and payload apart instead, to keep the
/// reply's own buffer.
pub fn encode_frame(
    opcode: OpCode,
    fin: bool,
    compressed: bool,
    payload: &[u8],
    mask_key: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut frame = frame_header(opcode, fin, compressed, payload.len(), mask_key);
    let start = frame.len();
    frame.extend_from_slice(payload);
    if let Some(key) = mask_key {
        mask(&mut frame[start..], key, 0);
    }
    frame
}

/// XORs `data` with `key`, `data` starting `offset` bytes into its frame's payload.
pub fn mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let key = u32::from_ne_bytes(rotate(key, offset % 4));
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let word = u32::from_ne_bytes(chunk.try_into().expect("4 bytes")) ^ key;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let key = key.to_ne_bytes();
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

fn rotate(key: [u8; 4], by: usize) -> [u8; 4] {
    [
        key[by % 4],
        key[(by + 1) % 4],
        key[(by + 2) % 4],
        key[(by + 3) % 4],
    ]
}

/// A close frame's payload: the code, then the reason cut to fit 125 bytes on a character
/// boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}
