//! Rooms with a long history (PROTOCOL §6, §6a): thousands of page loads into one room, each
//! a new Loro peer that joins, imports the snapshot and the frames after it, edits once and
//! leaves, while a member stays joined without reading, a client goes offline with old state
//! and comes back with an edit made meanwhile, and a late joiner arrives at the end. Every
//! one of them converges on the room's state, on one server and across replicas through
//! Redis. Real binary, real sockets, real Loro. The member that stays reads nothing until the
//! end, so it answers no ping: the servers run without the idle timeout that would close it
//! (90 s, which a slow machine's run can pass).

use duckwire_tests::*;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};

/// A client of the room as `@sqlrooms/crdt`'s connector is one: a Loro document kept in step
/// with the room by the snapshot and every binary frame, and its own edits sent as the local
/// updates Loro hands it (`subscribeLocalUpdates`), queued while offline and sent after the
/// next join. (Never the whole history: a page load's first edit is one small change.)
struct Peer {
    client: Client,
    doc: loro::LoroDoc,
    /// Local updates not sent yet, in the order they were made.
    unsent: Arc<Mutex<Vec<Vec<u8>>>>,
    _local_updates: loro::Subscription,
}

impl Peer {
    fn new(server: &ServerProcess, peer_id: u64) -> Peer {
        let doc = loro::LoroDoc::new();
        doc.set_peer_id(peer_id).unwrap();
        let unsent = Arc::new(Mutex::new(Vec::new()));
        let queue = unsent.clone();
        let local_updates = doc.subscribe_local_update(Box::new(move |update| {
            queue.lock().unwrap().push(update.clone());
            true
        }));
        Peer {
            client: server.connect(),
            doc,
            unsent,
            _local_updates: local_updates,
        }
    }

    /// Joins `room` (on a new connection to `server` if given: a reconnect).
    fn join(&mut self, server: Option<&ServerProcess>, room: &str) {
        if let Some(server) = server {
            self.client = server.connect();
        }
        let reply = self
            .client
            .request(json!({"type":"crdt-join","roomId":room,"clientId":"c"}));
        assert_eq!(reply, json!({"type":"crdt-joined","roomId":room}));
        let snapshot = self.client.recv_json();
        assert_eq!(snapshot["type"], "crdt-snapshot");
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(snapshot["data"].as_str().unwrap())
            .unwrap();
        self.doc
            .import(&bytes)
            .expect("the room's snapshot imports");
    }

    /// Sets `key` and sends the change (after any made offline since the last sync); reads
    /// until each one's ack, importing the frames that come first.
    fn edit(&mut self, key: &str, value: i64) {
        self.doc.get_map("m").insert(key, value).unwrap();
        self.doc.commit();
        let updates = std::mem::take(&mut *self.unsent.lock().unwrap());
        assert!(!updates.is_empty(), "the edit of {key} made a local update");
        for update in updates {
            self.client.send_binary(update);
            self.read_until_ack(key);
        }
    }

    fn read_until_ack(&mut self, key: &str) {
        loop {
            match self.client.recv() {
                Received::Json(reply) if reply["type"] == "crdt-update-ack" => return,
                Received::Json(reply) => panic!("edit {key} answered {reply}"),
                Received::Binary(frame) => {
                    self.doc.import(&frame).expect("a frame Loro imports");
                }
                Received::Closed(code) => panic!("closed ({code:?}) before the ack of {key}"),
            }
        }
    }

    /// Reads the room's frames until the document's map is `expected` (a missing frame
    /// shows as the read timing out).
    fn converge_on(&mut self, expected: &Value, who: &str) {
        while map_of(&self.doc) != *expected {
            match self.client.recv() {
                Received::Binary(frame) => {
                    self.doc.import(&frame).expect("a frame Loro imports");
                }
                other => panic!("{who}: {other:?} while converging"),
            }
        }
    }
}

