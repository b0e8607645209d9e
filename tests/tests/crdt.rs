//! PROTOCOL §6: CRDT rooms over the real server with real Loro updates.

use duckwire_tests::*;
use serde_json::json;

#[test]
fn without_sync_rooms_are_an_error() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    let reply = client.request(json!({"type":"crdt-join","roomId":"r"}));
    assert_eq!(
        reply["error"],
        "CRDT sync is disabled (start the server with --sync)"
    );
}

#[test]
fn join_gets_the_snapshot_and_updates_reach_the_other_members() {
    let server = ServerProcess::start(&["--sync"]);
    let mut a = server.connect();
    let mut b = server.connect();
    assert_eq!(join_room(&mut a, "r1"), json!({}));
    join_room(&mut b, "r1");
    let update = loro_update("k", 7);
    a.send_binary(update.clone());
    assert_eq!(
        a.recv_json(),
        json!({"type":"crdt-update-ack","roomId":"r1"})
    );
    assert_eq!(b.recv_binary(), update, "the same bytes, relayed");
    // A late joiner sees the state in its snapshot.
    let mut c = server.connect();
    assert_eq!(join_room(&mut c, "r1"), json!({"k": 7}));
    let (_, _, metrics) = get(&server.addr, "/metrics", "");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("duckwire_crdt_updates_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("duckwire_crdt_rooms 1"), "{metrics}");
}

#[test]
fn update_before_join_and_invalid_updates_are_errors() {
    let server = ServerProcess::start(&["--sync"]);
    let mut a = server.connect();
    a.send_binary(loro_update("k", 1));
    assert_eq!(
        a.recv_json(),
        json!({"type":"error","error":"join a room first"})
    );
    join_room(&mut a, "r");
    a.send_binary(loro_update("k", 1));
    a.recv_json();
    a.send_binary(b"definitely not loro".to_vec());
    assert!(a.recv_json()["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid CRDT update"));
    let mut b = server.connect();
    assert_eq!(
        join_room(&mut b, "r"),
        json!({"k": 1}),
        "the bad update left the room unchanged"
    );
}

#[test]
fn client_snapshot_seeds_an_empty_room_only() {
    let server = ServerProcess::start(&["--sync"]);
    let mut a = server.connect();
    join_room(&mut a, "seed");
    let seed = {
        let doc = loro::LoroDoc::new();
        doc.get_map("m").insert("from", "client").unwrap();
        doc.commit();
        doc.export(loro::ExportMode::Snapshot).unwrap()
    };
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(&seed);
    assert_eq!(
        a.request(json!({"type":"crdt-snapshot","roomId":"seed","data":data})),
        json!({"type":"crdt-snapshot-ack","roomId":"seed"})
    );
    assert_eq!(
        a.request(json!({"type":"crdt-snapshot","roomId":"seed","data":data})),
        json!({"type":"error","error":"room already has state; snapshot rejected"})
    );
    let mut b = server.connect();
    assert_eq!(join_room(&mut b, "seed"), json!({"from": "client"}));
}

#[test]
fn client_snapshots_are_off_by_default_for_file_databases() {
    let dir = temp_dir("crdt-snapshot-policy");
    let db = dir.join("db.duckdb");
    let server = ServerProcess::start(&["--sync", "--db-path", db.to_str().unwrap()]);
    let mut a = server.connect();
    join_room(&mut a, "r");
    let reply = a.request(json!({"type":"crdt-snapshot","roomId":"r","data":""}));
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .starts_with("client snapshots are disabled"));
}

#[test]
fn rooms_survive_a_restart_of_a_file_database() {
    let dir = temp_dir("crdt-restart");
    let db = dir.join("nested/app.duckdb");
    let args = ["--sync", "--db-path", db.to_str().unwrap()];
    let server = ServerProcess::start(&args);
    let mut a = server.connect();
    join_room(&mut a, "durable");
    a.send_binary(loro_update("saved", 1));
    assert_eq!(a.recv_json()["type"], "crdt-update-ack");
    // SIGTERM while the member is still connected: the shutdown flush must save the room.
    assert!(server.terminate().success());
    let server = ServerProcess::start(&args);
    let mut b = server.connect();
    assert_eq!(join_room(&mut b, "durable"), json!({"saved": 1}));
}

#[test]
fn an_empty_saved_room_is_unloaded_after_the_idle_delay_and_loads_again_on_join() {
    let dir = temp_dir("crdt-evict");
    let db = dir.join("app.duckdb");
    let server = ServerProcess::start(&[
        "--sync",
        "--db-path",
        db.to_str().unwrap(),
        "--room-idle-evict-ms",
        "200",
    ]);
    let mut a = server.connect();
    join_room(&mut a, "r");
    a.send_binary(loro_update("kept", 3));
    assert_eq!(a.recv_json()["type"], "crdt-update-ack");
    assert_eq!(server.metric("duckwire_crdt_rooms"), 1.0);
    a.close();
    until(
        "the room to leave memory after its last member left",
        || server.metric("duckwire_crdt_rooms") == 0.0,
    );
    let mut b = server.connect();
    assert_eq!(join_room(&mut b, "r"), json!({"kept": 3}));
    assert_eq!(server.metric("duckwire_crdt_rooms"), 1.0);
}

