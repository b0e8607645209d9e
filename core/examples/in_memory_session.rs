// Drives a whole session through duckwire-core with an in-memory transport and a fake
// executor — auth, queries, cancel, pub/sub, CRDT — with no sockets and no DuckDB. This is
// the proof that the core can sit behind any transport.
//
// Run: `cargo run -p duckwire-core --example in_memory_session`

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use duckwire_core::{
    Config, ConnId, ConnectionInfo, Dialect, Effect, Frame, Gate, HttpRequest, HttpResponse,
    Millis, QueryHandle, QueryKind, QueryOutcome, Server, Verdict,
};
use serde_json::{json, Value};

/// A transport that keeps each connection's outgoing frames in memory.
#[derive(Default)]
struct MemoryTransport {
    inbox: BTreeMap<ConnId, VecDeque<Frame>>,
    closed: BTreeMap<ConnId, u16>,
    /// HTTP answers, in the order they were sent.
    responses: BTreeMap<ConnId, Vec<HttpResponse>>,
}

/// An "executor" that answers queries from a table of canned results and can be told to
/// leave a query running (so it can be cancelled).
#[derive(Default)]
struct FakeExecutor {
    running: Vec<(QueryHandle, QueryKind, String, Bytes, Gate)>,
    interrupted: Vec<QueryHandle>,
    stored_rooms: BTreeMap<String, Vec<u8>>,
}

/// The fake executor's stand-in for DuckDB's verdict.
fn is_read(sql: &str) -> bool {
    sql.to_lowercase().starts_with("select")
}

struct Session {
    server: Server,
    transport: MemoryTransport,
    executor: FakeExecutor,
    now: Millis,
}

impl Session {
    fn new(config: Config) -> Self {
        Session {
            server: Server::new(config, [9; 16]),
            transport: MemoryTransport::default(),
            executor: FakeExecutor::default(),
            now: Millis(0),
        }
    }

    fn pump(&mut self) {
        while let Some(effect) = self.server.poll_effect() {
            match effect {
                Effect::Send { conn, frame } => {
                    let len = frame.len();
                    self.transport
                        .inbox
                        .entry(conn)
                        .or_default()
                        .push_back(frame);
                    self.server.handle_sent(conn, len).unwrap();
                }
                // This executor answers whole and never streams; a driver whose executor does
                // writes the result's pieces as one message, then reports the window sent.
                Effect::SendStream { conn, window, .. } => {
                    self.server.handle_sent(conn, window).unwrap()
                }
                // Nor does it share one: a driver gives each reader the source's pieces.
                Effect::ShareStream { .. } => {}
                Effect::Close { conn, code, .. } => {
                    self.transport.closed.insert(conn, code);
                    self.server.handle_closed(conn, self.now).unwrap();
                }
                Effect::RunQuery(run) => {
                    // A real executor asks DuckDB; this one calls `select …` a read.
                    if run.gate == Gate::ClassifyFirst && is_read(&run.sql) {
                        self.server
                            .handle_query_classified(run.query, Verdict::Read, self.now)
                            .unwrap();
                    }
                    self.executor.running.push((
                        run.query,
                        run.kind,
                        run.sql,
                        run.arrow_header,
                        run.gate,
                    ))
                }
                Effect::Interrupt { query } => self.executor.interrupted.push(query),
                Effect::UploadTable(upload) => self
                    .server
                    .handle_upload_done(
                        upload.query,
                        duckwire_core::UploadOutcome::Written,
                        self.now,
                    )
                    .unwrap(),
                Effect::LoadSnapshot { room_id } => {
                    let stored = self.executor.stored_rooms.get(&room_id).cloned();
                    self.server
                        .handle_snapshot_loaded(&room_id, Ok(stored), self.now)
                        .unwrap();
                }
                // A real driver runs the job on another thread (its cost grows with the
                // room's history); here it runs on the spot.
                Effect::RunRoomDocJob {
                    room_id,
                    job_id,
                    job,
                } => self
                    .server
                    .handle_room_doc_worked(&room_id, job_id, job.run(), self.now)
                    .unwrap(),
                Effect::CheckRoomChange {
                    conn,
                    check_id,
                    change,
                } => {
                    let result = duckwire_core::check_room_change(&change);
                    self.server
                        .handle_room_change_checked(conn, check_id, result, self.now)
                        .unwrap()
                }
                Effect::PersistSnapshot {
                    room_id,
                    snapshot,
                    version,
                    ..
                } => {
                    self.executor.stored_rooms.insert(room_id.clone(), snapshot);
                    self.server
                        .handle_snapshot_persisted(&room_id, version, Ok(()), self.now)
                        .unwrap();
                }
                Effect::Respond { conn, response } => {
                    let len = response.len();
                    let answers = self.transport.responses.entry(conn).or_default();
                    answers.push(response);
                    self.server.handle_sent(conn, len).unwrap();
                }
                Effect::AppendRoomUpdate { room_id, seq, .. } => {
                    // A real driver writes the update durably first (see duckwire-smol's meta).
                    self.server
                        .handle_room_update_appended(&room_id, seq, Ok(()), self.now)
                        .unwrap();
                }
                // An in-memory transport has no socket to stop reading.
                Effect::PauseReading { .. } | Effect::ResumeReading { .. } => {}
                // A peer that is always there answers at once.
                Effect::Ping { conn } => self.server.handle_pong(conn, self.now).unwrap(),
                Effect::InvalidateCache => {}
                // One process, no replicas: the broker is never asked for (no replica_id).
                Effect::BrokerSubscribe { .. }
                | Effect::BrokerUnsubscribe { .. }
                | Effect::PublishNotify { .. }
                | Effect::RoomUnloaded { .. }
                | Effect::RepublishRoom { .. } => {}
            }
        }
    }

