//! The HTTP door: every HTTP request (Mosaic REST `POST /`, and the small routes) is core
//! input, like a WebSocket frame, so validation, auth, the origin policy, caps, the query
//! lifecycle, cache invalidation and metrics are decided in one place for every door.
//!
//! An HTTP connection is a connection of the [`Dialect::Http`] dialect: requests carry
//! their own credentials (no connection-level auth), and answers leave in the order the
//! requests came (HTTP/1.1 pipelining), whatever order their queries finish in. A kept-alive
//! connection with nothing in flight is closed after `http_idle_timeout_ms`.

use bytes::Bytes;

use crate::auth::Rights;
use crate::codec::{decode_client_frame, ClientMessage, Frame, QueryKind};
use crate::conn::Conn;
use crate::effect::{Effect, QueryOutcome};
use crate::ids::{ConnId, Millis, QueryHandle, QueryId};
use crate::queries::ReadsOnly;
use crate::server::{close_code, Server};
use crate::timers::TimerKey;
use crate::ProtocolError;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// The SQLRooms WebSocket protocol: queries multiplexed by `queryId`.
    #[default]
    SqlRooms,
    /// HTTP/1.1: requests answered in order, each authenticated by its own headers.
    Http,
    /// Mosaic's WebSocket protocol (`socketConnector`, path `/mosaic`): no ids, answers in
    /// the order the messages came (see `mosaic`).
    MosaicSocket,
}

/// One HTTP request, as the transport parsed it (framing is the transport's business).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// Token from `Authorization: Bearer …`.
    pub bearer_token: Option<String>,
    /// Token from the `token=` query parameter.
    pub url_token: Option<String>,
    /// The `Origin` header, when the client is a browser.
    pub origin: Option<String>,
    /// The `Host` header.
    pub host: Option<String>,
    /// The address the connection reached the server at (the socket's local address).
    pub local_ip: Option<core::net::IpAddr>,
    /// Query-string parameters, percent-decoded, in order.
    pub params: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The query a `GET /` carries: Mosaic's Python server sends `?query=<JSON request>`,
    /// its Rust server `?type=T&sql=S`.
    fn query_in_url(&self) -> Option<String> {
        if let Some(query) = self.param("query") {
            return Some(query.to_string());
        }
        let (kind, sql) = (self.param("type")?, self.param("sql")?);
        Some(serde_json::json!({ "type": kind, "sql": sql }).to_string())
    }
}

/// How the core answers an HTTP request. The transport renders it (status line, headers,
/// CORS); the query answers are Mosaic's: bare Arrow IPC, a JSON array of rows, `{}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpResponse {
    /// An `arrow` query's IPC stream (`application/vnd.apache.arrow.stream`).
    Arrow(Bytes),
    /// A `json` query's rows as a JSON array.
    Json(String),
    /// An `arrow` query's IPC stream, sent as the executor produces it (PROTOCOL §3b): a
    /// chunked body, or on a Mosaic socket one fragmented message (`Effect::SendStream`).
    /// `window` bytes are counted as queued until the writer reports them sent.
    Streamed { query: QueryHandle, window: usize },
    /// An `exec` (or a statement without a result set) finished: `{}`.
    Done,
    /// `GET /healthz`: the process is up.
    Health,
    /// `GET /readyz`: the transport knows whether DuckDB and meta storage are ready.
    Ready,
    /// `GET /version`: name, version and DuckDB version, filled in by the transport.
    Version,
    /// `GET /metrics`: the Prometheus text, rendered by the transport.
    Metrics,
    /// `OPTIONS`: a CORS preflight, `204`.
    Preflight,
    /// `{"error": message}` with this status.
    Error { status: u16, message: String },
}

impl HttpResponse {
    pub fn status(&self) -> u16 {
        match self {
            HttpResponse::Preflight => 204,
            HttpResponse::Error { status, .. } => *status,
            _ => 200,
        }
    }