#[test]
fn meta_db_stores_rooms_in_an_attached_file() {
    let dir = temp_dir("crdt-meta-db");
    let db = dir.join("main.duckdb");
    let meta = dir.join("meta.duckdb");
    let args = [
        "--sync",
        "--db-path",
        db.to_str().unwrap(),
        "--meta-db",
        meta.to_str().unwrap(),
        "--meta-namespace",
        "meta",
    ];
    let server = ServerProcess::start(&args);
    let mut a = server.connect();
    join_room(&mut a, "r");
    a.send_binary(loro_update("x", 5));
    a.recv_json();
    a.close();
    assert!(server.terminate().success());
    assert!(meta.exists());
    let server = ServerProcess::start(&args);
    let mut b = server.connect();
    let reply =
        b.request(json!({"type":"json","sql":"select room_id from meta.sync_rooms","queryId":"m"}));
    assert_eq!(reply["data"], "[{\"room_id\":\"r\"}]");
}

#[test]
fn debounced_saves_survive_sigkill() {
    let dir = temp_dir("crdt-sigkill");
    let db = dir.join("app.duckdb");
    let args = [
        "--sync",
        "--db-path",
        db.to_str().unwrap(),
        "--save-debounce-ms",
        "50",
    ];
    let server = ServerProcess::start(&args);
    let mut a = server.connect();
    join_room(&mut a, "k");
    a.send_binary(loro_update("quick", 3));
    assert_eq!(a.recv_json()["type"], "crdt-update-ack");
    // Wait (bounded) until the debounce timer has saved the room, observed through the server.
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let reply = a.request(json!({"type":"json","sql":"select count(*) as n from __sqlrooms.sync_rooms where room_id = 'k'","queryId":"poll"}));
        if reply["data"] == "[{\"n\":1}]" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "room never saved");
    }
    drop(server); // SIGKILL: no shutdown flush.
    let server = ServerProcess::start(&args);
    let mut b = server.connect();
    assert_eq!(join_room(&mut b, "k"), json!({"quick": 3}));
}

/// Room saves write the meta tables outside the query workers. A worker that planned a read
/// of them before a save (and keeps that plan) must still see the save afterwards.
#[test]
fn reads_planned_before_a_room_save_see_the_save() {
    let server = ServerProcess::start(&["--sync", "--threads", "1", "--save-debounce-ms", "20"]);
    let mut a = server.connect();
    let saved = json!({"type":"json","sql":"select count(*) as n from __sqlrooms.sync_rooms where room_id = 'planned'","queryId":"q"});
    for _ in 0..3 {
        assert_eq!(a.request(saved.clone())["data"], "[{\"n\":0}]");
    }
    join_room(&mut a, "planned");
    a.send_binary(loro_update("x", 1));
    assert_eq!(a.recv_json()["type"], "crdt-update-ack");
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    while a.request(saved.clone())["data"] != "[{\"n\":1}]" {
        assert!(
            std::time::Instant::now() < deadline,
            "the saved room never became visible to a repeated read"
        );
    }
}

/// PROTOCOL §6: a change larger than `--max-change-bytes-checked-inline` is checked off the
/// thread that answers every connection; what its sender sent next is handled after it, so
/// acknowledgements and relays keep the order sent, and one Loro refuses is still an error.
#[test]
fn a_large_change_is_checked_off_the_thread_and_what_follows_it_keeps_its_order() {
    let server = ServerProcess::start(&["--sync", "--max-change-bytes-checked-inline", "4096"]);
    let (mut a, mut b) = (server.connect(), server.connect());
    join_room(&mut a, "big");
    join_room(&mut b, "big");
    let doc = loro::LoroDoc::new();
    doc.set_peer_id(5).unwrap();
    doc.get_text("t").insert(0, &"x".repeat(200_000)).unwrap();
    doc.commit();
    let large = doc.export(loro::ExportMode::all_updates()).unwrap();
    assert!(large.len() > 4096, "{}", large.len());
    let before_small = doc.oplog_vv();
    doc.get_map("m").insert("after", 1).unwrap();
    doc.commit();
    let small = doc
        .export(loro::ExportMode::updates(&before_small))
        .unwrap();
    assert!(small.len() <= 4096);
    a.send_binary(large.clone());
    a.send_binary(small.clone());
    for _ in 0..2 {
        assert_eq!(a.recv_json()["type"], "crdt-update-ack");
    }
    assert_eq!(b.recv_binary(), large);
    assert_eq!(b.recv_binary(), small);
    let mut corrupt = large.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x5a;
    a.send_binary(corrupt);
    let reply = a.recv_json();
    assert_eq!(reply["type"], "error", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("invalid CRDT update"),
        "{reply}"
    );
    // The room holds both accepted changes, nothing of the refused one.
    let mut late = server.connect();
    assert_eq!(join_room(&mut late, "big"), json!({"after": 1}));
}
