//! Writing WebSocket frames: a header and the payload's own buffers in one vectored write
//! (the buffer a fan-out shares between its members, never copied into a frame buffer), with
//! `permessage-deflate` when negotiated: replies above [`COMPRESS_ABOVE`] compressed, large
//! ones on the blocking pool in parts sent as fragments while the next part is compressed,
//! and streamed results (PROTOCOL §3b) as the fragments of one message. Framing itself is the
//! core's sans-IO codec (`duckwire_core::websocket`). (A child of `ws`.)

use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use duckwire_core::websocket::{frame_header, MessageDeflater, OpCode};
use duckwire_core::Frame;
use futures_util::io::{AsyncWrite, AsyncWriteExt};
use prometheus_client::metrics::counter::Counter;

use crate::compress::{parts_on_blocking_pool, COMPRESS_ABOVE, COMPRESS_PART_BYTES};
use crate::driver::Outbound;
use crate::executor::stream::ResultStream;
use crate::pace::Pacing;
use crate::writer::{PongSlot, StreamMeter};

/// Replies up to this size are compressed on the writer's task; larger ones on the blocking
/// pool, so a large reply never holds up the I/O thread's other connections.
const COMPRESS_INLINE_BYTES: usize = 64 * 1024;

/// Deflaters kept between replies, shared by all connections. Setting one up allocates and
/// zeroes about 300 KiB of tables (170 µs for an 8 KiB reply, against 6 µs with one reset
/// after its last message: `examples/deflate_levels.rs`); a reset one keeps no context, so
/// reuse does not break "no context takeover". At most `keep` are kept idle.
pub struct DeflaterPool {
    idle: std::sync::Mutex<Vec<MessageDeflater>>,
    keep: usize,
}

impl DeflaterPool {
    pub fn new(keep: usize) -> Self {
        DeflaterPool {
            idle: std::sync::Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A deflater set to `level` (the connection's pace, `crate::pace`): an idle one of that
    /// level if there is one (changing the level of another sets up a new compressor).
    fn take(&self, level: u32) -> MessageDeflater {
        let taken = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            match idle.iter().rposition(|deflater| deflater.level() == level) {
                Some(at) => Some(idle.swap_remove(at)),
                None => idle.pop(),
            }
        };
        match taken {
            Some(mut deflater) => {
                deflater.set_level(level);
                deflater
            }
            None => MessageDeflater::new(level),
        }
    }

    /// Only a deflater whose message ended (reset) may come back.
    fn give_back(&self, deflater: MessageDeflater) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.keep {
            idle.push(deflater);
        }
    }
}

/// Counts of what compression did, for `/metrics`.
#[derive(Default, Clone)]
pub(crate) struct DeflateCounts {
    pub(super) before: Counter,
    pub(super) after: Counter,
}

/// What the writer task reaches while a streamed message is open.
pub(crate) struct Between<'a> {
    pub(super) queue: &'a async_channel::Receiver<Outbound>,
    pub(super) held: &'a mut VecDeque<Outbound>,
    pub(super) pongs: &'a PongSlot,
}

/// Writes frames: a header and the payload's own buffers in vectored writes. The bytes of
/// the frame being written live here, not in the future writing them, so a close that
/// overtakes the queue can finish the frame first and the stream's framing stays whole.
pub(crate) struct FrameWriter<W> {
    sink: W,
    /// The unwritten rest of the current frame.
    pending: VecDeque<Bytes>,
    /// `Some` when `permessage-deflate` was negotiated.
    deflaters: Option<Arc<DeflaterPool>>,
    counts: DeflateCounts,
    /// The connection's compression level, following the link (`crate::pace`).
    pacing: Pacing,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(
        sink: W,
        deflaters: Option<Arc<DeflaterPool>>,
        counts: DeflateCounts,
        pacing: Pacing,
    ) -> Self {
        FrameWriter {
            sink,
            pending: VecDeque::new(),
            deflaters,
            counts,
            pacing,
        }
    }

