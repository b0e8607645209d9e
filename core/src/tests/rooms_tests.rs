//! CRDT rooms (§6): load, join, updates, seeding, persistence timers, eviction.

use serde_json::json;

use super::harness::{loro_update, only_json, sent_binary, sent_json, snapshot_value, Harness};
use crate::{Config, ConnId, Effect, Millis};

pub(super) fn sync_config() -> Config {
    Config {
        sync_enabled: true,
        allow_client_snapshots: true,
        ..Config::default()
    }
}

/// Opens `conns`, joins them all to room "r", and completes the (empty) load.
pub(super) fn joined(conns: &[u64]) -> Harness {
    joined_with(sync_config(), conns)
}

/// The same with `config`.
pub(super) fn joined_with(config: Config, conns: &[u64]) -> Harness {
    let mut h = Harness::new(config);
    for conn in conns {
        h.open(*conn);
        h.text(*conn, json!({"type":"crdt-join","roomId":"r"}));
    }
    h.server
        .handle_snapshot_loaded("r", Ok(None), h.now())
        .unwrap();
    h.drain();
    h
}

fn persist_effect(effects: &[Effect]) -> Option<(Vec<u8>, u64)> {
    effects.iter().find_map(|e| match e {
        Effect::PersistSnapshot {
            snapshot, version, ..
        } => Some((snapshot.clone(), *version)),
        _ => None,
    })
}

#[test]
fn sync_disabled_answers_an_error() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let reply = only_json(&h.text(1, json!({"type":"crdt-join","roomId":"r"})), 1);
    assert_eq!(reply["type"], json!("error"));
    assert!(reply["error"].as_str().unwrap().contains("--sync"));
}

#[test]
fn first_join_loads_then_replies_joined_and_snapshot() {
    let mut h = Harness::new(sync_config());
    h.open(1);
    let effects = h.text(1, json!({"type":"crdt-join","roomId":"r","clientId":"c"}));
    assert_eq!(
        effects,
        vec![Effect::LoadSnapshot {
            room_id: "r".into()
        }]
    );
    let stored = {
        let doc = loro::LoroDoc::new();
        doc.get_map("m").insert("k", 1).unwrap();
        doc.commit();
        doc.export(loro::ExportMode::Snapshot).unwrap()
    };
    h.server
        .handle_snapshot_loaded("r", Ok(Some(stored.clone())), h.now())
        .unwrap();
    let replies = sent_json(&h.drain(), 1);
    assert_eq!(replies[0], json!({"type":"crdt-joined","roomId":"r"}));
    assert_eq!(replies[1]["type"], json!("crdt-snapshot"));
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(replies[1]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(snapshot_value(&data), snapshot_value(&stored));
}

#[test]
fn a_failed_or_corrupt_load_refuses_the_join() {
    let mut h = Harness::new(sync_config());
    h.open(1);
    h.text(1, json!({"type":"crdt-join","roomId":"r"}));
    h.server
        .handle_snapshot_loaded("r", Ok(Some(b"garbage".to_vec())), h.now())
        .unwrap();
    let reply = only_json(&h.drain(), 1);
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .starts_with("failed to load room"));
    assert_eq!(h.server.room_count(), 0);
}

#[test]
fn update_before_join_is_an_error() {
    let mut h = Harness::new(sync_config());
    h.open(1);
    assert_eq!(
        only_json(&h.binary(1, loro_update(1, "k", 1)), 1),
        json!({"type":"error","error":"join a room first"})
    );
}

#[test]
fn update_is_imported_relayed_to_others_and_acked() {
    let mut h = joined(&[1, 2, 3]);
    let update = loro_update(7, "k", 1);
    let effects = h.binary(1, update.clone());
    assert!(
        sent_binary(&effects, 1).is_empty(),
        "not echoed to the sender"
    );
    assert_eq!(sent_binary(&effects, 2), vec![update.clone()]);
    assert_eq!(sent_binary(&effects, 3), vec![update.clone()]);
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"crdt-update-ack","roomId":"r"})
    );
    let state = snapshot_value(&h.server.room_snapshot("r").unwrap());
    assert_eq!(state, snapshot_value(&update));
}

#[test]
fn a_rejected_update_leaves_the_room_unchanged() {
    let mut h = joined(&[1, 2]);
    h.binary(1, loro_update(7, "k", 1));
    let before = h.server.room_snapshot("r").unwrap();
    let mut corrupt = loro_update(8, "k", 2);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    corrupt[20] ^= 0xff;
    for bad in [corrupt, b"junk".to_vec(), Vec::new()] {
        let effects = h.binary(1, bad);
        let reply = only_json(&effects, 1);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid CRDT update"),
            "{reply}"
        );
        assert!(sent_binary(&effects, 2).is_empty());
    }
    assert_eq!(
        snapshot_value(&h.server.room_snapshot("r").unwrap()),
        snapshot_value(&before)
    );
}

