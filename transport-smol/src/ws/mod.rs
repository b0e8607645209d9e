//! One WebSocket connection: a reader that feeds messages to the driver and a writer that
//! drains the connection's queue to the socket, reporting written bytes for the core's
//! outbound accounting (PROTOCOL §7).
//!
//! Framing is the core's sans-IO codec (`duckwire_core::websocket`); this module only moves
//! bytes: how frames are written (vectored, compressed, streamed) is [`frames`]'s.

mod frames;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use duckwire_core::websocket::{close_payload, Decoder, OpCode, Role, WsEvent};
use duckwire_core::{ConnId, ConnectionInfo, Limits, Malformed};
use futures_util::io::{AsyncReadExt, ReadHalf, WriteHalf};
use smol::net::TcpStream;

use prometheus_client::metrics::counter::Counter;

use crate::driver::{ConnectionWriter, DriverInput, Outbound, ReadGate, SentCounter, SentReports};
use crate::metrics::Metrics;
use crate::pace::Pacing;
use crate::tls::Stream;
use crate::writer::{PongSlot, StreamMeter};
pub use frames::DeflaterPool;
use frames::{Between, DeflateCounts, FrameWriter};

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
    let pacing = Pacing::for_socket(&hangup_probe, settings.deflate);
    let frames = FrameWriter::new(sink, deflaters, counts, pacing);
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
