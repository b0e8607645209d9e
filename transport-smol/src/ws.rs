//! One WebSocket connection: a reader that feeds messages to the driver and a writer that
//! drains the connection's queue to the socket, reporting written bytes for the core's
//! outbound accounting (PROTOCOL §7).
//!
//! Framing is the core's sans-IO codec (`duckwire_core::websocket`); this file only moves
//! bytes. A reply goes out as a frame header followed by the reply's own buffer in one
//! vectored write (the buffer a fan-out shares between its members, never copied into a frame
//! buffer). With `permessage-deflate` negotiated, replies above [`COMPRESS_ABOVE`] are
//! compressed; large ones on the blocking pool, in parts sent as fragments while the next
//! part is being compressed.

use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use duckwire_core::websocket::{
    close_payload, frame_header, Decoder, MessageDeflater, OpCode, Role, WsEvent,
};
use duckwire_core::{ConnId, ConnectionInfo, Frame, Limits, Malformed};
use futures_util::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use smol::net::TcpStream;

use prometheus_client::metrics::counter::Counter;

use crate::compress::{parts_on_blocking_pool, COMPRESS_ABOVE, COMPRESS_PART_BYTES};
use crate::driver::{ConnectionWriter, DriverInput, Outbound, ReadGate, SentCounter, SentReports};
use crate::executor::stream::ResultStream;
use crate::metrics::Metrics;
use crate::tls::Stream;
use crate::writer::{PongSlot, StreamMeter};

/// The deflate level of WebSocket replies. Level 2 compresses the flights table's JSON 7.1:1
/// at 288 MB/s per core, against 5.7:1 at 441 MB/s for level 1 and 7.6:1 at 152 MB/s for
/// level 3 (Arrow results: 5.3:1 at every level); compression and sending overlap, so on any
/// link under a gigabit the bytes saved decide, and level 2 delivers a MB of JSON 20 % sooner
/// than level 1 for 1.5× its CPU (BENCHMARKS.md, "Over a real network"; measured with
/// `examples/deflate_levels.rs`).
pub const DEFLATE_LEVEL: u32 = 2;

/// Replies up to this size are compressed on the writer's task; larger ones on the blocking
/// pool, so a large reply never holds up the I/O thread's other connections.
const COMPRESS_INLINE_BYTES: usize = 64 * 1024;

/// How often a paused connection's socket is checked for a hang-up.
const HANGUP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Bytes read from the socket per call: large enough for a query, small enough that a quiet
/// connection keeps little.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// How long a peer has to answer our close frame before its socket is dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the upgrade agreed on for one connection.
#[derive(Clone)]
pub struct WsSettings {
    /// `permessage-deflate` was negotiated.
    pub deflate: bool,
    pub deflaters: Arc<DeflaterPool>,
    pub metrics: Arc<Metrics>,
}

/// Deflaters kept between replies, shared by all connections. Setting one up allocates and
/// zeroes about 300 KiB of tables (170 µs for an 8 KiB reply, against 6 µs with one reset
/// after its last message: `examples/deflate_levels.rs`); a reset one keeps no context, so
/// reuse does not break "no context takeover". At most `keep` are kept idle.
pub struct DeflaterPool {
    idle: std::sync::Mutex<Vec<MessageDeflater>>,
    level: u32,
    keep: usize,
}

impl DeflaterPool {
    pub fn new(level: u32, keep: usize) -> Self {
        DeflaterPool {
            idle: std::sync::Mutex::new(Vec::new()),
            level,
            keep,
        }
    }

    fn take(&self) -> MessageDeflater {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        idle.unwrap_or_else(|| MessageDeflater::new(self.level))
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
    before: Counter,
    after: Counter,
}

/// What the writer task reaches while a streamed message is open.
pub(crate) struct Between<'a> {
    queue: &'a async_channel::Receiver<Outbound>,
    held: &'a mut VecDeque<Outbound>,
    pongs: &'a PongSlot,
}

/// Counts of streamed results, for `/metrics`.
struct StreamedCounts {
    results: Counter,
    bytes: Counter,
}

