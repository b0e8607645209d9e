//! A blocking WebSocket client that can negotiate `permessage-deflate`, as browsers do: the
//! handshake by hand, frames through duckwire-core's codec in the client role (tungstenite has
//! no deflate). Used by the compression tests and by `duckwire-bench --ws-deflate`.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use bytes::Bytes;
use duckwire_core::websocket::{
    close_payload, encode_frame, Decoder, MessageDeflater, OpCode, Role, WsEvent,
};
use duckwire_core::Frame;

/// What Chromium offers.
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

pub struct DeflateClient {
    stream: TcpStream,
    decoder: Decoder,
    /// `Some` when the server accepted `permessage-deflate`: every message is sent compressed.
    deflater: Option<MessageDeflater>,
    /// The server's `Sec-WebSocket-Extensions`, if any.
    pub extensions: Option<String>,
    /// The reason of the close frame the server sent, once it did.
    pub close_reason: Option<String>,
    mask_state: u32,
    buffer: Vec<u8>,
}

impl DeflateClient {
    /// Connects to `ws://host:port/path`, offering `offer` in `Sec-WebSocket-Extensions`.
    pub fn connect(url: &str, offer: Option<&str>) -> io::Result<DeflateClient> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| io::Error::other("only ws:// URLs"))?;
        let (host, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let mut stream = TcpStream::connect(host)?;
        stream.set_nodelay(true)?;
        let extension = offer
            .map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
        );
        stream.write_all(request.as_bytes())?;
        let (head, rest) = read_head(&mut stream)?;
        let (status, headers) = crate::parse_head(&head);
        if status != 101 {
            return Err(io::Error::other(format!("upgrade refused: {status}")));
        }
        let extensions = crate::header(&headers, "sec-websocket-extensions").map(str::to_string);
        let deflate = extensions
            .as_deref()
            .is_some_and(|e| e.starts_with("permessage-deflate"));
        let mut decoder = Decoder::new(Role::Client, None, deflate);
        decoder.feed(&rest);
        Ok(DeflateClient {
            stream,
            decoder,
            deflater: deflate.then(|| MessageDeflater::new(6)),
            extensions,
            close_reason: None,
            mask_state: 0x9E37_79B9,
            buffer: vec![0; 256 * 1024],
        })
    }

    pub fn deflate(&self) -> bool {
        self.deflater.is_some()
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift: masks need not be secret here, only present.
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        self.mask_state.to_be_bytes()
    }

    /// Sends one message, compressed when deflate was negotiated.
    pub fn send(&mut self, frame: Frame) -> io::Result<()> {
        let (opcode, payload) = match frame {
            Frame::Text(text) => (OpCode::Text, text.into_bytes()),
            Frame::Binary(bytes) => (OpCode::Binary, bytes.to_vec()),
        };
        let (payload, compressed) = match &mut self.deflater {
            Some(deflater) => (
                deflater.part(&payload, true).map_err(io::Error::other)?,
                true,
            ),
            None => (payload, false),
        };
        self.send_frame(opcode, true, compressed, &payload)
    }

    /// Sends one frame as given (tests craft broken or hostile ones with it).
    pub fn send_frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        compressed: bool,
        payload: &[u8],
    ) -> io::Result<()> {
        let key = self.next_mask();
        let wire = encode_frame(opcode, fin, compressed, payload, Some(key));
        self.stream.write_all(&wire)
    }

    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(Frame::Text(text.to_string()))
    }

    /// The next message, pong or close; pings are answered on the way.
    pub fn recv(&mut self) -> io::Result<Received> {
        loop {
            match self.decoder.next_event().map_err(io::Error::other)? {
                Some(WsEvent::Message(frame)) => return Ok(Received::Message(frame)),
                Some(WsEvent::Ping(payload)) => {
                    self.send_frame(OpCode::Pong, true, false, &payload)?
                }
                Some(WsEvent::Pong(payload)) => return Ok(Received::Pong(payload)),
                Some(WsEvent::Close(close)) => {
                    let code = close.as_ref().map(|(code, _)| *code);
                    self.close_reason = close.map(|(_, reason)| reason.to_string());
                    let reply = close_payload(code.unwrap_or(1000), "");
                    let _ = self.send_frame(OpCode::Close, true, false, &reply);
                    return Ok(Received::Closed(code));
                }
                None => {
                    let n = self.stream.read(&mut self.buffer)?;
                    if n == 0 {
                        return Ok(Received::Closed(None));
                    }
                    self.decoder.feed(&self.buffer[..n]);
                }
            }
        }
    }
}

#[derive(Debug)]
pub enum Received {
    Message(Frame),
    Pong(Bytes),
    Closed(Option<u16>),
}

impl Received {
    pub fn text(self) -> String {
        match self {
            Received::Message(Frame::Text(text)) => text,
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub fn binary(self) -> Bytes {
        match self {
            Received::Message(Frame::Binary(bytes)) => bytes,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// Reads an HTTP response head; returns it and the bytes read past it.
fn read_head(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("the server closed during the handshake"));
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(end) = crate::head_end(&bytes) {
            let rest = bytes.split_off(end + 4);
            return Ok((bytes, rest));
        }
    }
}
