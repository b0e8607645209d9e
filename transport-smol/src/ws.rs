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

use crate::driver::{DriverInput, Outbound};

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
    if driver
        .send(DriverInput::Open {
            conn,
            info,
            writer: writer.clone(),
        })
        .await
        .is_err()
    {
        return;
    }

    let writer_driver = driver.clone();
    let writer_task = smol::spawn(async move {
        while let Ok(outbound) = queue.recv().await {
            match outbound {
                Outbound::Frame(frame) => {
                    let bytes = frame.len();
                    let message = match frame {
                        Frame::Text(text) => Message::Text(text.into()),
                        Frame::Binary(data) => Message::Binary(data),
                    };
                    if sink.send(message).await.is_err() {
                        break;
                    }
                    let _ = writer_driver.send(DriverInput::Sent { conn, bytes }).await;
                }
                Outbound::Close(code, reason) => {
                    let frame = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = sink.close(Some(frame)).await;
                    break;
                }
            }
        }
    });

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
    drop(writer);
    let _ = driver.send(DriverInput::Closed { conn }).await;
    writer_task.await;
}
