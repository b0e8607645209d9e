//! The ordered-dialects harness: Mosaic socket and HTTP connections sending queries (and
//! things that are refused), the executor finishing them in any order with any outcome or
//! starting to stream their results, identical persisted reads sharing one run (and one
//! stream), closes, time passing. After every step:
//! the k-th answer on a connection belongs to its k-th request (in-order replies), every
//! request is answered at most once, and nothing reaches a closed connection; at the end,
//! once every query finished, every request of an open connection was answered.

use std::collections::{BTreeMap, VecDeque};

use arbitrary::Unstructured;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{byte, Encode};
use duckwire_core::{
    Config, ConnId, ConnectionInfo, Dialect, Effect, Frame, HttpRequest, HttpResponse, Millis,
    QueryHandle, QueryOutcome, Server,
};

const CONNS: u8 = 3;
const MAX_OPS: usize = 300;

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `http`: an HTTP connection, else a Mosaic socket.
    Open {
        conn: u8,
        http: bool,
    },
    Close {
        conn: u8,
    },
    /// `what`: 0 arrow, 1 json, 2 exec, 3 a persisted read shared by every connection,
    /// 4 a message the dialect refuses, 5 a binary message (refused).
    Request {
        conn: u8,
        what: u8,
    },
    /// The executor reports on the `nth` running query: `outcome % 7` = result, failure,
    /// cancelled, no result set, DuckDB's verdict "a read" (it keeps running), "not a read"
    /// (not run: the core hands it back to its write barrier or refuses it), its result
    /// passed the stream threshold (its reply starts, it keeps running; once streaming, a
    /// result ends the stream whole).
    Finish {
        nth: u8,
        outcome: u8,
    },
    Tick {
        ms: u16,
    },
}

impl Op {
    pub fn read(u: &mut Unstructured<'_>) -> Op {
        let conn = |u: &mut Unstructured<'_>| byte(u) % CONNS;
        match byte(u) % 5 {
            0 => Op::Open {
                conn: conn(u),
                http: byte(u) % 2 == 1,
            },
            1 => Op::Close { conn: conn(u) },
            2 => Op::Request {
                conn: conn(u),
                what: byte(u) % 6,
            },
            3 => Op::Finish {
                nth: byte(u),
                outcome: byte(u) % 7,
            },
            _ => Op::Tick {
                ms: u16::from(byte(u)) * 40,
            },
        }
    }
}

impl Encode for Op {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Op::Open { conn, http } => out.extend([0, *conn, u8::from(*http)]),
            Op::Close { conn } => out.extend([1, *conn]),
            Op::Request { conn, what } => out.extend([2, *conn, *what]),
            Op::Finish { nth, outcome } => out.extend([3, *nth, *outcome]),
            Op::Tick { ms } => out.extend([4, (*ms / 40) as u8]),
        }
    }
}

pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        ops.push(Op::read(&mut u));
    }
    ops
}

/// One request a connection sent, and the answer it must get in its turn.
#[derive(Debug)]
struct Asked {
    /// The tag the answer must carry (a query's result names it), or `None` when any
    /// answer is right in its place (errors, `{}`).
    tag: Option<u64>,
}

struct Session {
    server: Server,
    now: u64,
    /// Open connections: their dialect and the requests not answered yet, in order.
    open: BTreeMap<u8, (bool, VecDeque<Asked>)>,
    /// Queries the executor runs: handle, and the tag its result carries.
    running: Vec<(QueryHandle, String)>,
    /// Queries whose reply is a stream that may start (the executor said so), with the tag
    /// their stream carries: the runs themselves, and the readers of a shared one.
    streaming: BTreeMap<QueryHandle, (u64, Option<ConnId>)>,
    /// The connection each query the executor was asked to run belongs to.
    conn_of: BTreeMap<QueryHandle, ConnId>,
    next_tag: u64,
}

/// A query's SQL carries its tag; the fake executor answers `[tag]`.
fn tag_of(sql: &str) -> Option<u64> {
    sql.strip_prefix("select ")?.split(' ').next()?.parse().ok()
}

impl Session {
    fn new() -> Self {
        Session {
            server: Server::new(Config::default(), [5; 16]),
            now: 0,
            open: BTreeMap::new(),
            running: Vec::new(),
            streaming: BTreeMap::new(),
            conn_of: BTreeMap::new(),
            next_tag: 1,
        }
    }