#[test]
fn client_snapshot_seeds_only_an_empty_room() {
    let mut h = joined(&[1, 2]);
    let seed = loro_update(9, "seed", 1);
    let effects = h.text(
        1,
        json!({"type":"crdt-snapshot","roomId":"r","data":b64(&seed)}),
    );
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"crdt-snapshot-ack","roomId":"r"})
    );
    assert_eq!(sent_binary(&effects, 2), vec![seed.clone()]);
    let effects = h.text(
        2,
        json!({"type":"crdt-snapshot","roomId":"r","data":b64(&seed)}),
    );
    assert_eq!(
        only_json(&effects, 2),
        json!({"type":"error","error":"room already has state; snapshot rejected"})
    );
    let effects = h.text(
        2,
        json!({"type":"crdt-snapshot","roomId":"other","data":b64(&seed)}),
    );
    assert_eq!(
        only_json(&effects, 2)["error"],
        json!("roomId does not match the joined room")
    );
}

/// Fuzzing finding (crdt target, fuzz/regressions/crdt/seed-replaced-accepted-update): a
/// room whose accepted updates were all still pending (waiting for a missing dependency)
/// counted as empty, and a client snapshot then *replaced* its document, silently dropping
/// updates it had acknowledged. Seeding now merges into the room.
#[test]
fn a_client_snapshot_keeps_updates_the_room_already_accepted() {
    let mut h = joined(&[1, 2]);
    let author = loro::LoroDoc::new();
    author.set_peer_id(7).unwrap();
    author.get_map("m").insert("first", 1).unwrap();
    author.commit();
    let after_first = author.oplog_vv();
    author.get_map("m").insert("second", 2).unwrap();
    author.commit();
    let second_only = author
        .export(loro::ExportMode::updates(&after_first))
        .unwrap();
    // The second change alone depends on the first: Loro keeps it pending.
    let ack = only_json(&h.binary(1, second_only), 1);
    assert_eq!(ack["type"], json!("crdt-update-ack"));

    let seed = loro::LoroDoc::new();
    seed.set_peer_id(7).unwrap();
    seed.get_map("m").insert("first", 1).unwrap();
    seed.commit();
    let seed = seed.export(loro::ExportMode::Snapshot).unwrap();
    let reply = only_json(
        &h.text(
            2,
            json!({"type":"crdt-snapshot","roomId":"r","data":b64(&seed)}),
        ),
        2,
    );
    assert_eq!(reply["type"], json!("crdt-snapshot-ack"));
    let room = snapshot_value(&h.server.room_snapshot("r").unwrap());
    assert_eq!(
        room,
        author.get_deep_value(),
        "both changes are in the room"
    );
}

/// From a fuzzing run (state_machine, fuzz/regressions/state_machine/crash-81ca…): when the
/// ack would push the sender past its outbound cap, the update is still part of the room
/// and reaches the other members; the sender is closed with 1008 instead of being acked.
#[test]
fn an_update_whose_ack_exceeds_the_outbound_cap_is_kept_and_the_sender_closed() {
    // Member 1 keeps its join replies unsent; the cap leaves room for 10 more bytes, less
    // than an ack. Member 2 has written everything.
    let unsent_after_join = {
        let mut probe = Harness::new(sync_config());
        probe.open(1);
        let mut effects = probe.text(1, json!({"type":"crdt-join","roomId":"r"}));
        probe
            .server
            .handle_snapshot_loaded("r", Ok(None), probe.now())
            .unwrap();
        effects.extend(probe.drain());
        effects
            .iter()
            .map(|e| match e {
                Effect::Send { frame, .. } => frame.len(),
                _ => 0,
            })
            .sum::<usize>()
    };
    let mut h = Harness::new(Config {
        limits: crate::Limits {
            max_outbound_bytes_per_conn: Some(unsent_after_join + 10),
            ..crate::Limits::default()
        },
        ..sync_config()
    });
    for conn in [1, 2] {
        h.open(conn);
        h.text(conn, json!({"type":"crdt-join","roomId":"r"}));
    }
    h.server
        .handle_snapshot_loaded("r", Ok(None), h.now())
        .unwrap();
    h.drain();
    h.server.handle_sent(ConnId(2), unsent_after_join).unwrap();
    let update = loro_update(5, "k", 1);
    let effects = h.binary(1, update.clone());
    assert!(sent_json(&effects, 1).is_empty(), "no ack past the cap");
    assert_eq!(
        sent_binary(&effects, 2),
        vec![bytes::Bytes::from(update.clone())]
    );
    assert_eq!(crate::tests::harness::closes(&effects), vec![(1, 1008)]);
    let room = snapshot_value(&h.server.room_snapshot("r").unwrap());
    assert_eq!(room, snapshot_value(&update));
}

