//! One TCP connection on the server's port: TLS, the request-head deadline, the HTTP/1.1
//! keep-alive loop (each request to the core, its answer rendered back), or the WebSocket
//! upgrade after the `Host` and `Origin` checks.

use crate::server::Shared;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use duckwire_core::{ConnId, ConnectionInfo, Dialect, HttpRequest, HttpResponse};
use serde_json::json;
use smol::io::AsyncWriteExt;
use smol::net::TcpStream;
use tungstenite::handshake::server::{create_response, write_response as write_handshake};
use tungstenite::http::{self, HeaderValue};

use crate::tls::Stream;

use crate::compress::{
    parts_on_blocking_pool, Encoding, PartEncoder, COMPRESS_ABOVE, COMPRESS_PART_BYTES,
};
use crate::driver::{ConnectionWriter, DriverInput, Outbound, ReadGate, SentCounter};
use crate::executor::stream::ResultStream;
use crate::http::{
    read_body, read_head, write_chunked_response, write_response, ChunkSource, HeadError,
    RequestHead, Response,
};
use crate::pace::Pacing;
use crate::writer::StreamMeter;
use duckwire_core::websocket::negotiate_deflate;
use duckwire_core::Malformed;

/// Waits until `deadline`, or forever without one.
async fn until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => {
            smol::Timer::at(at).await;
        }
        None => std::future::pending().await,
    }
}