/// Page loads of the one-server scenario: 10 000 (about a minute on 2 vCPU), or
/// `DUCKWIRE_LONG_ROOM_PAGES` (each page load's snapshot grows with the room's peers, so a
/// run's time grows with their square: 50 000 take tens of minutes).
fn pages_of_one_server_run() -> u64 {
    std::env::var("DUCKWIRE_LONG_ROOM_PAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

fn map_of(doc: &loro::LoroDoc) -> Value {
    serde_json::to_value(doc.get_map("m").get_deep_value()).unwrap()
}

/// `pages` page loads into `room`, the n-th on `servers[n % len]`, each a new peer.
fn page_loads(
    servers: &[&ServerProcess],
    room: &str,
    pages: u64,
    expected: &mut Map<String, Value>,
) {
    for page in 0..pages {
        let mut peer = Peer::new(servers[page as usize % servers.len()], 10_000 + page);
        peer.join(None, room);
        // A few keys, each set again and again: the room's state stays small while its
        // history grows (a page load is a new peer), as a project's settings do.
        let key = format!("slot{}", page % 16);
        peer.edit(&key, page as i64);
        expected.insert(key, json!(page));
        peer.client.close();
    }
}

/// The scenario on `servers` (one, or replicas sharing the room through Redis); the room's
/// state at the end.
fn long_room_converges(servers: &[&ServerProcess], pages: u64) -> Value {
    let room = "long";
    let mut expected = Map::new();
    let mut member = Peer::new(servers[0], 1);
    member.join(None, room);
    member.edit("member", 1);
    expected.insert("member".into(), json!(1));
    let last = servers[servers.len() - 1];
    let mut returning = Peer::new(last, 2);
    returning.join(None, room);
    returning.edit("before-offline", 2);
    expected.insert("before-offline".into(), json!(2));
    // Offline, with its document as it was.
    std::mem::replace(&mut returning.client, last.connect()).close();

    page_loads(servers, room, pages, &mut expected);

    // Back with an edit made offline: the snapshot and frames merge into its old document.
    returning.doc.get_map("m").insert("offline", 3).unwrap();
    returning.doc.commit();
    expected.insert("offline".into(), json!(3));
    returning.join(Some(last), room);
    returning.edit("back", 4);
    expected.insert("back".into(), json!(4));
    let expected = Value::Object(expected);
    returning.converge_on(&expected, "the returning client");
    member.converge_on(&expected, "the member who stayed");
    let mut late = Peer::new(last, 3);
    late.join(None, room);
    late.converge_on(&expected, "a late joiner");
    expected
}

#[test]
fn a_room_of_ten_thousand_page_loads_converges_for_members_returning_clients_and_late_joiners() {
    let server = ServerProcess::start(&["--sync", "--idle-timeout-ms", "none"]);
    long_room_converges(&[&server], pages_of_one_server_run());
}

#[test]
fn a_long_room_converges_with_a_durable_log_and_after_a_restart() {
    let dir = temp_dir("long-room-durable");
    let db = dir.join("rooms.duckdb");
    let args = [
        "--sync",
        "--idle-timeout-ms",
        "none",
        "--db-path",
        db.to_str().unwrap(),
    ];
    let server = ServerProcess::start(&args);
    let state = long_room_converges(&[&server], 2_000);
    assert!(server.terminate().success());
    let again = ServerProcess::start(&args);
    let mut after_restart = Peer::new(&again, 4);
    after_restart.join(None, "long");
    after_restart.converge_on(&state, "a joiner after the restart");
}

#[test]
fn a_long_room_converges_across_replicas() {
    let Some(redis) = RedisServer::start("long-room-cluster") else {
        return;
    };
    let url = redis.url();
    let args = ["--redis-url", &url, "--sync", "--idle-timeout-ms", "none"];
    let (a, b) = (ServerProcess::start(&args), ServerProcess::start(&args));
    long_room_converges(&[&a, &b], 2_000);
}