/// Waits until the connection may be read; `false` if the peer hung up while paused.
async fn wait_open_or_hangup(gate: &ReadGate, stream: &TcpStream) -> bool {
    loop {
        let opened = smol::future::or(
            async {
                gate.wait_open().await;
                true
            },
            async {
                smol::Timer::after(HANGUP_CHECK_EVERY).await;
                false
            },
        )
        .await;
        if opened {
            return true;
        }
        if peer_hung_up(stream) {
            return false;
        }
    }
}

/// `POLLRDHUP`/`POLLHUP`/`POLLERR` without reading: the kernel reports the peer's FIN or
/// reset even while unread data sits in the receive buffer.
fn peer_hung_up(stream: &TcpStream) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(stream, PollFlags::RDHUP)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        Err(_) => false,
    }
}

#[allow(clippy::too_many_arguments)] // the parts of one connection, each from its own owner
pub async fn serve(
    stream: Stream,
    already_read: Vec<u8>,
    conn: ConnId,
    info: ConnectionInfo,
    limits: Limits,
    settings: WsSettings,
    driver: async_channel::Sender<DriverInput>,
    sent_reports: &Arc<SentReports>,
) {
    let hangup_probe = stream.tcp().clone();
    let mut decoder = Decoder::new(Role::Server, limits.max_frame_bytes, settings.deflate);
    decoder.feed(&already_read);
    let (source, sink) = stream.split();
    let (writer, queue) = async_channel::unbounded::<Outbound>();
    let (close_requests_tx, close_requests) = async_channel::bounded::<(u16, String)>(1);
    let gate = Arc::new(ReadGate::default());
    let connection_writer = ConnectionWriter {
        queue: writer.clone(),
        close: close_requests_tx.clone(),
        gate: gate.clone(),
        sent: SentCounter::new(conn, sent_reports),
    };
    let sent = connection_writer.sent.clone();
    let open = DriverInput::Open {
        conn,
        info,
        writer: connection_writer,
    };
    if driver.send(open).await.is_err() {
        return;
    }
    // Told when we have sent a close frame: from then on the peer gets CLOSE_GRACE to answer.
    let (closing, closed_by_us) = async_channel::bounded::<()>(1);
    let deflaters = settings.deflate.then(|| settings.deflaters.clone());
    if settings.deflate {
        settings.metrics.ws_deflate_connections.inc();
    }
    let counts = DeflateCounts {
        before: settings.metrics.ws_deflated_bytes.clone(),
        after: settings.metrics.ws_deflated_wire_bytes.clone(),
    };
    let frames = FrameWriter::new(sink, deflaters, counts);
    let pongs = Arc::new(PongSlot::default());
    let streamed = StreamedCounts {
        results: settings.metrics.results_streamed.clone(),
        bytes: settings.metrics.streamed_bytes.clone(),
    };
    let writer_task = crate::spawn(write(
        frames,
        queue,
        close_requests,
        closing,
        sent,
        pongs.clone(),
        streamed,
    ));
    let peer = PeerSide {
        conn,
        gate: &gate,
        hangup_probe: &hangup_probe,
        driver: &driver,
        replies: &writer,
        pongs: &pongs,
        close: &close_requests_tx,
    };
    let reading = read(source, decoder, peer);
    // A peer that never answers our close frame does not keep its socket.
    let close_grace = async {
        if closed_by_us.recv().await.is_ok() {
            smol::Timer::after(CLOSE_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    smol::future::or(reading, close_grace).await;
    drop(writer);
    let _ = driver.send(DriverInput::Closed { conn }).await;
    writer_task.await;
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
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(
        sink: W,
        deflaters: Option<Arc<DeflaterPool>>,
        counts: DeflateCounts,
    ) -> Self {
        FrameWriter {
            sink,
            pending: VecDeque::new(),
            deflaters,
            counts,
        }
    }

    /// Writes the rest of the current frame, if a write was cut short.
    async fn finish_frame(&mut self) -> io::Result<()> {
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
        if payload.len() <= COMPRESS_INLINE_BYTES {
            let mut deflater = deflaters.take();
            let part = deflater.part(&payload, true).map_err(io::Error::other)?;
            deflaters.give_back(deflater);
            self.counts.after.inc_by(part.len() as u64);
            return self.frame(opcode, true, true, part.into()).await;
        }
        let parts = payload.len().div_ceil(COMPRESS_PART_BYTES);
        let next_part = parts_on_blocking_pool(move |send| {
            let mut deflater = deflaters.take();
            for (i, chunk) in payload.chunks(COMPRESS_PART_BYTES).enumerate() {
                // The writer gave up (its connection closes): stop compressing. The deflater
                // is mid-message then, so it is not given back.
                if !send(deflater.part(chunk, i + 1 == parts)) {
                    return;
                }
            }
            deflaters.give_back(deflater);
        });
        for i in 0..parts {
            let part = next_part
                .recv()
                .await
                .map_err(|_| io::Error::other("the compressing thread stopped"))?
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
        let whole = match self.deflaters.clone() {
            None => loop {
                let Some(piece) = stream.next().await else {
                    break false;
                };
                let (bytes, last) = piece.into_parts();
                meter.written(bytes.len());
                let opcode = if first {
                    OpCode::Binary
                } else {
                    OpCode::Continuation
                };
                self.frame(opcode, last, false, bytes).await?;
                first = false;
                if last {
                    break true;
                }
                self.control_frames_between(&mut between).await?;
            },
            Some(deflaters) => {
                let counts = self.counts.clone();
                let parts = parts_on_blocking_pool(move |send| {
                    let mut deflater = deflaters.take();
                    while let Some(piece) = stream.next_blocking() {
                        let (bytes, last) = piece.into_parts();
                        counts.before.inc_by(bytes.len() as u64);
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
                    let Ok(part) = parts.recv().await else {
                        break false;
                    };
                    let ((part, plain), last) = part.map_err(io::Error::other)?;
                    meter.written(plain);
                    self.counts.after.inc_by(part.len() as u64);
                    let opcode = if first {
                        OpCode::Binary
                    } else {
                        OpCode::Continuation
                    };
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
    async fn answer_ping(&mut self, pongs: &PongSlot) -> io::Result<()> {
        match pongs.take() {
            Some(payload) => self.control(OpCode::Pong, payload).await,
            None => Ok(()),
        }
    }

    async fn control(&mut self, opcode: OpCode, payload: Bytes) -> io::Result<()> {
        self.frame(opcode, true, false, payload).await?;
        self.sink.flush().await
    }
}

/// The writer task: the connection's queue to the socket, until the core closes it (or the
/// socket fails).
async fn write(
    mut frames: FrameWriter<WriteHalf<Stream>>,
    queue: async_channel::Receiver<Outbound>,
    close_requests: async_channel::Receiver<(u16, String)>,
    closing: async_channel::Sender<()>,
    sent: Arc<SentCounter>,
    pongs: Arc<PongSlot>,
    streamed: StreamedCounts,
) {
    let write_queue = async {
        // What arrived while a streamed message was open: written after it, in order.
        let mut held: VecDeque<Outbound> = VecDeque::new();
        loop {
            let outbound = match held.pop_front() {
                Some(outbound) => outbound,
                None => match queue.recv().await {
                    Ok(outbound) => outbound,
                    Err(_) => break,
                },
            };
            let written = match outbound {
                Outbound::Frame(frame) => {
                    let bytes = frame.len();
                    let written = frames.message(frame).await;
                    sent.sent(bytes);
                    written
                }
                Outbound::Ping => frames.control(OpCode::Ping, Bytes::new()).await,
                Outbound::Pong => frames.answer_ping(&pongs).await,
                Outbound::Stream { stream, window } => {
                    streamed.results.inc();
                    let meter = StreamMeter {
                        bytes: streamed.bytes.clone(),
                        sent: sent.clone(),
                    };
                    let between = Between {
                        queue: &queue,
                        held: &mut held,
                        pongs: &pongs,
                    };
                    let whole = frames.streamed(stream, between, &meter).await;
                    sent.released(window);
                    match whole {
                        Ok(true) => Ok(()),
                        // The message stays open: only the close the core is deciding on
                        // (its query failed) may follow, or nothing, if the connection is
                        // going away: nothing more is written until one or the other.
                        Ok(false) => {
                            while queue.recv().await.is_ok() {}
                            return None;
                        }
                        Err(e) => Err(e),
                    }
                }
                // HTTP answers go to HTTP connections only.
                Outbound::Response(_) => Ok(()),
            };
            if written.is_err() {
                return None;
            }
        }
        None
    };
    // A close the core decided on (or the answer to the peer's) overtakes the queue, even
    // while a write is stuck on a peer that stopped reading; the frame cut short is finished
    // first, and a message cut short may end there: a close may come between fragments.
    let requested = async { close_requests.recv().await.ok() };
    // The queue also ends when the driver forgets a connection whose peer closed; the answer
    // to that peer's close may be waiting then.
    let close = smol::future::or(write_queue, requested)
        .await
        .or_else(|| close_requests.try_recv().ok());
    let Some((code, reason)) = close else {
        return;
    };
    let _ = closing.try_send(());
    let sent = async {
        if frames.finish_frame().await.is_ok() {
            let payload = Bytes::from(close_payload(code, &reason));
            let _ = frames.control(OpCode::Close, payload).await;
        }
    };
    let give_up = async {
        smol::Timer::after(CLOSE_GRACE).await;
    };
    smol::future::or(sent, give_up).await;
}

/// What the reader reaches besides its socket.
struct PeerSide<'a> {
    conn: ConnId,
    gate: &'a ReadGate,
    hangup_probe: &'a TcpStream,
    driver: &'a async_channel::Sender<DriverInput>,
    /// Pongs go out through the writer's queue.
    replies: &'a async_channel::Sender<Outbound>,
    pongs: &'a PongSlot,
    /// The answer to the peer's close.
    close: &'a async_channel::Sender<(u16, String)>,
}

/// The reader: messages to the driver, while the core lets the connection be read.
async fn read(mut source: ReadHalf<Stream>, mut decoder: Decoder, peer: PeerSide<'_>) {
    let conn = peer.conn;
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    loop {
        // Over its inbound budget the connection is not read: TCP backpressure. A peer that
        // hangs up meanwhile is noticed without reading, so its queries stop.
        if !wait_open_or_hangup(peer.gate, peer.hangup_probe).await {
            break;
        }
        let event = loop {
            match decoder.next_event() {
                Ok(Some(event)) => break Ok(event),
                Ok(None) => {}
                Err(error) => break Err(error),
            }
            match source.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.feed(&buffer[..n]),
            }
        };
        let frame = match event {
            Ok(WsEvent::Message(frame)) => frame,
            Ok(WsEvent::Ping(payload)) => {
                if peer.pongs.ping(payload) {
                    let _ = peer.replies.try_send(Outbound::Pong);
                }
                continue;
            }
            Ok(WsEvent::Pong(_)) => {
                let _ = peer.driver.send(DriverInput::Pong { conn }).await;
                continue;
            }
            Ok(WsEvent::Close(code)) => {
                // RFC 6455 §5.5.1: answer with the peer's code.
                let code = code.map_or(1000, |(code, _)| code);
                let _ = peer.close.try_send((code, String::new()));
                break;
            }
            Err(error) => {
                // The core decides the close (1009, 1002 or 1007). Nothing more is read; the
                // socket stays until that close went out and the peer had its grace (the
                // caller's `close_grace` ends this), bounded here in case it never does.
                tracing::debug!(conn = conn.0, "closing a WebSocket: {error}");
                let malformed = Malformed::from(&error);
                let _ = peer
                    .driver
                    .send(DriverInput::Malformed { conn, malformed })
                    .await;
                smol::Timer::after(2 * CLOSE_GRACE).await;
                break;
            }
        };
        peer.gate.handed_over(frame.len());
        if peer
            .driver
            .send(DriverInput::Frame { conn, frame })
            .await
            .is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::stream::StreamPiece;
    use futures_util::io::Cursor;

    fn written(frames: Vec<Frame>, deflate: bool) -> Vec<u8> {
        smol::block_on(async {
            let counts = DeflateCounts::default();
            let deflaters = deflate.then(|| Arc::new(DeflaterPool::new(DEFLATE_LEVEL, 1)));
            let mut writer = FrameWriter::new(Cursor::new(Vec::new()), deflaters, counts);
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
            let deflaters = deflate.then(|| Arc::new(DeflaterPool::new(DEFLATE_LEVEL, 1)));
            let mut writer =
                FrameWriter::new(Cursor::new(Vec::new()), deflaters, DeflateCounts::default());
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