pub(crate) async fn handle_connection(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // The address the client reached us at: a `Host` naming it is answered (PROTOCOL §4).
    let local_ip = tcp.local_addr().ok().map(|addr| addr.ip());
    let mut buffer = Vec::with_capacity(1024);
    // A new connection must finish its TLS handshake and send its first request head in
    // time (later heads on a kept-alive connection are bounded by the core's HTTP idle
    // timeout).
    let deadline = shared
        .config
        .http_head_timeout
        .map(|timeout| std::time::Instant::now() + timeout);
    let mut stream = match &shared.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            let handshake = async { Some(acceptor.accept(tcp).await) };
            match smol::future::or(handshake, async {
                until(deadline).await;
                None
            })
            .await
            {
                Some(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Some(Err(e)) => {
                    // A plain-HTTP client on a TLS port, a wrong certificate, a scanner.
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                None => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let head = smol::future::or(read_head(&mut stream, &mut buffer), async {
        until(deadline).await;
        Err(HeadError::TimedOut)
    })
    .await;
    let client = Client { peer, local_ip };
    let head = match head {
        Ok(head) => head,
        // The core answers what could not be framed (408, 400), as it answers requests.
        Err(error) => match error.malformed() {
            Some(malformed) => {
                return serve_http(stream, buffer, client, Err(malformed), shared).await
            }
            None => return,
        },
    };
    if head.is_websocket_upgrade() {
        upgrade(stream, buffer, client, head, shared).await;
        return;
    }
    serve_http(stream, buffer, client, Ok(head), shared).await;
}

/// Who is on the other end of a connection, and where it reached us.
#[derive(Clone, Copy)]
struct Client {
    peer: SocketAddr,
    local_ip: Option<std::net::IpAddr>,
}

/// An HTTP connection: each request goes to the core, its answer comes back through the
/// connection's queue; kept alive until the client says `Connection: close`, the core closes
/// it (idle timeout, shutdown) or the peer goes away. Requests are taken one after another,
/// so pipelined requests are answered in order. A request that cannot be framed is reported
/// to the core ([`Malformed`]), which answers it and closes the connection.
async fn serve_http(
    mut stream: Stream,
    mut buffer: Vec<u8>,
    client: Client,
    first: Result<RequestHead, Malformed>,
    shared: Arc<Shared>,
) {
    let conn = ConnId(shared.next_conn.fetch_add(1, Relaxed));
    let Some(queue) = open_http_connection(conn, &client, &shared).await else {
        return;
    };
    // The compression level follows this connection's link from answer to answer.
    let compressed = shared.config.http_compression.applies_to(&client.peer);
    let pacing = Pacing::for_socket(stream.tcp(), compressed);
    let mut next = first;
    loop {
        let (input, head) = match next {
            Ok(head) => {
                let limits = &shared.config.core.limits;
                match read_body(&mut stream, &head, &mut buffer, limits).await {
                    Ok(body) => {
                        let request = http_request(&head, &client, body);
                        (DriverInput::Http { conn, request }, Some(head))
                    }
                    Err(malformed) => (DriverInput::Malformed { conn, malformed }, None),
                }
            }
            Err(malformed) => (DriverInput::Malformed { conn, malformed }, None),
        };
        // After a malformed request the framing is lost: its answer is the last.
        let keep_alive = head.as_ref().is_some_and(RequestHead::keep_alive);
        if shared.driver.send(input).await.is_err() {
            break;
        }
        let Some(answer) = queue.answer().await else {
            break; // closed by the core with nothing to answer
        };
        // A request whose head could not be read gets no CORS headers and no compression.
        let origin = head.as_ref().and_then(|head| head.header("origin"));
        let (sent, written) = match answer {
            Answer::Whole(response) => {
                let sent = response.len();
                let rendered = render(response, origin, &shared);
                let large = rendered.body.len() > COMPRESS_ABOVE;
                let encoding = head
                    .as_ref()
                    .and_then(|head| encoding_for(large, head, &client.peer, &shared));
                let written =
                    send_answer(&mut stream, rendered, encoding, keep_alive, &pacing).await;
                (sent, written.map(|()| true))
            }
            Answer::Streamed {
                stream: result,
                window,
            } => {
                // The head of a whole answer of its kind (JSON rows or Arrow); the body follows
                // as it is produced.
                let kind = match result.is_text() {
                    true => HttpResponse::Json(String::new()),
                    false => HttpResponse::Arrow(Bytes::new()),
                };
                let rendered = render(kind, origin, &shared);
                let encoding = head
                    .as_ref()
                    .and_then(|head| encoding_for(true, head, &client.peer, &shared));
                shared.metrics.results_streamed.inc();
                let meter = StreamMeter {
                    bytes: shared.metrics.streamed_bytes.clone(),
                    sent: queue.sent.clone(),
                };
                let written = send_streamed_answer(
                    &mut stream,
                    rendered,
                    encoding,
                    keep_alive,
                    result,
                    meter,
                    &pacing,
                )
                .await;
                // The window the core counted for it is free again.
                queue.sent.released(window);
                (0, written)
            }
        };
        queue.sent.sent(sent);
        // Failed to write, or a stream cut short (its query failed): the body cannot be
        // ended, so the connection goes.
        if !matches!(written, Ok(true)) {
            break;
        }
        if !keep_alive {
            break;
        }
        // The next request, unless the core closes the connection first (idle timeout,
        // shutdown): while it waits, only the core's idle timer bounds the wait.
        next = match queue.next_head(&mut stream, &mut buffer).await {
            Some(Ok(head)) if head.is_websocket_upgrade() => {
                let _ = shared.driver.send(DriverInput::Closed { conn }).await;
                return upgrade(stream, buffer, client, head, shared).await;
            }
            Some(Ok(head)) => Ok(head),
            Some(Err(error)) => match error.malformed() {
                Some(malformed) => Err(malformed),
                None => break,
            },
            None => break,
        };
    }
    let _ = shared.driver.send(DriverInput::Closed { conn }).await;
}

/// The core's answer to one request: whole, or an Arrow result sent as it is produced.
enum Answer {
    Whole(HttpResponse),
    Streamed {
        stream: ResultStream,
        /// What the core counted as queued for it (reported sent once it ended).
        window: usize,
    },
}

/// What an HTTP connection task holds of its connection in the core.
struct HttpQueue {
    answers: async_channel::Receiver<Outbound>,
    closes: async_channel::Receiver<(u16, String)>,
    gate: Arc<ReadGate>,
    sent: Arc<SentCounter>,
}

impl HttpQueue {
    /// The core's answer to the request just sent, or `None` when it closed the connection
    /// instead (a request still waiting is answered before the close).
    async fn answer(&self) -> Option<Answer> {
        let answer = smol::future::or(async { self.answers.recv().await.ok() }, async {
            let _ = self.closes.recv().await;
            // The answer, if any, was queued before the close.
            self.answers.try_recv().ok()
        })
        .await;
        match answer {
            Some(Outbound::Response(response)) => Some(Answer::Whole(response)),
            Some(Outbound::Stream { stream, window }) => Some(Answer::Streamed { stream, window }),
            _ => None,
        }
    }

    /// The next request head, once the core lets this connection be read; `None` if the
    /// core closes it first.
    async fn next_head(
        &self,
        stream: &mut Stream,
        buffer: &mut Vec<u8>,
    ) -> Option<Result<RequestHead, HeadError>> {
        smol::future::or(
            async {
                self.gate.wait_open().await;
                Some(read_head(stream, buffer).await)
            },
            async {
                let _ = self.closes.recv().await;
                None
            },
        )
        .await
    }
}

/// Opens `conn` in the core as an HTTP connection.
async fn open_http_connection(conn: ConnId, client: &Client, shared: &Shared) -> Option<HttpQueue> {
    let (queue_tx, answers) = async_channel::unbounded::<Outbound>();
    let (close_tx, closes) = async_channel::bounded::<(u16, String)>(1);
    let gate = Arc::new(ReadGate::default());
    let writer = ConnectionWriter {
        queue: queue_tx,
        close: close_tx,
        gate: gate.clone(),
        sent: SentCounter::new(conn, &shared.sent_reports),
    };
    let sent = writer.sent.clone();
    let info = ConnectionInfo {
        dialect: Dialect::Http,
        peer: client.peer.to_string(),
        ..ConnectionInfo::default()
    };
    shared
        .driver
        .send(DriverInput::Open { conn, info, writer })
        .await
        .ok()?;
    Some(HttpQueue {
        answers,
        closes,
        gate,
        sent,
    })
}

/// The facts of one request the core decides on.
fn http_request(head: &RequestHead, client: &Client, body: Bytes) -> HttpRequest {
    HttpRequest {
        method: head.method.clone(),
        path: head.path.clone(),
        bearer_token: head.bearer_token(),
        url_token: head.query_param("token"),
        origin: head.header("origin").map(str::to_string),
        host: head.header("host").map(str::to_string),
        local_ip: client.local_ip,
        params: head.query_params(),
        body,
    }
}

/// The encoding a `large` answer is compressed with: when `--http-compression` applies to
/// this peer and the request accepts an encoding we speak.
fn encoding_for(
    large: bool,
    head: &RequestHead,
    peer: &SocketAddr,
    shared: &Shared,
) -> Option<Encoding> {
    if !large || !shared.config.http_compression.applies_to(peer) {
        return None;
    }
    head.header("accept-encoding").and_then(Encoding::negotiate)
}

/// Writes an answer, compressed with `encoding` if given. Compression runs on the blocking
/// pool, off the I/O thread.
async fn send_answer(
    stream: &mut Stream,
    mut response: Response,
    encoding: Option<Encoding>,
    keep_alive: bool,
    pacing: &Pacing,
) -> std::io::Result<()> {
    let Some(encoding) = encoding else {
        return write_response(stream, &response, keep_alive).await;
    };
    let body = std::mem::take(&mut response.body);
    // Up to one part, compressed whole and sent with a `Content-Length`; larger, a chunked body
    // whose parts leave while the next is compressed (over a slow link the compression then
    // costs nothing).
    if body.len() <= COMPRESS_PART_BYTES {
        let whole = body.clone();
        let pace = pacing.pace();
        match smol::unblock(move || encoding.compress(&whole, &pace)).await {
            Ok(smaller) => {
                response.body = Bytes::from(smaller);
                add_encoding_headers(&mut response, encoding);
            }
            Err(e) => {
                tracing::warn!("compressing an answer failed (sent as is): {e}");
                response.body = body;
            }
        }
        return write_response(stream, &response, keep_alive).await;
    }
    add_encoding_headers(&mut response, encoding);
    let count = body.len().div_ceil(COMPRESS_PART_BYTES);
    let mut chunks = (0..count).map(move |i| {
        let end = ((i + 1) * COMPRESS_PART_BYTES).min(body.len());
        (body.slice(i * COMPRESS_PART_BYTES..end), i + 1 == count)
    });
    let parts = encoded_parts(encoding, pacing, move || chunks.next());
    let whole = write_chunked_response(stream, &response, keep_alive, parts).await?;
    match whole {
        true => Ok(()),
        false => Err(std::io::Error::other(
            "compressing an answer stopped midway",
        )),
    }
}

/// Compresses what `next` yields (bytes, and whether they are the last) as one encoded body,
/// part by part on the blocking pool, each part flushed so it can leave as a chunk while the
/// next is compressed. The parts end without a last one if `next` ends first (a stream cut
/// short) or compressing fails. Each part is compressed at the level the connection's pace
/// is at when it begins (`crate::pace`).
fn encoded_parts(
    encoding: Encoding,
    pacing: &Pacing,
    mut next: impl FnMut() -> Option<(Bytes, bool)> + Send + 'static,
) -> ChunkSource<'_> {
    let pace = pacing.pace();
    let parts = parts_on_blocking_pool(move |send| {
        let mut encoder = match PartEncoder::new(encoding, &pace) {
            Ok(encoder) => encoder,
            Err(e) => {
                send(Err(e));
                return;
            }
        };
        while let Some((input, last)) = next() {
            encoder.follow(&pace);
            let part = encoder.part(&input);
            if last {
                let whole = part.and_then(|mut part| {
                    part.extend(encoder.finish()?);
                    Ok(part)
                });
                send(whole.map(|part| (Bytes::from(part), true)));
                return;
            }
            let failed = part.is_err();
            if !send(part.map(|part| (Bytes::from(part), false))) || failed {
                return;
            }
        }
    });
    ChunkSource::Parts {
        parts,
        pacing,
        taken: 0,
    }
}

/// Writes an Arrow result as it is produced: a chunked body, each piece a chunk as it
/// arrives (compressed as parts of one encoded body with `encoding`, on the blocking pool).
/// `Ok(false)`: the stream was cut short (its query failed) and the body left unended.
async fn send_streamed_answer(
    stream: &mut Stream,
    mut response: Response,
    encoding: Option<Encoding>,
    keep_alive: bool,
    result: ResultStream,
    meter: StreamMeter,
    pacing: &Pacing,
) -> std::io::Result<bool> {
    let Some(encoding) = encoding else {
        let pieces = ChunkSource::Result(result, meter);
        return write_chunked_response(stream, &response, keep_alive, pieces).await;
    };
    add_encoding_headers(&mut response, encoding);
    let parts = encoded_parts(encoding, pacing, move || {
        let (bytes, last) = result.next_blocking()?.into_parts();
        meter.written(bytes.len());
        Some((bytes, last))
    });
    write_chunked_response(stream, &response, keep_alive, parts).await
}

fn add_encoding_headers(response: &mut Response, encoding: Encoding) {
    response
        .headers
        .push(("Content-Encoding".into(), encoding.header_value().into()));
    response
        .headers
        .push(("Vary".into(), "Accept-Encoding".into()));
}

enum HandshakeRefusal {
    /// No or another `Sec-WebSocket-Version` than 13: `426`.
    Version,
    Invalid(String),
}

/// The `101 Switching Protocols` answer for an upgrade request, from tungstenite.
fn handshake_response(head: &RequestHead) -> Result<http::Response<()>, HandshakeRefusal> {
    use tungstenite::error::{Error, ProtocolError};
    let target = match &head.query {
        Some(query) => format!("{}?{query}", head.path),
        None => head.path.clone(),
    };
    let mut request = http::Request::builder()
        .method(head.method.as_str())
        .uri(target)
        .version(if head.version_minor == 0 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for (name, value) in &head.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(())
        .map_err(|e| HandshakeRefusal::Invalid(e.to_string()))?;
    create_response(&request).map_err(|e| match e {
        Error::Protocol(ProtocolError::MissingSecWebSocketVersionHeader) => {
            HandshakeRefusal::Version
        }
        other => HandshakeRefusal::Invalid(other.to_string()),
    })
}

/// The HTTP form of the core's answer: Mosaic's bodies for queries, and the small routes.
/// `origin`: the request's `Origin`, answered with CORS headers.
fn render(answer: HttpResponse, origin: Option<&str>, shared: &Shared) -> Response {
    let cors = answer.allows_cors();
    let mut response = match answer {
        HttpResponse::Arrow(ipc) => Response {
            status: 200,
            content_type: "application/vnd.apache.arrow.stream",
            body: ipc,
            headers: Vec::new(),
        },
        // Its body follows as it is produced (`send_streamed_answer`); the driver hands the
        // stream over as `Outbound::Stream`, so this is only its head.
        HttpResponse::Streamed { .. } => Response {
            status: 200,
            content_type: "application/vnd.apache.arrow.stream",
            body: Bytes::new(),
            headers: Vec::new(),
        },
        HttpResponse::Json(rows) => Response {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(rows),
            headers: Vec::new(),
        },
        HttpResponse::Done => Response::json(200, &json!({})),
        HttpResponse::Health => Response::text(200, "ok"),
        HttpResponse::Ready if shared.ready.load(Relaxed) => Response::text(200, "ok"),
        HttpResponse::Ready => Response::text(503, "not ready"),
        HttpResponse::Version => Response::json(
            200,
            &json!({"name": "duckwire", "version": env!("CARGO_PKG_VERSION"), "duckdb": shared.duckdb_version}),
        ),
        HttpResponse::Metrics => Response {
            content_type: crate::metrics::CONTENT_TYPE,
            ..Response::text(200, &shared.metrics.render())
        },
        HttpResponse::Preflight => Response::text(204, ""),
        HttpResponse::Error { status, message } => Response::error(status, &message),
    };
    if response.status == 426 {
        // RFC 6455 §4.2.2: say which version we speak.
        response
            .headers
            .push(("Sec-WebSocket-Version".into(), "13".into()));
    }
    if cors {
        response.headers.extend(cors_headers(origin));
    }
    response
}

fn cors_headers(origin: Option<&str>) -> Vec<(String, String)> {
    match origin {
        Some(origin) => vec![
            ("Access-Control-Allow-Origin".into(), origin.to_string()),
            ("Vary".into(), "Origin".into()),
            (
                "Access-Control-Allow-Headers".into(),
                "authorization, content-type".into(),
            ),
            (
                "Access-Control-Allow-Methods".into(),
                "GET, POST, OPTIONS".into(),
            ),
        ],
        None => Vec::new(),
    }
}

async fn upgrade(
    mut stream: Stream,
    rest: Vec<u8>,
    client: Client,
    head: RequestHead,
    shared: Arc<Shared>,
) {
    let peer = client.peer;
    // Where the client comes from is the core's check. A refused upgrade is served as the
    // HTTP request it also is: the core's `route` makes the same check and answers 403.
    let (host, origin) = (head.header("host"), head.header("origin"));
    if let Err(refusal) = shared
        .config
        .core
        .check_where_from(host, client.local_ip, origin)
    {
        tracing::warn!(%peer, host, origin, "WebSocket upgrade refused: {}", refusal.message());
        return Box::pin(serve_http(stream, rest, client, Ok(head), shared)).await;
    }
    // tungstenite's own handshake: it checks the method, HTTP/1.1, the Connection and
    // Upgrade headers, Sec-WebSocket-Version 13 and the key, and derives the accept key. The
    // core answers a refused one.
    let mut response = match handshake_response(&head) {
        Ok(response) => response,
        Err(refusal) => {
            let malformed = match refusal {
                HandshakeRefusal::Version => Malformed::UnsupportedWebSocketVersion,
                HandshakeRefusal::Invalid(reason) => {
                    tracing::debug!(%peer, "invalid WebSocket upgrade: {reason}");
                    Malformed::BadUpgrade
                }
            };
            return Box::pin(serve_http(stream, rest, client, Err(malformed), shared)).await;
        }
    };
    // permessage-deflate where --ws-compression applies to this peer and the client offers
    // it in a form we honour (the core's negotiation).
    let agreement = shared
        .config
        .ws_compression
        .applies_to(&peer)
        .then(|| {
            negotiate_deflate(
                head.headers
                    .iter()
                    .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
                    .map(|(_, value)| value.as_str()),
            )
        })
        .flatten();
    if let Some(agreement) = agreement {
        response.headers_mut().insert(
            "Sec-WebSocket-Extensions",
            HeaderValue::from_static(agreement.response_header()),
        );
    }
    let deflate = agreement.is_some();
    // Clients that offer subprotocols fail unless one is selected; take their first.
    if let Some(protocol) = head
        .header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
        .and_then(|p| HeaderValue::from_str(p.trim()).ok())
    {
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol);
    }
    let mut bytes = Vec::with_capacity(256);
    if write_handshake(&mut bytes, &response).is_err()
        || stream.write_all(&bytes).await.is_err()
        || stream.flush().await.is_err()
    {
        return;
    }
    let conn = ConnId(shared.next_conn.fetch_add(1, Relaxed));
    // Every path speaks the SQLRooms protocol except `/mosaic`: Mosaic's socketConnector.
    let dialect = if head.path == "/mosaic" {
        Dialect::MosaicSocket
    } else {
        Dialect::SqlRooms
    };
    let info = ConnectionInfo {
        dialect,
        peer: peer.to_string(),
        bearer_token: head.bearer_token(),
        url_token: head.query_param("token"),
        origin: head.header("origin").map(str::to_string),
        host: head.header("host").map(str::to_string),
        local_ip: client.local_ip,
    };
    tracing::debug!(%peer, conn = conn.0, path = head.path, "WebSocket connection opened");
    crate::ws::serve(
        stream,
        rest,
        conn,
        info,
        shared.config.core.limits.clone(),
        crate::ws::WsSettings {
            deflate,
            deflaters: shared.deflaters.clone(),
            metrics: shared.metrics.clone(),
        },
        shared.driver.clone(),
        &shared.sent_reports,
    )
    .await;
    tracing::debug!(%peer, conn = conn.0, "WebSocket connection closed");
}