    fn checked(result: Result<(), duckwire_core::ServerError>) -> Result<(), String> {
        result.map_err(|e| format!("the machine failed: {e}"))
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let now = Millis(self.now);
        match *op {
            Op::Open { conn, http } => {
                if self.open.contains_key(&conn) {
                    return Ok(());
                }
                let dialect = if http {
                    Dialect::Http
                } else {
                    Dialect::MosaicSocket
                };
                let info = ConnectionInfo {
                    dialect,
                    ..ConnectionInfo::default()
                };
                Self::checked(self.server.handle_open(ConnId(conn.into()), info, now))?;
                self.open.insert(conn, (http, VecDeque::new()));
            }
            Op::Close { conn } => {
                if self.open.remove(&conn).is_some() {
                    Self::checked(self.server.handle_closed(ConnId(conn.into()), now))?;
                }
            }
            Op::Request { conn, what } => {
                let Some((http, _)) = self.open.get(&conn) else {
                    return Ok(());
                };
                let http = *http;
                let tag = self.next_tag;
                self.next_tag += 1;
                let (message, expect): (Value, Option<u64>) = match what {
                    0 => (
                        json!({"type":"arrow","sql":format!("select {tag}")}),
                        Some(tag),
                    ),
                    1 => (
                        json!({"type":"json","sql":format!("select {tag}")}),
                        Some(tag),
                    ),
                    2 => (json!({"type":"exec","sql":format!("select {tag}")}), None),
                    // Shared by every connection: the answer is the leader's tag.
                    3 => (
                        json!({"type":"json","sql":"select 0 shared","persist":true}),
                        Some(0),
                    ),
                    _ => (json!({"type":"subscribe","channel":"c"}), None),
                };
                self.open
                    .get_mut(&conn)
                    .expect("open")
                    .1
                    .push_back(Asked { tag: expect });
                let id = ConnId(conn.into());
                let result = if http {
                    let request = HttpRequest {
                        method: "POST".into(),
                        path: "/".into(),
                        body: Bytes::from(message.to_string()),
                        ..HttpRequest::default()
                    };
                    self.server.handle_http_request(id, request, now)
                } else if what == 5 {
                    self.server.handle_frame(
                        id,
                        Frame::Binary(Bytes::from_static(b"\x00\x01")),
                        now,
                    )
                } else {
                    self.server
                        .handle_frame(id, Frame::Text(message.to_string()), now)
                };
                Self::checked(result)?;
            }
            Op::Finish { nth, outcome } => {
                if self.running.is_empty() {
                    return Ok(());
                }
                let nth = usize::from(nth) % self.running.len();
                let (handle, sql) = self.running[nth].clone();
                let tag = tag_of(&sql).unwrap_or(0);
                if outcome % 7 == 6 {
                    if let std::collections::btree_map::Entry::Vacant(entry) =
                        self.streaming.entry(handle)
                    {
                        entry.insert((tag, None));
                        Self::checked(self.server.handle_query_streaming(handle, now))?;
                    }
                    return self.observe();
                }
                if outcome % 7 == 4 {
                    let handle = self.running[nth].0;
                    let verdict = duckwire_core::Verdict::Read;
                    Self::checked(self.server.handle_query_classified(handle, verdict, now))?;
                    return self.observe();
                }
                self.running.remove(nth);
                let outcome = match outcome % 7 {
                    0 if self.streaming.contains_key(&handle) => QueryOutcome::Streamed,
                    0 if sql.contains("arrow") => {
                        QueryOutcome::Arrow(Bytes::from(format!("[{tag}]")))
                    }
                    0 => QueryOutcome::Json(format!("[{tag}]")),
                    1 => QueryOutcome::Failed("Binder Error".into()),
                    2 => QueryOutcome::Cancelled,
                    5 => QueryOutcome::NotARead("INSERT".into()),
                    _ => QueryOutcome::NoResultSet,
                };
                Self::checked(self.server.handle_query_done(handle, outcome, false, now))?;
            }
            Op::Tick { ms } => {
                self.now += u64::from(ms);
                Self::checked(self.server.handle_timeout(Millis(self.now)))?;
            }
        }
        self.observe()
    }

