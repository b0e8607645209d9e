//! `permessage-deflate` (RFC 7692): the handshake's negotiation, bounded inflation of
//! received messages and compression of sent ones.
//!
//! Always without context takeover, in both directions: each message is compressed on its
//! own, so a connection keeps no deflate state between messages. A window kept across
//! messages would cost about 32 KiB per connection to inflate and 300 KiB to deflate, held
//! for as long as a dashboard stays open, and would pay off only for many small messages,
//! which are not worth compressing anyway (queries, acks). RFC 7692 §7.1.1 lets a server
//! require both `*_no_context_takeover` parameters even when the client did not offer them.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::WsError;

/// What the server answers in `Sec-WebSocket-Extensions` when it accepts an offer.
pub const DEFLATE_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail RFC 7692 §7.2.1 removes from each compressed message (the empty stored block of a
/// sync flush), put back before inflating.
const SYNC_FLUSH_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// An accepted `permessage-deflate` offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateAgreement;

impl DeflateAgreement {
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    pub fn response_header(self) -> &'static str {
        DEFLATE_RESPONSE
    }
}

/// The first `permessage-deflate` offer among the request's `Sec-WebSocket-Extensions` values
/// that the server can honour, or `None` (the connection is then not compressed).
///
/// Declined: offers with unknown or repeated parameters or invalid values, and those that
/// ask the server for a window smaller than 2^15 (`server_max_window_bits` < 15): the
/// compressor always uses the full 32 KiB window. Any `client_max_window_bits` is fine: the
/// inflater reads every window size.
pub fn negotiate_deflate<'a>(
    header_values: impl IntoIterator<Item = &'a str>,
) -> Option<DeflateAgreement> {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find(|offer| acceptable(offer))
        .map(|_| DeflateAgreement)
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return false;
        }
        let window_bits = value.map(|v| v.parse::<u8>().ok().filter(|b| (8..=15).contains(b)));
        let valid = match (name.as_str(), window_bits) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("server_max_window_bits", Some(Some(bits))) => bits == 15,
            ("client_max_window_bits", None | Some(Some(_))) => true,
            _ => false,
        };
        if !valid {
            return false;
        }
        seen.push(name);
    }
    true
}

/// Inflates one compressed message as its frames arrive, never past a limit.
pub struct Inflater {
    state: Decompress,
    /// The deflate stream ended (a block with BFINAL): only our own tail may follow.
    ended: bool,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            state: Decompress::new(false),
            ended: false,
        }
    }
}

impl Inflater {
    /// Inflates the next compressed bytes of the message onto `out`; [`WsError::TooLarge`] as
    /// soon as `out` would grow past `limit`, before it does.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: Option<usize>,
    ) -> Result<(), WsError> {
        self.run(input, out, limit, false)
    }

    /// The message's last frame arrived: inflates what the sync-flush tail releases.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: Option<usize>) -> Result<(), WsError> {
        self.run(&SYNC_FLUSH_TAIL, out, limit, true)
    }

    fn run(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: Option<usize>,
        is_tail: bool,
    ) -> Result<(), WsError> {
        // A fixed scratch buffer, so no allocation ever exceeds what the limit allows.
        let mut scratch = [0u8; 16 * 1024];
        loop {
            if self.ended {
                if is_tail || input.is_empty() {
                    return Ok(());
                }
                return Err(WsError::Protocol("data after the end of a deflate stream"));
            }
            // Never more room than one byte past the limit: inflation stops where the message
            // crosses it, so the error is the same however the frames were split (a broken
            // stream further on is not reached when the whole message arrived at once).
            let room = match limit {
                Some(limit) => scratch.len().min(limit + 1 - out.len()),
                None => scratch.len(),
            };
            let (in_before, out_before) = (self.state.total_in(), self.state.total_out());
            let status = self
                .state
                .decompress(input, &mut scratch[..room], FlushDecompress::None)
                .map_err(|_| WsError::Protocol("invalid deflate data"))?;
            let consumed = (self.state.total_in() - in_before) as usize;
            let produced = (self.state.total_out() - out_before) as usize;
            if let Some(limit) = limit {
                if out.len() + produced > limit {
                    return Err(WsError::TooLarge { limit });
                }
            }
            out.extend_from_slice(&scratch[..produced]);
            input = &input[consumed..];
            if status == Status::StreamEnd {
                self.ended = true;
                continue;
            }
            if produced == room {
                continue; // more output may be waiting inside the inflater
            }
            if input.is_empty() {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Err(WsError::Protocol("invalid deflate data"));
            }
        }
    }
}

/// Compression failed inside the deflate library (not expected with valid settings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deflate failed: {0}")]
pub struct DeflateFailed(String);

/// Compresses messages, one at a time, each in one or more parts that can be sent as frames
/// as soon as they are compressed (a large reply's first fragment leaves while the rest is
/// still being compressed).
pub struct MessageDeflater {
    state: Compress,
    level: u32,
}

impl MessageDeflater {
    /// `level`: 0 (stored) to 9 (smallest).
    pub fn new(level: u32) -> Self {
        MessageDeflater {
            state: Compress::new(Compression::new(level.min(9)), false),
            level: level.min(9),
        }
    }

    /// The level it compresses at.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Compresses what follows at `level` (0–9), within a message too: each part ends
    /// flushed, so a fresh compressor at the new level continues the same message (deflate
    /// blocks that do not reach back into the earlier parts are valid; only the 32 KiB
    /// window is lost at that boundary). The pure-Rust backend cannot change level in place.
    pub fn set_level(&mut self, level: u32) {
        let level = level.min(9);
        if level != self.level {
            self.state = Compress::new(Compression::new(level), false);
            self.level = level;
        }
    }

    /// The next part of the current message, compressed and flushed so it can be sent as a
    /// frame now. `last` ends the message: its sync-flush tail is removed (RFC 7692 §7.2.1)
    /// and the deflater is ready for the next message, with no context kept.
    pub fn part(&mut self, mut input: &[u8], last: bool) -> Result<Vec<u8>, DeflateFailed> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve((input.len() / 4).max(4096));
            }
            let before = self.state.total_in();
            self.state
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| DeflateFailed(e.to_string()))?;
            input = &input[(self.state.total_in() - before) as usize..];
            // The flush is complete once the output did not fill the space it had.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if last {
            if out.ends_with(&SYNC_FLUSH_TAIL) {
                out.truncate(out.len() - SYNC_FLUSH_TAIL.len());
            }
            self.state.reset();
        }
        Ok(out)
    }
}
