//! HTTP/1.1 framing on the WebSocket port: request heads (parsed with `httparse`),
//! `Content-Length` bodies, keep-alive, and writing answers. What a request means is the
//! core's decision (`duckwire_core::HttpRequest`); this module only moves bytes.

use crate::executor::stream::ResultStream;
use crate::pace::Pacing;
use crate::tls::Stream;
use crate::writer::StreamMeter;
use bytes::Bytes;
use duckwire_core::{Limits, Malformed};
use smol::io::{AsyncReadExt, AsyncWriteExt};

/// Longest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.method == "GET"
            && self
                .header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }

    pub fn bearer_token(&self) -> Option<String> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    }

    /// Every query-string parameter, percent-decoded, in order.
    pub fn query_params(&self) -> Vec<(String, String)> {
        let Some(query) = self.query.as_deref() else {
            return Vec::new();
        };
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            })
            .collect()
    }

    /// A query-string parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space), invalid UTF-8 replaced.
pub fn percent_decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[derive(Debug)]
pub enum HeadError {
    /// Not HTTP, or too large (the core answers [`Malformed::BadHead`]).
    Malformed,
    /// The peer went away (or never sent a byte of a next request).
    Io,
    /// The head did not arrive within `--http-head-timeout-ms` (the core answers
    /// [`Malformed::HeadTimedOut`]).
    TimedOut,
}

impl HeadError {
    /// What the core is told, or `None` when nobody is left to answer.
    pub fn malformed(self) -> Option<Malformed> {
        match self {
            HeadError::Malformed => Some(Malformed::BadHead),
            HeadError::TimedOut => Some(Malformed::HeadTimedOut),
            HeadError::Io => None,
        }
    }
}

impl RequestHead {
    /// Whether the connection stays open after the answer (RFC 9112 §9.3): HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let has = |token: &str| {
            self.header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        if self.version_minor == 0 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// Reads until the end of the next head. `buffer` holds bytes already read (a pipelined
/// request); on return it holds whatever followed the head.
pub async fn read_head(
    stream: &mut Stream,
    buffer: &mut Vec<u8>,
) -> Result<RequestHead, HeadError> {
    let mut chunk = [0u8; 4096];
    loop {
        if !buffer.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(buffer) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = head_of(&request);
                    buffer.drain(..len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD_BYTES => {}
                _ => return Err(HeadError::Malformed),
            }
        }
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(if buffer.is_empty() {
                HeadError::Io
            } else {
                HeadError::Malformed
            });
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn head_of(request: &httparse::Request<'_, '_>) -> RequestHead {
    let target = request.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    RequestHead {
        method: request.method.unwrap_or("").to_string(),
        path,
        query,
        version_minor: request.version.unwrap_or(1),
        headers: request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// `Bytes`, so an Arrow answer goes to the socket without a copy.
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
}

impl Response {
    pub fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::copy_from_slice(body.as_bytes()),
            headers: Vec::new(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
        }
    }

    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "error": message }))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The status line and headers of an answer, `framing` saying how its body is delimited.
fn response_head(response: &Response, framing: &str, keep_alive: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\n{framing}\r\nConnection: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        if keep_alive { "keep-alive" } else { "close" },
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Writes one answer; the connection stays open when `keep_alive`.
pub async fn write_response(
    stream: &mut Stream,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let length = format!("Content-Length: {}", response.body.len());
    let head = response_head(response, &length, keep_alive);
    if response.body.len() <= 16 * 1024 {
        // One write (one TCP segment) for the usual small answer.
        let mut whole = head.into_bytes();
        whole.extend_from_slice(&response.body);
        stream.write_all(&whole).await?;
    } else {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&response.body).await?;
    }
    stream.flush().await
}

/// Where the parts of a chunked body come from.
pub enum ChunkSource<'a> {
    /// Encoded parts, each with whether it is the last; the connection's pacing judges the
    /// link as they are taken (`crate::pace`).
    Parts {
        parts: async_channel::Receiver<std::io::Result<(Bytes, bool)>>,
        pacing: &'a Pacing,
        taken: usize,
    },
    /// A streamed result's pieces as they are, counted as they are written.
    Result(ResultStream, StreamMeter),
}

impl ChunkSource<'_> {
    async fn next(&mut self) -> Option<std::io::Result<(Bytes, bool)>> {
        match self {
            ChunkSource::Parts {
                parts,
                pacing,
                taken,
            } => {
                *taken += 1;
                let size = |part: &std::io::Result<(Bytes, bool)>| {
                    part.as_ref().map_or(0, |(part, _)| part.len())
                };
                pacing.next_part(parts, *taken == 1, size).await
            }
            ChunkSource::Result(result, meter) => {
                let (bytes, last) = result.next().await?.into_parts();
                meter.written(bytes.len());
                Some(Ok((bytes, last)))
            }
        }
    }
}

/// Writes an answer whose body arrives in parts (`parts` yields each, already encoded,
/// and whether it is the last) as a chunked body: the network carries one part while the
/// next is produced. `Ok(false)`: the parts ended before the last one, and the body is left
/// without its terminating chunk, so the client sees it cut short (the caller drops the
/// connection).
pub async fn write_chunked_response(
    stream: &mut Stream,
    response: &Response,
    keep_alive: bool,
    mut parts: ChunkSource<'_>,
) -> std::io::Result<bool> {
    let head = response_head(response, "Transfer-Encoding: chunked", keep_alive);
    stream.write_all(head.as_bytes()).await?;
    loop {
        let Some(part) = parts.next().await else {
            stream.flush().await?;
            return Ok(false);
        };
        let (part, last) = part?;
        // An empty chunk would end the body.
        if !part.is_empty() {
            stream
                .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .await?;
            stream.write_all(&part).await?;
            stream.write_all(b"\r\n").await?;
        }
        if last {
            break;
        }
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await?;
    Ok(true)
}

/// Reads a `Content-Length` body: what `buffer` already holds first, the rest from the
/// socket; bytes after the body (a pipelined request) stay in `buffer`.
pub async fn read_body(
    stream: &mut Stream,
    head: &RequestHead,
    buffer: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Bytes, Malformed> {
    let length: usize = match head.header("content-length") {
        None if head.method == "POST" => return Err(Malformed::LengthRequired),
        None => 0,
        Some(value) => value
            .trim()
            .parse()
            .map_err(|_| Malformed::BadContentLength)?,
    };
    if head.header("transfer-encoding").is_some() {
        return Err(Malformed::ChunkedBody);
    }
    limits
        .check_frame(length)
        .map_err(|_| Malformed::BodyTooLarge)?;
    let mut chunk = [0u8; 16 * 1024];
    while buffer.len() < length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Malformed::BodyEndedEarly)?;
        if n == 0 {
            return Err(Malformed::BodyEndedEarly);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let rest = buffer.split_off(length);
    Ok(Bytes::from(std::mem::replace(buffer, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2F"), "a b c/");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%aé"), "%aé");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn query_params_and_bearer() {
        let head = RequestHead {
            method: "GET".into(),
            path: "/".into(),
            query: Some("roomId=r1&token=a%2Bb".into()),
            version_minor: 1,
            headers: vec![("Authorization".into(), "Bearer tok".into())],
        };
        assert_eq!(head.query_param("token").as_deref(), Some("a+b"));
        assert_eq!(head.query_param("roomId").as_deref(), Some("r1"));
        assert_eq!(head.bearer_token().as_deref(), Some("tok"));
    }
}