    /// Bytes the core can see (query payloads and error texts), for outbound accounting.
    pub fn len(&self) -> usize {
        match self {
            HttpResponse::Arrow(bytes) => bytes.len(),
            HttpResponse::Streamed { window, .. } => *window,
            HttpResponse::Json(text) => text.len(),
            HttpResponse::Error { message, .. } => message.len(),
            _ => 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Browsers may read it cross-origin (CORS headers), unless the origin was refused.
    pub fn allows_cors(&self) -> bool {
        !matches!(self, HttpResponse::Error { status: 403, .. })
    }

    pub(crate) fn error(status: u16, error: impl ToString) -> Self {
        HttpResponse::Error {
            status,
            message: error.to_string(),
        }
    }

    /// The HTTP status a refused request gets for this protocol error (on a Mosaic socket
    /// only the message is sent).
    pub(crate) fn refusal(error: ProtocolError) -> Self {
        let status = match &error {
            ProtocolError::Unauthorized => 401,
            ProtocolError::CapExceeded {
                cap: "max_frame_bytes",
                ..
            } => 413,
            ProtocolError::CapExceeded { .. } => 429,
            ProtocolError::ShuttingDown | ProtocolError::Cancelled => 503,
            ProtocolError::ReadOnly | ProtocolError::ReadTokenWrite(_) => 403,
            ProtocolError::WriteOverGet(_) => 405,
            ProtocolError::QueryTimeout(_) => 504,
            _ => 400,
        };
        HttpResponse::error(status, error)
    }
}

/// The message for an origin the policy refuses (HTTP 403, WebSocket close 1008).
pub const ORIGIN_NOT_ALLOWED: &str = "origin not allowed";

/// The message for a `Host` the policy refuses (HTTP 403, WebSocket close 1008): a name that
/// is not loopback, not the address the server was reached at and not listed.
pub const HOST_NOT_ALLOWED: &str =
    "host not allowed: start the server with --allowed-hosts <name> to serve this name (DNS rebinding protection)";

/// Where an answer goes on an ordered connection.
pub(crate) type Slot = u64;

impl Server {
    pub(crate) fn http_request(&mut self, conn: ConnId, request: HttpRequest, now: Millis) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.is_open() || c.dialect() != Dialect::Http {
            return;
        }
        let slot = c.reserve_answer_slot();
        self.budget.arriving(request.body.len());
        self.timers.cancel(&TimerKey::HttpIdle(conn));
        if let Some(response) = self.route(conn, slot, request, now) {
            self.answer(conn, slot, response, now);
        }
    }

    /// Decides a request; `None` when a query now runs and answers later.
    fn route(
        &mut self,
        conn: ConnId,
        slot: Slot,
        request: HttpRequest,
        now: Millis,
    ) -> Option<HttpResponse> {
        // Health probes reveal nothing and come with whatever `Host` a load balancer sends.
        let probe = matches!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/healthz" | "/readyz")
        );
        let host = request.host.as_deref().filter(|_| !probe);
        let origin = request.origin.as_deref();
        if let Err(refusal) = self.config.check_where_from(host, request.local_ip, origin) {
            return Some(HttpResponse::error(403, refusal.message()));
        }
        let url_query = match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/healthz") => return Some(HttpResponse::Health),
            ("GET", "/readyz") => return Some(HttpResponse::Ready),
            ("OPTIONS", "/") => return Some(HttpResponse::Preflight),
            ("GET", "/version" | "/metrics") | ("POST", "/") => None,
            ("GET", "/") => match request.query_in_url() {
                Some(query) => Some(query),
                None => return Some(HttpResponse::error(404, "not found")),
            },
            _ => return Some(HttpResponse::error(404, "not found")),
        };
        let (bearer, url) = (
            request.bearer_token.as_deref(),
            request.url_token.as_deref(),
        );
        let Some(rights) = self.config.rights_of_credentials(bearer, url) else {
            return Some(HttpResponse::refusal(ProtocolError::Unauthorized));
        };
        let credential = (rights == Rights::ReadOnly).then_some(ReadsOnly::ReadToken);
        match (request.path.as_str(), url_query) {
            ("/version", _) => Some(HttpResponse::Version),
            ("/metrics", _) => Some(HttpResponse::Metrics),
            (_, Some(query)) => {
                // Any page can make a browser send a GET (`<img src>`), without CORS: only a
                // request that shows it comes from an allowed page (Origin) or a client holding
                // a token (a header no page can add) may write.
                let unproven = request.origin.is_none() && request.bearer_token.is_none();
                let door = credential.or(unproven.then_some(ReadsOnly::UnprovenGet));
                self.rest_query(conn, slot, Bytes::from(query), door, now)
            }
            (_, None) => self.rest_query(conn, slot, request.body, credential, now),
        }
    }

    /// Mosaic REST: the body is a query message, decoded exactly as over WebSocket.
    fn rest_query(
        &mut self,
        conn: ConnId,
        slot: Slot,
        body: Bytes,
        door: Option<ReadsOnly>,
        now: Millis,
    ) -> Option<HttpResponse> {
        if let Some(limit) = self.config.limits.max_frame_bytes {
            if body.len() > limit {
                return Some(HttpResponse::refusal(ProtocolError::CapExceeded {
                    cap: "max_frame_bytes",
                    limit,
                }));
            }
        }
        let text = match String::from_utf8(body.to_vec()) {
            Ok(text) => text,
            Err(_) => {
                let error = ProtocolError::InvalidJson("body is not UTF-8".into());
                return Some(HttpResponse::refusal(error));
            }
        };
        let message = match decode_client_frame(&Frame::Text(text), &self.config.limits) {
            Ok(message) => message,
            Err(e) => return Some(HttpResponse::refusal(e.error)),
        };
        let ClientMessage::Query {
            kind, sql, persist, ..
        } = message
        else {
            return Some(HttpResponse::refusal(ProtocolError::WebSocketOnly(
                message.type_name(),
            )));
        };
        // The id is internal (replies are matched by order); it only has to be unique.
        let query_id = QueryId::Num(slot.to_string());
        self.start_query_answered_in_order(conn, kind, sql, query_id, persist, slot, door, now)
            .err()
            .map(HttpResponse::refusal)
    }

    /// A query of an ordered connection ended: its answer takes its slot.
    pub(crate) fn answer_query(
        &mut self,
        conn: ConnId,
        slot: Slot,
        kind: QueryKind,
        outcome: QueryOutcome,
        now: Millis,
    ) {
        let response = match outcome {
            QueryOutcome::Failed(message) => HttpResponse::error(500, message),
            // `deliver` answers these as refusals before they get here.
            QueryOutcome::NotARead(_) => HttpResponse::error(500, "internal error: not run"),
            QueryOutcome::Cancelled => HttpResponse::refusal(ProtocolError::Cancelled),
            _ if kind == QueryKind::Exec => HttpResponse::Done,
            QueryOutcome::NoResultSet => HttpResponse::Done,
            QueryOutcome::Arrow(ipc) => HttpResponse::Arrow(ipc),
            QueryOutcome::Json(rows) => HttpResponse::Json(rows),
            // Ordered dialects ask for bare rows; a framed reply here is an executor bug. (A
            // stream's end never gets here: `query_done` ends it as begun or interrupted.)
            QueryOutcome::JsonReply(_) | QueryOutcome::Streamed => {
                HttpResponse::error(500, "internal error: unexpected reply shape")
            }
        };
        self.answer(conn, slot, response, now);
    }

    /// Fills `slot` and sends every answer whose turn has come.
    pub(crate) fn answer(&mut self, conn: ConnId, slot: Slot, response: HttpResponse, now: Millis) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.fill_answer(slot, response);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(response) = c.next_answer() else {
                break;
            };
            if c.dialect() == Dialect::MosaicSocket {
                match response {
                    HttpResponse::Streamed { query, window } => {
                        self.send_stream(conn, query, window, now)
                    }
                    response => self.send_frame(conn, response.into_mosaic_frame(), now),
                }
                continue;
            }
            if !self.account_outbound(conn, response.len(), now) {
                return;
            }
            self.push(Effect::Respond { conn, response });
        }
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.dialect() == Dialect::Http)
        {
            self.arm_http_idle(conn, now);
        }
    }

    /// A kept-alive connection with nothing asked and nothing running starts its idle clock.
    pub(crate) fn arm_http_idle(&mut self, conn: ConnId, now: Millis) {
        let Some(timeout) = self.config.http_idle_timeout_ms else {
            return;
        };
        if self.is_http_idle(conn) {
            self.timers.set(TimerKey::HttpIdle(conn), now.plus(timeout));
        }
    }

    pub(crate) fn http_idle_due(&mut self, conn: ConnId, now: Millis) {
        if self.is_http_idle(conn) {
            self.close(conn, close_code::GOING_AWAY, "idle timeout", now);
        }
    }

    /// Open, nothing asked that is unanswered, nothing running.
    fn is_http_idle(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(Conn::is_idle)
    }
}
