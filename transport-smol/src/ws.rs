//! One WebSocket connection: a reader that feeds frames to the driver and a writer that
//! drains the connection's queue to the socket, reporting written bytes for the core's
//! outbound accounting (PROTOCOL §7).

use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use duckwire_core::{ConnId, ConnectionInfo, Frame, Limits, Malformed};
use futures_util::{SinkExt, StreamExt};
use smol::net::TcpStream;

use crate::tls::Stream;

use std::sync::Arc;

use crate::driver::{ConnectionWriter, DriverInput, Outbound, ReadGate, SentCounter, SentReports};

/// Messages larger than this go out as several WebSocket fragments of this size: the
/// WebSocket library copies each frame it writes into its buffer, and a large result would
/// otherwise be held twice (PROTOCOL §7's outbound cap counts it once).
const FRAGMENT_BYTES: usize = 1 << 20;

/// The WebSocket messages (whole, or fragments of one message) that carry `frame`.
fn fragments(frame: Frame) -> Vec<Message> {
    let (data, first_opcode) = match frame {
        Frame::Text(text) if text.len() <= FRAGMENT_BYTES => {
            return vec![Message::Text(text.into())]
        }
        Frame::Binary(data) if data.len() <= FRAGMENT_BYTES => return vec![Message::Binary(data)],
        Frame::Text(text) => (Bytes::from(text.into_bytes()), Data::Text),
        Frame::Binary(data) => (data, Data::Binary),
    };
    let is_text = first_opcode == Data::Text;
    let mut messages = Vec::with_capacity(data.len() / FRAGMENT_BYTES + 1);
    let mut start = 0;
    while start < data.len() {
        let mut end = (start + FRAGMENT_BYTES).min(data.len());
        // Text fragments end on a character boundary, for receivers that decode each one.
        while is_text && end < data.len() && data[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let opcode = if start == 0 {
            first_opcode
        } else {
            Data::Continue
        };
        let is_final = end == data.len();
        messages.push(Message::Frame(WsFrame::message(
            data.slice(start..end),
            OpCode::Data(opcode),
            is_final,
        )));
        start = end;
    }
    messages
}

/// How often a paused connection's socket is checked for a hang-up.
const HANGUP_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

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

/// Bytes tungstenite reads from the socket per call. It zero-fills that much of its buffer
/// before every read, including the one that finds the socket empty, so its 128 KiB default
/// cost two 128 KiB memsets per small request (5–8 % of a cache hit's CPU in `perf`); a large
/// message still arrives whole, in more reads.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// How long a peer has to answer our close frame before its socket is dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

type Sink = async_tungstenite::WebSocketSender<Stream>;
type Source = async_tungstenite::WebSocketReceiver<Stream>;

pub async fn serve(
    stream: Stream,
    already_read: Vec<u8>,
    conn: ConnId,
    info: ConnectionInfo,
    limits: Limits,
    driver: async_channel::Sender<DriverInput>,
    sent_reports: &Arc<SentReports>,
) {
    let hangup_probe = stream.tcp().clone();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes);
    let socket =
        WebSocketStream::from_partially_read(stream, already_read, Role::Server, Some(config))
            .await;
    let (sink, source) = socket.split();
    let (writer, queue) = async_channel::unbounded::<Outbound>();
    let (close_requests_tx, close_requests) = async_channel::bounded::<(u16, String)>(1);
    let gate = Arc::new(ReadGate::default());
    let connection_writer = ConnectionWriter {
        queue: writer.clone(),
        close: close_requests_tx,
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
    let writer_task = crate::spawn(write(sink, queue, close_requests, closing, sent));
    let reading = read(source, conn, &gate, &hangup_probe, &driver);
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
    mut sink: Sink,
    queue: async_channel::Receiver<Outbound>,
    close_requests: async_channel::Receiver<(u16, String)>,
    closing: async_channel::Sender<()>,
    sent: Arc<SentCounter>,
) {
    let write_queue = async {
        while let Ok(outbound) = queue.recv().await {
            if write_one(&mut sink, outbound, &sent).await.is_err() {
                return None;
            }
        }
        None
    };
    // A close the core decided on overtakes the queue, even while a write is stuck on a peer
    // that stopped reading. A frame cut short stays whole: tungstenite keeps it in its write
    // buffer and flushes it before the close frame.
    let requested = async { close_requests.recv().await.ok() };
    let Some((code, reason)) = smol::future::or(write_queue, requested).await else {
        return;
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = closing.try_send(());
    let sent = async {
        let _ = sink.close(Some(frame)).await;
    };
    let give_up = async {
        smol::Timer::after(CLOSE_GRACE).await;
    };
    smol::future::or(sent, give_up).await;
}

async fn write_one(sink: &mut Sink, outbound: Outbound, sent: &SentCounter) -> Result<(), WsError> {
    match outbound {
        Outbound::Frame(frame) => {
            let bytes = frame.len();
            // Fed without a flush each; the library still writes out whenever its buffer
            // fills, so the fragments never pile up in memory.
            for message in fragments(frame) {
                sink.feed(message).await?;
            }
            sink.flush().await?;
            sent.sent(bytes);
        }
        // HTTP answers go to HTTP connections only.
        Outbound::Response(_) => {}
        Outbound::Ping => sink.send(Message::Ping(Bytes::new())).await?,
    }
    Ok(())
}

/// The reader: messages to the driver, while the core lets the connection be read.
async fn read(
    mut source: Source,
    conn: ConnId,
    gate: &ReadGate,
    hangup_probe: &TcpStream,
    driver: &async_channel::Sender<DriverInput>,
) {
    loop {
        // Over its inbound budget the connection is not read: TCP backpressure. A peer that
        // hangs up meanwhile is noticed without reading, so its queries stop.
        if !wait_open_or_hangup(gate, hangup_probe).await {
            break;
        }
        let Some(message) = source.next().await else {
            break;
        };
        let frame = match message {
            Ok(Message::Text(text)) => Frame::Text(text.as_str().to_owned()),
            Ok(Message::Binary(data)) => Frame::Binary(data),
            Ok(Message::Close(_)) => break,
            Ok(Message::Pong(_)) => {
                let _ = driver.send(DriverInput::Pong { conn }).await;
                continue;
            }
            Ok(_) => continue,
            Err(WsError::Capacity(_)) => {
                // The core closes it (1009 and the cap's message). Nothing more is read; the
                // socket stays until that close went out and the peer had its grace (the
                // caller's `close_grace` ends this), bounded here in case it never does.
                let malformed = Malformed::FrameTooLarge;
                let _ = driver
                    .send(DriverInput::Malformed { conn, malformed })
                    .await;
                smol::Timer::after(2 * CLOSE_GRACE).await;
                break;
            }
            Err(_) => break,
        };
        gate.handed_over(frame.len());
        if driver
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

    fn payloads(messages: &[Message]) -> (Vec<u8>, Vec<(OpCode, bool, usize)>) {
        let mut joined = Vec::new();
        let mut shape = Vec::new();
        for message in messages {
            match message {
                Message::Frame(frame) => {
                    joined.extend_from_slice(frame.payload());
                    shape.push((frame.header().opcode, frame.header().is_final, frame.len()));
                }
                other => panic!("expected fragments, got {other:?}"),
            }
        }
        (joined, shape)
    }

    #[test]
    fn small_messages_go_whole() {
        let messages = fragments(Frame::Text("hello".into()));
        assert!(matches!(&messages[..], [Message::Text(t)] if t.as_str() == "hello"));
    }

    #[test]
    fn large_binary_messages_are_fragmented_in_order() {
        let data: Vec<u8> = (0..FRAGMENT_BYTES * 2 + 10).map(|i| i as u8).collect();
        let messages = fragments(Frame::Binary(Bytes::from(data.clone())));
        let (joined, shape) = payloads(&messages);
        assert_eq!(joined, data);
        let opcodes: Vec<(OpCode, bool)> = shape.iter().map(|(o, f, _)| (*o, *f)).collect();
        assert_eq!(
            opcodes,
            vec![
                (OpCode::Data(Data::Binary), false),
                (OpCode::Data(Data::Continue), false),
                (OpCode::Data(Data::Continue), true)
            ]
        );
    }

    #[test]
    fn large_text_is_fragmented_on_character_boundaries() {
        let text = "é€".repeat(FRAGMENT_BYTES / 2);
        let messages = fragments(Frame::Text(text.clone()));
        let (joined, _) = payloads(&messages);
        assert_eq!(joined, text.as_bytes());
        for message in &messages {
            if let Message::Frame(frame) = message {
                assert!(std::str::from_utf8(frame.payload()).is_ok());
            }
        }
    }
}
