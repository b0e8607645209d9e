//! The durable room log (`Config::durable_room_log`): acknowledged means logged.

use serde_json::json;

use super::harness::{loro_update, sent_binary, sent_json, snapshot_value, Harness};
use crate::{Config, Effect, StoredRoom};

fn durable() -> Config {
    Config {
        sync_enabled: true,
        allow_client_snapshots: true,
        durable_room_log: true,
        ..Config::default()
    }
}

fn joined(conns: &[u64], stored: StoredRoom) -> Harness {
    let mut h = Harness::new(durable());
    for conn in conns {
        h.open(*conn);
        h.text(*conn, json!({"type":"crdt-join","roomId":"r"}));
    }
    h.server
        .handle_room_loaded("r", Ok(stored), h.now())
        .unwrap();
    h.drain();
    h
}

fn appends(effects: &[Effect]) -> Vec<u64> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::AppendRoomUpdate { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn the_ack_waits_for_the_log_and_relays_do_not() {
    let mut h = joined(&[1, 2], StoredRoom::default());
    let effects = h.binary(1, loro_update(1, "a", 1));
    assert_eq!(appends(&effects), vec![1]);
    assert!(
        sent_json(&effects, 1).is_empty(),
        "no ack before the append"
    );
    assert_eq!(
        sent_binary(&effects, 2).len(),
        1,
        "members get the update at once"
    );
    let effects = h.binary(1, loro_update(2, "b", 2));
    assert_eq!(appends(&effects), vec![2]);
    // One group commit covers both.
    h.server
        .handle_room_update_appended("r", 2, Ok(()), h.now())
        .unwrap();
    let acks = sent_json(&h.drain(), 1);
    assert_eq!(
        acks,
        vec![json!({"type":"crdt-update-ack","roomId":"r"}); 2]
    );
}

#[test]
fn a_failed_append_answers_an_error_instead_of_an_ack() {
    let mut h = joined(&[1], StoredRoom::default());
    h.binary(1, loro_update(1, "a", 1));
    h.server
        .handle_room_update_appended("r", 1, Err("disk full".into()), h.now())
        .unwrap();
    let replies = sent_json(&h.drain(), 1);
    assert_eq!(
        replies,
        vec![json!({"type":"error","error":"CRDT change applied but not saved: disk full"})]
    );
}

#[test]
fn client_snapshots_are_logged_before_their_ack() {
    let mut h = joined(&[1], StoredRoom::default());
    let data = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        loro_update(5, "seed", 1),
    );
    let effects = h.text(1, json!({"type":"crdt-snapshot","roomId":"r","data":data}));
    assert_eq!(appends(&effects), vec![1]);
    assert!(sent_json(&effects, 1).is_empty());
    h.server
        .handle_room_update_appended("r", 1, Ok(()), h.now())
        .unwrap();
    assert_eq!(
        sent_json(&h.drain(), 1),
        vec![json!({"type":"crdt-snapshot-ack","roomId":"r"})]
    );
}

#[test]
fn a_room_loads_as_snapshot_plus_log_continues_its_sequence_and_compacts_on_save() {
    let stored = StoredRoom {
        snapshot: Some(loro_update(1, "a", 1)),
        updates: vec![loro_update(2, "b", 2), loro_update(3, "c", 3)],
        last_seq: 7,
        shared_log_position: None,
    };
    let mut h = joined(&[1], stored);
    let expected = loro::LoroDoc::new();
    for update in [
        loro_update(1, "a", 1),
        loro_update(2, "b", 2),
        loro_update(3, "c", 3),
    ] {
        expected.import(&update).unwrap();
    }
    let value = snapshot_value(&h.server.room_snapshot("r").unwrap());
    assert_eq!(value, expected.get_deep_value());
    // New appends continue after the stored log.
    assert_eq!(appends(&h.binary(1, loro_update(4, "d", 4))), vec![8]);
    // The replayed log makes the room due for a save, which drops the log it contains.
    h.now += 5_000;
    h.server.handle_timeout(h.now()).unwrap();
    let log_seq = h.drain().iter().find_map(|e| match e {
        Effect::PersistSnapshot { log_seq, .. } => Some(*log_seq),
        _ => None,
    });
    assert_eq!(log_seq, Some(8));
}

#[test]
fn a_corrupt_logged_update_refuses_the_join() {
    let mut h = Harness::new(durable());
    h.open(1);
    h.text(1, json!({"type":"crdt-join","roomId":"r"}));
    let stored = StoredRoom {
        snapshot: None,
        updates: vec![b"not loro".to_vec()],
        last_seq: 1,
        shared_log_position: None,
    };
    h.server
        .handle_room_loaded("r", Ok(stored), h.now())
        .unwrap();
    let replies = sent_json(&h.drain(), 1);
    assert!(replies[0]["error"]
        .as_str()
        .unwrap()
        .contains("logged update 1 is corrupt"));
}

/// Updates waiting for their append hold their bytes in the inbound budget: a sender that
/// outruns the log is paused (TCP backpressure) instead of filling the append queue, and
/// resumes once the log caught up.
#[test]
fn updates_waiting_for_the_log_count_in_the_inbound_budget() {
    let update = loro_update(1, "a", 1);
    let mut config = durable();
    config.limits.max_inbound_bytes_per_conn = Some(update.len() * 2);
    let mut h = Harness::new(config);
    h.open(1);
    h.text(1, json!({"type":"crdt-join","roomId":"r"}));
    h.server
        .handle_room_loaded("r", Ok(StoredRoom::default()), h.now())
        .unwrap();
    h.drain();
    let pauses = |effects: &[Effect]| {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::PauseReading { .. }))
            .count()
    };
    let second = loro_update(2, "b", 2);
    assert_eq!(pauses(&h.binary(1, update.clone())), 0);
    assert_eq!(pauses(&h.binary(1, second.clone())), 1, "budget reached");
    assert_eq!(h.server.inbound_bytes_total(), update.len() + second.len());
    h.server
        .handle_room_update_appended("r", 2, Ok(()), h.now())
        .unwrap();
    let effects = h.drain();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::ResumeReading { .. })));
    assert_eq!(
        h.server.inbound_bytes_total(),
        0,
        "every held byte released"
    );
}

/// With the log holding every acknowledged change, the last member leaving does not write
/// the whole snapshot at once (rooms emptied at every page load would write it each time,
/// ahead of the appends acknowledgements wait for): the debounce saves it, then the room is
/// evicted.
#[test]
fn with_a_durable_log_the_last_leave_leaves_the_save_to_the_debounce() {
    let mut h = joined(&[1], StoredRoom::default());
    h.binary(1, loro_update(1, "k", 1));
    h.server
        .handle_room_update_appended("r", 1, Ok(()), h.now())
        .unwrap();
    h.server.handle_timeout(h.now()).unwrap(); // the change's import
    h.drain();
    h.server.handle_closed(crate::ConnId(1), h.now()).unwrap();
    let persisted = |effects: &[Effect]| {
        effects.iter().find_map(|e| match e {
            Effect::PersistSnapshot { version, .. } => Some(*version),
            _ => None,
        })
    };
    assert_eq!(persisted(&h.drain()), None, "not saved on the last leave");
    h.now += 500;
    h.server.handle_timeout(h.now()).unwrap();
    let version = persisted(&h.drain()).expect("saved after the debounce");
    h.server
        .handle_snapshot_persisted("r", version, Ok(()), h.now())
        .unwrap();
    h.drain();
    h.now += 30_000;
    h.server.handle_timeout(h.now()).unwrap();
    assert_eq!(h.server.room_count(), 0, "evicted once saved and idle");
}
