//! One WebSocket connection: a reader that feeds frames to the driver and a writer that
//! drains the connection's queue to the socket, reporting written bytes for the core's
//! outbound accounting (SPEC §7).

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use duckwire_core::{close_code, ConnId, ConnectionInfo, Frame, Limits, ProtocolError};
use futures_util::StreamExt;
use smol::net::TcpStream;

use crate::driver::{ConnectionWriter, DriverInput, Outbound};

/// How long a peer has to answer our close frame before its socket is dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn serve(
    stream: TcpStream,
    already_read: Vec<u8>,
    conn: ConnId,
    info: ConnectionInfo,
    limits: Limits,
    driver: async_channel::Sender<DriverInput>,
) {
    let config = WebSocketConfig::default()
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes);
    let socket =
        WebSocketStream::from_partially_read(stream, already_read, Role::Server, Some(config))
            .await;
    let (mut sink, mut source) = socket.split();
    let (writer, queue) = async_channel::unbounded::<Outbound>();
    let (close_requests_tx, close_requests) = async_channel::bounded::<(u16, String)>(1);
    let connection_writer = ConnectionWriter {
        queue: writer.clone(),
        close: close_requests_tx,
    };
    if driver
        .send(DriverInput::Open {
            conn,
            info,
            writer: connection_writer,
        })
        .await
        .is_err()
    {
        return;
    }

    let writer_driver = driver.clone();
    // Told when we have sent a close frame: from then on the peer gets CLOSE_GRACE to answer.
    let (closing, closed_by_us) = async_channel::bounded::<()>(1);
    let writer_task = smol::spawn(async move {
        let write_queue = async {
            while let Ok(outbound) = queue.recv().await {
                match outbound {
                    Outbound::Frame(frame) => {
                        let bytes = frame.len();
                        let message = match frame {
                            Frame::Text(text) => Message::Text(text.into()),
                            Frame::Binary(data) => Message::Binary(data),
                        };
                        if sink.send(message).await.is_err() {
                            return None;
                        }
                        let _ = writer_driver.send(DriverInput::Sent { conn, bytes }).await;
                    }
                    Outbound::Close(code, reason) => return Some((code, reason)),
                }
            }
            None
        };
        // A close the core decided on overtakes the queue, even while a write is stuck on
        // a peer that stopped reading. A frame cut short stays whole: tungstenite keeps it
        // in its write buffer and flushes it before the close frame.
        let requested = async { close_requests.recv().await.ok() };
        if let Some((code, reason)) = smol::future::or(write_queue, requested).await {
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
    });

    let reading = async {
        while let Some(message) = source.next().await {
            let frame = match message {
                Ok(Message::Text(text)) => Frame::Text(text.as_str().to_owned()),
                Ok(Message::Binary(data)) => Frame::Binary(data),
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(WsError::Capacity(_)) => {
                    let limit = limits.max_frame_bytes.unwrap_or(usize::MAX);
                    let reason = ProtocolError::CapExceeded {
                        cap: "max_frame_bytes",
                        limit,
                    }
                    .to_string();
                    let _ = writer.try_send(Outbound::Close(close_code::MESSAGE_TOO_BIG, reason));
                    break;
                }
                Err(_) => break,
            };
            if driver
                .send(DriverInput::Frame { conn, frame })
                .await
                .is_err()
            {
                break;
            }
        }
    };
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