    /// Completes every running query the fake way: `select` → one row, anything else → no result set.
    fn run_executor(&mut self) {
        for (query, kind, sql, header, gate) in std::mem::take(&mut self.executor.running) {
            let outcome = if self.executor.interrupted.contains(&query) {
                QueryOutcome::Cancelled
            } else if gate != Gate::Any && !is_read(&sql) {
                QueryOutcome::NotARead("not a SELECT".into())
            } else if !is_read(&sql) {
                QueryOutcome::NoResultSet
            } else if kind == QueryKind::Arrow {
                QueryOutcome::Arrow([header.as_ref(), b"<arrow ipc>"].concat().into())
            } else {
                QueryOutcome::Json(r#"[{"x":1}]"#.into())
            };
            self.server
                .handle_query_done(query, outcome, false, self.now)
                .unwrap();
        }
        self.pump();
    }

    fn open(&mut self, conn: u64, info: ConnectionInfo) {
        self.server
            .handle_open(ConnId(conn), info, self.now)
            .unwrap();
        self.pump();
    }

    fn send(&mut self, conn: u64, message: Value) {
        self.now = Millis(self.now.0 + 1);
        let frame = Frame::Text(message.to_string());
        self.server
            .handle_frame(ConnId(conn), frame, self.now)
            .unwrap();
        self.pump();
    }

    fn http(&mut self, conn: u64, request: HttpRequest) {
        self.server
            .handle_http_request(ConnId(conn), request, self.now)
            .unwrap();
        self.pump();
    }

    fn send_binary(&mut self, conn: u64, bytes: Vec<u8>) {
        let frame = Frame::Binary(Bytes::from(bytes));
        self.server
            .handle_frame(ConnId(conn), frame, self.now)
            .unwrap();
        self.pump();
    }

    fn advance(&mut self, ms: u64) {
        self.now = Millis(self.now.0 + ms);
        // The core keeps its own timers: ask when, call back then.
        while let Some(at) = self.server.poll_timeout().filter(|at| *at <= self.now) {
            self.server.handle_timeout(at.max(self.now)).unwrap();
            self.pump();
        }
        self.pump();
    }

    /// Everything received on `conn` so far, text frames parsed, binary frames summarised.
    fn received(&mut self, conn: u64) -> Vec<Value> {
        let frames = self
            .transport
            .inbox
            .remove(&ConnId(conn))
            .unwrap_or_default();
        frames
            .into_iter()
            .map(|frame| match frame {
                Frame::Text(text) => serde_json::from_str(&text).unwrap(),
                Frame::Binary(bytes) => json!({"binary": bytes.len()}),
            })
            .collect()
    }
}

pub fn main() {
    let mut s = Session::new(Config {
        auth_token: Some("secret".into()),
        sync_enabled: true,
        allow_client_snapshots: true,
        ..Config::default()
    });

    // Auth: one connection authenticates by message, one by URL token.
    s.open(1, ConnectionInfo::default());
    s.open(
        2,
        ConnectionInfo {
            url_token: Some("secret".into()),
            ..Default::default()
        },
    );
    s.send(1, json!({"type":"json","sql":"select 1","queryId":"early"}));
    assert_eq!(s.received(1)[0]["error"], "unauthorized");
    s.send(1, json!({"type":"auth","token":"secret"}));
    assert_eq!(s.received(1), vec![json!({"type":"authAck"})]);

    // Queries, multiplexed by queryId.
    s.send(
        1,
        json!({"type":"json","sql":"select 1 as x","queryId":"q1"}),
    );
    s.send(
        1,
        json!({"type":"exec","sql":"create table t(x int)","queryId":7}),
    );
    s.run_executor();
    let replies = s.received(1);
    assert_eq!(
        replies[0],
        json!({"type":"json","queryId":"q1","data":"[{\"x\":1}]"})
    );
    assert_eq!(replies[1], json!({"type":"ok","queryId":7}));

    // Cancel.
    s.send(
        1,
        json!({"type":"arrow","sql":"select * from range(1e12)","queryId":"slow"}),
    );
    s.send(1, json!({"type":"cancel","queryId":"slow"}));
    s.run_executor();
    let replies = s.received(1);
    assert_eq!(
        replies[0],
        json!({"type":"cancelAck","queryId":"slow","cancelled":true})
    );
    assert_eq!(replies[1]["error"], "Query was cancelled");

    // Pub/sub.
    s.send(2, json!({"type":"subscribe","channel":"table:orders"}));
    s.send(
        1,
        json!({"type":"notify","channel":"table:orders","payload":{"op":"update"}}),
    );
    assert_eq!(
        s.received(2)[1],
        json!({"type":"notify","channel":"table:orders","payload":{"op":"update"}})
    );
    assert_eq!(
        s.received(1)[1],
        json!({"type":"notifyAck","channel":"table:orders"})
    );

    // CRDT: both join, one edits, the other receives the update; the room is saved.
    s.send(1, json!({"type":"crdt-join","roomId":"room-1"}));
    s.send(2, json!({"type":"crdt-join","roomId":"room-1"}));
    s.received(1);
    s.received(2);
    let doc = loro::LoroDoc::new();
    doc.get_map("cells").insert("a1", "hello").unwrap();
    doc.commit();
    let update = doc.export(loro::ExportMode::all_updates()).unwrap();
    s.send_binary(1, update.clone());
    assert_eq!(s.received(2), vec![json!({"binary": update.len()})]);
    assert_eq!(
        s.received(1),
        vec![json!({"type":"crdt-update-ack","roomId":"room-1"})]
    );
    s.advance(600);
    assert!(
        s.executor.stored_rooms.contains_key("room-1"),
        "saved after the debounce"
    );

    // HTTP (Mosaic REST) goes through the same core: auth per request, and pipelined
    // requests answered in request order even when the later query finishes first.
    let http = ConnectionInfo {
        dialect: Dialect::Http,
        ..Default::default()
    };
    s.open(3, http);
    let post = |sql: &str, token: Option<&str>| HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        bearer_token: token.map(str::to_string),
        body: Bytes::from(json!({"type":"json","sql":sql}).to_string()),
        ..Default::default()
    };
    s.http(3, post("select 1", None));
    s.http(3, post("select 2", Some("secret")));
    s.http(3, post("select 3", Some("secret")));
    s.executor.running.reverse(); // the later query finishes first
    s.run_executor();
    let answers = s.transport.responses.remove(&ConnId(3)).unwrap_or_default();
    assert_eq!(answers[0].status(), 401);
    assert_eq!(answers[1], HttpResponse::Json(r#"[{"x":1}]"#.into()));
    assert_eq!(answers.len(), 3);
    // A kept-alive connection left idle is closed by the core's own timer.
    s.advance(duckwire_core::DEFAULT_HTTP_IDLE_TIMEOUT_MS);
    assert!(s.transport.closed.contains_key(&ConnId(3)));

    println!("in-memory session: auth, queries, cancel, pub/sub, CRDT and HTTP all behaved");
}