    /// Writes the rest of the current frame, if a write was cut short.
    pub(super) async fn finish_frame(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let slices: Vec<IoSlice<'_>> = self.pending.iter().map(|b| IoSlice::new(b)).collect();
            let mut written = self.sink.write_vectored(&slices).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let front = self.pending.front_mut().expect("written ≤ pending");
                let step = written.min(front.len());
                front.advance(step);
                written -= step;
                if front.is_empty() {
                    self.pending.pop_front();
                }
            }
        }
        Ok(())
    }

    async fn frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        compressed: bool,
        payload: Bytes,
    ) -> io::Result<()> {
        let header = frame_header(opcode, fin, compressed, payload.len(), None);
        self.pending.push_back(Bytes::from(header));
        if !payload.is_empty() {
            self.pending.push_back(payload);
        }
        self.finish_frame().await
    }

    /// One message: as it is, or compressed when deflate was negotiated and it is large
    /// enough to gain from it.
    pub(crate) async fn message(&mut self, frame: Frame) -> io::Result<()> {
        let (opcode, payload) = match frame {
            Frame::Text(text) => (OpCode::Text, Bytes::from(text.into_bytes())),
            Frame::Binary(data) => (OpCode::Binary, data),
        };
        match self.deflaters.clone() {
            Some(deflaters) if payload.len() > COMPRESS_ABOVE => {
                self.compressed(opcode, payload, deflaters).await?
            }
            _ => self.frame(opcode, true, false, payload).await?,
        }
        self.sink.flush().await
    }

    async fn compressed(
        &mut self,
        opcode: OpCode,
        payload: Bytes,
        deflaters: Arc<DeflaterPool>,
    ) -> io::Result<()> {
        self.counts.before.inc_by(payload.len() as u64);
        let pace = self.pacing.pace();
        if payload.len() <= COMPRESS_INLINE_BYTES {
            let mut deflater = deflaters.take(pace.deflate_level());
            let part = deflater.part(&payload, true).map_err(io::Error::other)?;
            deflaters.give_back(deflater);
            self.counts.after.inc_by(part.len() as u64);
            return self.frame(opcode, true, true, part.into()).await;
        }
        let parts = payload.len().div_ceil(COMPRESS_PART_BYTES);
        let next_part = parts_on_blocking_pool(move |send| {
            let mut deflater = deflaters.take(pace.deflate_level());
            for (i, chunk) in payload.chunks(COMPRESS_PART_BYTES).enumerate() {
                deflater.set_level(pace.deflate_level());
                // The writer gave up (its connection closes): stop compressing. The deflater
                // is mid-message then, so it is not given back.
                if !send(deflater.part(chunk, i + 1 == parts)) {
                    return;
                }
            }
            deflaters.give_back(deflater);
        });
        for i in 0..parts {
            let part = self
                .pacing
                .next_part(&next_part, i == 0, |part| part.as_ref().map_or(0, Vec::len))
                .await
                .ok_or_else(|| io::Error::other("the compressing thread stopped"))?
                .map_err(io::Error::other)?;
            let opcode = if i == 0 { opcode } else { OpCode::Continuation };
            self.counts.after.inc_by(part.len() as u64);
            self.frame(opcode, i + 1 == parts, i == 0, part.into())
                .await?;
        }
        Ok(())
    }

    /// One message whose payload comes as a streamed result's pieces, each sent as a
    /// fragment once it arrives (compressed as parts of one deflate message when deflate was
    /// negotiated, on the blocking pool). The peer's pings are answered between fragments.
    /// `Ok(false)`: the stream was cut short (its query failed) and the message stays open:
    /// nothing but a close may follow it.
    pub(crate) async fn streamed(
        &mut self,
        stream: ResultStream,
        mut between: Between<'_>,
        meter: &StreamMeter,
    ) -> io::Result<bool> {
        let mut first = true;
        // A JSON result is a text message, Arrow a binary one; the fragments after the
        // first continue it.
        let opening = if stream.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let whole = match self.deflaters.clone() {
            None => loop {
                let Some(piece) = stream.next().await else {
                    break false;
                };
                let (bytes, last) = piece.into_parts();
                meter.written(bytes.len());
                let opcode = if first { opening } else { OpCode::Continuation };
                self.frame(opcode, last, false, bytes).await?;
                first = false;
                if last {
                    break true;
                }
                self.control_frames_between(&mut between).await?;
            },
            Some(deflaters) => {
                let counts = self.counts.clone();
                let pace = self.pacing.pace();
                let parts = parts_on_blocking_pool(move |send| {
                    let mut deflater = deflaters.take(pace.deflate_level());
                    while let Some(piece) = stream.next_blocking() {
                        let (bytes, last) = piece.into_parts();
                        counts.before.inc_by(bytes.len() as u64);
                        deflater.set_level(pace.deflate_level());
                        let part = deflater.part(&bytes, last).map(|part| (part, bytes.len()));
                        if !send(part.map(|part| (part, last))) {
                            return;
                        }
                        if last {
                            deflaters.give_back(deflater);
                            return;
                        }
                    }
                    // Cut short: the deflater is mid-message, so it is not given back.
                });
                loop {
                    let size = |part: &Result<((Vec<u8>, usize), bool), _>| {
                        part.as_ref().map_or(0, |((part, _), _)| part.len())
                    };
                    let Some(part) = self.pacing.next_part(&parts, first, size).await else {
                        break false;
                    };
                    let ((part, plain), last) = part.map_err(io::Error::other)?;
                    meter.written(plain);
                    self.counts.after.inc_by(part.len() as u64);
                    let opcode = if first { opening } else { OpCode::Continuation };
                    self.frame(opcode, last, first, part.into()).await?;
                    first = false;
                    if last {
                        break true;
                    }
                    self.control_frames_between(&mut between).await?;
                }
            }
        };
        self.sink.flush().await?;
        Ok(whole)
    }

    /// Between two fragments of a streamed message: pings and pongs go out at once (RFC 6455
    /// §5.4 allows control frames there), so neither the peer's keepalive nor the core's
    /// idle check waits for a long result; anything else that was queued waits for the end
    /// of the message, in order.
    async fn control_frames_between(&mut self, between: &mut Between<'_>) -> io::Result<()> {
        while let Ok(outbound) = between.queue.try_recv() {
            match outbound {
                Outbound::Ping => self.control(OpCode::Ping, Bytes::new()).await?,
                Outbound::Pong => self.answer_ping(between.pongs).await?,
                other => between.held.push_back(other),
            }
        }
        Ok(())
    }

    /// A pong for the peer's latest ping, if one is unanswered.
    pub(super) async fn answer_ping(&mut self, pongs: &PongSlot) -> io::Result<()> {
        match pongs.take() {
            Some(payload) => self.control(OpCode::Pong, payload).await,
            None => Ok(()),
        }
    }

    pub(super) async fn control(&mut self, opcode: OpCode, payload: Bytes) -> io::Result<()> {
        self.frame(opcode, true, false, payload).await?;
        self.sink.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::SentCounter;
    use crate::executor::stream::StreamPiece;
    use duckwire_core::websocket::{Decoder, Role, WsEvent};
    use duckwire_core::ConnId;
    use futures_util::io::Cursor;

    fn written(frames: Vec<Frame>, deflate: bool) -> Vec<u8> {
        smol::block_on(async {
            let counts = DeflateCounts::default();
            let deflaters = deflate.then(|| Arc::new(DeflaterPool::new(1)));
            let mut writer = FrameWriter::new(
                Cursor::new(Vec::new()),
                deflaters,
                counts,
                Pacing::default(),
            );
            for frame in frames {
                writer.message(frame).await.unwrap();
            }
            writer.sink.into_inner()
        })
    }

    fn read_back(wire: &[u8], deflate: bool) -> Vec<Frame> {
        let mut decoder = Decoder::new(Role::Client, None, deflate);
        decoder.feed(wire);
        let mut frames = Vec::new();
        while let Some(event) = decoder.next_event().unwrap() {
            match event {
                WsEvent::Message(frame) => frames.push(frame),
                other => panic!("unexpected {other:?}"),
            }
        }
        frames
    }

    fn sample_frames() -> Vec<Frame> {
        let big_json: String = (0..200_000).map(|i| format!("{{\"v\":{i}}},")).collect();
        let big_binary: Vec<u8> = (0..3_000_000u32).map(|i| (i / 7) as u8).collect();
        vec![
            Frame::Text("small".into()),
            Frame::Binary(Bytes::from(vec![7; 5000])),
            Frame::Text(big_json),
            Frame::Binary(Bytes::from(big_binary)),
            Frame::Binary(Bytes::new()),
        ]
    }

    fn streamed(
        pieces: Vec<StreamPiece>,
        deflate: bool,
        queued: Vec<Outbound>,
    ) -> (Vec<u8>, bool, usize) {
        use crate::executor::stream::ResultStream;
        smol::block_on(async {
            let deflaters = deflate.then(|| Arc::new(DeflaterPool::new(1)));
            let mut writer = FrameWriter::new(
                Cursor::new(Vec::new()),
                deflaters,
                DeflateCounts::default(),
                Pacing::default(),
            );
            let (queue_tx, queue) = async_channel::unbounded();
            for outbound in queued {
                queue_tx.try_send(outbound).unwrap();
            }
            let mut held = VecDeque::new();
            let pongs = PongSlot::default();
            let between = Between {
                queue: &queue,
                held: &mut held,
                pongs: &pongs,
            };
            let meter = StreamMeter {
                bytes: Counter::default(),
                sent: SentCounter::new(ConnId(1), &Arc::default()),
            };
            let whole = writer
                .streamed(ResultStream::of(pieces), between, &meter)
                .await
                .unwrap();
            (writer.sink.into_inner(), whole, held.len())
        })
    }

    #[test]
    fn a_streamed_result_is_one_message_with_pings_between_its_fragments() {
        let parts: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 300_000]).collect();
        for deflate in [false, true] {
            let pieces = [
                StreamPiece::More(Bytes::from(parts[0].clone())),
                StreamPiece::More(Bytes::from(parts[1].clone())),
                StreamPiece::Last(Bytes::from(parts[2].clone())),
            ];
            let queued = vec![Outbound::Ping, Outbound::Frame(Frame::Text("after".into()))];
            let (wire, whole, held) = streamed(pieces.into(), deflate, queued);
            assert!(whole);
            assert_eq!(held, 1, "the reply waits for the end of the message");
            let mut decoder = Decoder::new(Role::Client, None, deflate);
            decoder.feed(&wire);
            // The ping (a control frame between fragments) comes out before the message ends.
            assert!(matches!(
                decoder.next_event().unwrap(),
                Some(WsEvent::Ping(_))
            ));
            match decoder.next_event().unwrap() {
                Some(WsEvent::Message(Frame::Binary(bytes))) => {
                    assert_eq!(bytes, parts.concat(), "deflate: {deflate}")
                }
                other => panic!("{other:?}"),
            }
            assert!(decoder.next_event().unwrap().is_none());
        }
    }

    #[test]
    fn a_stream_cut_short_leaves_its_message_open() {
        for deflate in [false, true] {
            let pieces = vec![StreamPiece::More(Bytes::from(vec![1; 1000]))];
            let (wire, whole, _) = streamed(pieces, deflate, Vec::new());
            assert!(!whole);
            let mut decoder = Decoder::new(Role::Client, None, deflate);
            decoder.feed(&wire);
            assert!(decoder.next_event().unwrap().is_none(), "no message ends");
            assert!(!wire.is_empty(), "its first fragment left");
        }
    }

    #[test]
    fn uncompressed_messages_go_out_as_single_frames_that_read_back_whole() {
        let frames = sample_frames();
        let wire = written(frames.clone(), false);
        let payload: usize = frames.iter().map(Frame::len).sum();
        assert!(wire.len() < payload + 14 * frames.len());
        assert_eq!(read_back(&wire, false), frames);
    }

    #[test]
    fn compressed_messages_small_and_large_read_back_whole_and_smaller() {
        let frames = sample_frames();
        let wire = written(frames.clone(), true);
        let payload: usize = frames.iter().map(Frame::len).sum();
        assert!(wire.len() * 4 < payload, "{} of {payload}", wire.len());
        assert_eq!(read_back(&wire, true), frames);
    }
}