#[test]
fn client_snapshots_can_be_disabled() {
    let mut h = Harness::new(Config {
        allow_client_snapshots: false,
        ..sync_config()
    });
    h.open(1);
    h.text(1, json!({"type":"crdt-join","roomId":"r"}));
    h.server
        .handle_snapshot_loaded("r", Ok(None), h.now())
        .unwrap();
    h.drain();
    let effects = h.text(
        1,
        json!({"type":"crdt-snapshot","roomId":"r","data":b64(&loro_update(1, "k", 1))}),
    );
    assert!(only_json(&effects, 1)["error"]
        .as_str()
        .unwrap()
        .starts_with("client snapshots are disabled"));
}

#[test]
fn a_snapshot_sent_while_the_room_loads_is_applied_after_the_load() {
    let mut h = Harness::new(sync_config());
    h.open(1);
    h.text(1, json!({"type":"crdt-join","roomId":"r"}));
    let seed = loro_update(9, "k", 1);
    assert!(h
        .text(
            1,
            json!({"type":"crdt-snapshot","roomId":"r","data":b64(&seed)})
        )
        .is_empty());
    h.server
        .handle_snapshot_loaded("r", Ok(None), h.now())
        .unwrap();
    let types: Vec<_> = sent_json(&h.drain(), 1)
        .into_iter()
        .map(|m| m["type"].clone())
        .collect();
    assert_eq!(
        types,
        vec![
            json!("crdt-joined"),
            json!("crdt-snapshot"),
            json!("crdt-snapshot-ack")
        ]
    );
}

#[test]
fn changes_are_saved_after_the_debounce() {
    let mut h = joined(&[1]);
    h.binary(1, loro_update(1, "k", 1));
    // The change's import, due at once (the driver runs it after sending the replies).
    assert_eq!(h.server.poll_timeout(), Some(h.now()));
    h.server.handle_timeout(h.now()).unwrap();
    assert_eq!(h.server.poll_timeout(), Some(Millis(h.now + 500)));
    // An early call does nothing.
    h.server.handle_timeout(h.now()).unwrap();
    assert!(persist_effect(&h.drain()).is_none());
    h.now += 500;
    h.server.handle_timeout(h.now()).unwrap();
    let (snapshot, version) = persist_effect(&h.drain()).expect("saved");
    assert_eq!(
        snapshot_value(&snapshot),
        snapshot_value(&loro_update(1, "k", 1))
    );
    h.server
        .handle_snapshot_persisted("r", version, Ok(()), h.now())
        .unwrap();
    assert_eq!(h.server.pending_persists(), 0);
}

#[test]
fn continuous_updates_are_saved_within_the_max_latency() {
    let mut h = joined(&[1]);
    let mut saved = false;
    for i in 0..30 {
        h.binary(1, loro_update(1 + i, "k", i as i64));
        h.now += 200; // never 500 ms of quiet
        h.server.handle_timeout(h.now()).unwrap();
        if persist_effect(&h.drain()).is_some() {
            saved = true;
            assert!(h.now - 1_000 <= 5_000 + 200);
            break;
        }
    }
    assert!(saved);
}

/// The last member out does not save at once (rooms emptied and joined again at every page
/// load would export and write their whole snapshot each time): the debounce does, then the
/// idle, saved room is evicted.
#[test]
fn an_emptied_room_is_saved_after_the_debounce_then_evicted() {
    let mut h = joined(&[1, 2]);
    h.binary(1, loro_update(1, "k", 1));
    h.server.handle_timeout(h.now()).unwrap(); // its import
    h.server.handle_closed(ConnId(1), h.now()).unwrap();
    assert!(persist_effect(&h.drain()).is_none(), "a member remains");
    h.server.handle_closed(ConnId(2), h.now()).unwrap();
    assert!(
        persist_effect(&h.drain()).is_none(),
        "not on the last leave"
    );
    h.now += 499;
    h.server.handle_timeout(h.now()).unwrap();
    assert!(
        persist_effect(&h.drain()).is_none(),
        "not before the debounce"
    );
    h.now += 1;
    h.server.handle_timeout(h.now()).unwrap();
    let (_, version) = persist_effect(&h.drain()).expect("saved after the debounce");
    h.server
        .handle_snapshot_persisted("r", version, Ok(()), h.now())
        .unwrap();
    h.drain();
    let evict_at = h.server.poll_timeout().expect("eviction armed");
    assert_eq!(evict_at, Millis(h.now + 30_000));
    h.server.handle_timeout(Millis(evict_at.0 - 1)).unwrap();
    assert_eq!(h.server.room_count(), 1, "not before its time");
    h.server.handle_timeout(evict_at).unwrap();
    assert_eq!(h.server.room_count(), 0);
}