    fn observe(&mut self) -> Result<(), String> {
        while let Some(effect) = self.server.poll_effect() {
            match effect {
                Effect::RunQuery(run) => {
                    // The fake executor tells Arrow from JSON by the SQL it gets back.
                    let sql = match run.kind {
                        duckwire_core::QueryKind::Arrow => format!("{} arrow", run.sql),
                        _ => run.sql,
                    };
                    self.conn_of.insert(run.query, run.conn);
                    self.running.push((run.query, sql));
                }
                Effect::Send { conn, frame } => {
                    let answer = match frame {
                        Frame::Text(text) => text,
                        Frame::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    };
                    let len = answer.len();
                    self.answered(conn, &answer)?;
                    Self::checked(self.server.handle_sent(conn, len))?;
                }
                Effect::SendStream {
                    conn,
                    query,
                    window,
                }
                | Effect::Respond {
                    conn,
                    response: HttpResponse::Streamed { query, window },
                } => {
                    let Some(&(tag, reader_conn)) = self.streaming.get(&query) else {
                        return Err(format!("a stream for {query:?}, which never began one"));
                    };
                    if reader_conn.is_some_and(|c| c != conn) {
                        return Err(format!("{query:?}'s stream reached {}", conn.0));
                    }
                    self.answered(conn, &format!("[{tag}]"))?;
                    Self::checked(self.server.handle_sent(conn, window))?;
                }
                Effect::Respond { conn, response } => {
                    let len = response.len();
                    let answer = match response {
                        HttpResponse::Arrow(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        HttpResponse::Json(rows) => rows,
                        other => format!("{other:?}"),
                    };
                    self.answered(conn, &answer)?;
                    Self::checked(self.server.handle_sent(conn, len))?;
                }
                Effect::ShareStream {
                    source, readers, ..
                } => {
                    let Some(&(tag, _)) = self.streaming.get(&source) else {
                        return Err(format!("{source:?} shared a stream it never began"));
                    };
                    if tag != 0 {
                        return Err(format!("a stream of request {tag} shared (not persisted)"));
                    }
                    // One reader per connection, the source's included: a second reply on a
                    // connection waits for the first, which the stream would wait for.
                    let mut conns: Vec<ConnId> =
                        self.conn_of.get(&source).copied().into_iter().collect();
                    for reader in readers {
                        if conns.contains(&reader.conn) {
                            return Err(format!(
                                "two readers of {source:?}'s stream on {}",
                                reader.conn.0
                            ));
                        }
                        conns.push(reader.conn);
                        self.streaming.insert(reader.query, (0, Some(reader.conn)));
                    }
                }
                Effect::Close { conn, .. } => {
                    let key = conn.0 as u8;
                    if self.open.remove(&key).is_some() {
                        Self::checked(self.server.handle_closed(conn, Millis(self.now)))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `answer` reached `conn`: it must be the answer to its oldest unanswered request.
    fn answered(&mut self, conn: ConnId, answer: &str) -> Result<(), String> {
        let Some((_, asked)) = self.open.get_mut(&(conn.0 as u8)) else {
            return Err(format!(
                "an answer reached closed connection {}: {answer}",
                conn.0
            ));
        };
        let Some(oldest) = asked.pop_front() else {
            return Err(format!(
                "an answer nobody asked for on {}: {answer}",
                conn.0
            ));
        };
        if let Some(tag) = oldest.tag {
            let is_result = answer.starts_with('[');
            // A result must be this request's own; a failure is fine in its place.
            if is_result && answer != format!("[{tag}]") && tag != 0 {
                return Err(format!(
                    "in-order replies broken on {}: expected the answer to request {tag}, got {answer}",
                    conn.0
                ));
            }
        }
        Ok(())
    }

    /// Finishes everything still running; then every open connection's requests were
    /// answered.
    fn finish(mut self) -> Result<(), String> {
        while let Some((handle, sql)) = self.running.pop() {
            let tag = tag_of(&sql).unwrap_or(0);
            let outcome = QueryOutcome::Json(format!("[{tag}]"));
            Self::checked(
                self.server
                    .handle_query_done(handle, outcome, false, Millis(self.now)),
            )?;
            self.observe()?;
        }
        for (conn, (_, asked)) in &self.open {
            if !asked.is_empty() {
                return Err(format!("{} requests of {conn} never answered", asked.len()));
            }
        }
        Ok(())
    }
}

/// Runs one input; `Err` names the broken invariant.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut session = Session::new();
    for op in decode_ops(data) {
        session.apply(&op)?;
    }
    session.finish()
}