#[test]
fn a_failed_save_is_retried() {
    let mut h = joined(&[1]);
    h.binary(1, loro_update(1, "k", 1));
    h.now += 500;
    h.server.handle_timeout(h.now()).unwrap();
    let (_, version) = persist_effect(&h.drain()).unwrap();
    h.server
        .handle_snapshot_persisted("r", version, Err("disk full".into()), h.now())
        .unwrap();
    h.drain();
    h.now += 500;
    h.server.handle_timeout(h.now()).unwrap();
    assert!(persist_effect(&h.drain()).is_some());
}

#[test]
fn shutdown_closes_connections_and_saves_dirty_rooms() {
    let mut h = joined(&[1]);
    h.binary(1, loro_update(1, "k", 1));
    h.server.handle_shutdown(h.now()).unwrap();
    let effects = h.drain();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Close { code: 1001, .. })));
    assert!(persist_effect(&effects).is_some());
    assert_eq!(h.server.pending_persists(), 1);
}

#[test]
fn joining_another_room_leaves_the_first() {
    let mut h = joined(&[1, 2]);
    h.text(2, json!({"type":"crdt-join","roomId":"other"}));
    h.drain();
    let effects = h.binary(1, loro_update(1, "k", 1));
    assert!(sent_binary(&effects, 2).is_empty());
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn unsaved_rooms_can_be_salvaged_after_poisoning() {
    let mut h = joined(&[1]);
    assert!(h.server.unsaved_room_snapshots().is_empty());
    h.binary(1, loro_update(1, "k", 1));
    let unsaved = h.server.unsaved_room_snapshots();
    assert_eq!(unsaved.len(), 1);
    assert_eq!(
        snapshot_value(&unsaved[0].1),
        snapshot_value(&loro_update(1, "k", 1))
    );
}

/// A change is checked, relayed and acknowledged before its room imports it (Loro's import
/// costs time in proportion to the peers a room has seen); whatever reads the room reads it.
#[test]
fn an_accepted_change_is_acknowledged_before_it_is_imported_and_read_with_the_room() {
    let mut h = joined(&[1, 2]);
    let update = loro_update(7, "k", 42);
    let effects = h.binary(1, update.clone());
    assert_eq!(
        sent_binary(&effects, 2),
        vec![bytes::Bytes::from(update.clone())]
    );
    assert_eq!(sent_json(&effects, 1)[0]["type"], "crdt-update-ack");
    assert_eq!(
        h.server.poll_timeout(),
        Some(h.now()),
        "its import is due at once"
    );
    // Read before the import: the room already holds it.
    let before_import = h.server.room_snapshot("r").expect("loaded");
    assert_eq!(snapshot_value(&before_import), snapshot_value(&update));
    h.server.handle_timeout(h.now()).unwrap();
    let after_import = h.server.room_snapshot("r").expect("loaded");
    assert_eq!(snapshot_value(&after_import), snapshot_value(&update));
    // A joiner before the import would have got it too: join a third member now.
    h.open(3);
    h.text(3, json!({"type":"crdt-join","roomId":"r"}));
    assert_eq!(h.server.crdt_changes_refused_on_import(), 0);
}

/// Bytes Loro cannot decode are refused at once, never relayed nor queued for import.
#[test]
fn an_undecodable_change_is_refused_before_it_is_relayed() {
    let mut h = joined(&[1, 2]);
    let mut update = loro_update(7, "k", 42);
    let last = update.len() - 1;
    update[last] ^= 0xff;
    update.truncate(update.len() / 2);
    let effects = h.binary(1, update);
    assert!(sent_binary(&effects, 2).is_empty(), "not relayed");
    assert!(sent_json(&effects, 1)[0]["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid CRDT update"));
    assert_ne!(h.server.poll_timeout(), Some(h.now()), "nothing to import");
}
