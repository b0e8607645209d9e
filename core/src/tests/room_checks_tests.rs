//! Large CRDT changes checked off the protocol thread (`rooms/checks.rs`): the sender is
//! paused, what it sent after the change waits, and the check's report handles the change
//! and then the rest in the order sent.

use bytes::Bytes;
use serde_json::json;

use super::harness::{loro_update, sent_binary, sent_json, Harness};
use crate::{Config, ConnId, Effect, Frame};

use super::rooms_tests::{joined_with, sync_config};

/// Room "r" with members 1 and 2, changes over 256 bytes checked off the thread.
fn room_checking_above_256_bytes() -> Harness {
    let mut config: Config = sync_config();
    config.limits.max_change_bytes_checked_inline = Some(256);
    joined_with(config, &[1, 2])
}

/// A change larger than 256 bytes: one map entry with a long value.
fn large_update(peer: u64) -> Vec<u8> {
    let doc = loro::LoroDoc::new();
    doc.set_peer_id(peer).unwrap();
    doc.get_map("m").insert("big", "x".repeat(500)).unwrap();
    doc.commit();
    doc.export(loro::ExportMode::all_updates()).unwrap()
}

/// Sends a binary frame and returns the effects, checks held back (not run).
fn send(h: &mut Harness, conn: u64, bytes: &[u8]) -> Vec<Effect> {
    h.server
        .handle_frame(
            ConnId(conn),
            Frame::Binary(Bytes::copy_from_slice(bytes)),
            h.now(),
        )
        .unwrap();
    std::iter::from_fn(|| h.server.poll_effect()).collect()
}

fn held_check(effects: &[Effect]) -> Option<(u64, Bytes)> {
    effects.iter().find_map(|e| match e {
        Effect::CheckRoomChange {
            conn,
            check_id,
            change,
        } if conn.0 == 1 => Some((*check_id, change.clone())),
        _ => None,
    })
}

fn types(effects: &[Effect], conn: u64) -> Vec<String> {
    sent_json(effects, conn)
        .iter()
        .map(|reply| reply["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_large_change_waits_for_its_check_and_what_its_sender_sent_next_waits_behind_it() {
    let mut h = room_checking_above_256_bytes();
    let large = large_update(7);
    let effects = send(&mut h, 1, &large);
    let (check_id, change) = held_check(&effects).expect("checked off the thread");
    assert_eq!(change.as_ref(), large.as_slice());
    assert!(sent_json(&effects, 1).is_empty() && sent_binary(&effects, 2).is_empty());
    assert!(effects.contains(&Effect::PauseReading { conn: ConnId(1) }));
    // A small change and a text message sent after it (already read) wait for the check.
    let small = loro_update(8, "small", 1);
    assert!(small.len() <= 256 && large.len() > 256);
    let effects = send(&mut h, 1, &small);
    assert!(effects.is_empty(), "{effects:?}");
    h.server
        .handle_frame(
            ConnId(1),
            Frame::Text(json!({"type":"crdt-join","roomId":"other"}).to_string()),
            h.now(),
        )
        .unwrap();
    assert!(h.drain().is_empty());
    // The report: the change, then the small one, then the join, in the order sent.
    h.server
        .handle_room_change_checked(ConnId(1), check_id, Ok(()), h.now())
        .unwrap();
    let effects = h.drain();
    assert_eq!(
        sent_binary(&effects, 2),
        vec![Bytes::from(large), Bytes::from(small)]
    );
    assert_eq!(types(&effects, 1), ["crdt-update-ack", "crdt-update-ack"]);
    // The join came after both changes reached "r": it loads the other room now.
    assert!(effects.contains(&Effect::LoadSnapshot {
        room_id: "other".into()
    }));
    assert!(effects.contains(&Effect::ResumeReading { conn: ConnId(1) }));
}

#[test]
fn a_large_change_loro_refuses_is_answered_after_its_check_and_the_next_one_goes_on() {
    let mut h = room_checking_above_256_bytes();
    let mut corrupt = large_update(7);
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x5a;
    let (check_id, change) = held_check(&send(&mut h, 1, &corrupt)).expect("a check");
    let small = loro_update(8, "small", 1);
    send(&mut h, 1, &small);
    let result = crate::check_room_change(&change);
    assert!(result.is_err());
    h.server
        .handle_room_change_checked(ConnId(1), check_id, result, h.now())
        .unwrap();
    let effects = h.drain();
    assert_eq!(types(&effects, 1), ["error", "crdt-update-ack"]);
    assert_eq!(sent_binary(&effects, 2), vec![Bytes::from(small)]);
    // A stale or repeated report changes nothing.
    h.server
        .handle_room_change_checked(ConnId(1), check_id, Ok(()), h.now())
        .unwrap();
    assert!(h.drain().is_empty());
}

#[test]
fn a_sender_gone_during_its_check_leaves_nothing_behind() {
    let mut h = room_checking_above_256_bytes();
    let (check_id, _) = held_check(&send(&mut h, 1, &large_update(7))).expect("a check");
    send(&mut h, 1, &loro_update(8, "small", 1));
    h.server.handle_closed(ConnId(1), h.now()).unwrap();
    h.drain();
    h.server
        .handle_room_change_checked(ConnId(1), check_id, Ok(()), h.now())
        .unwrap();
    let effects = h.drain();
    assert!(sent_binary(&effects, 2).is_empty(), "{effects:?}");
    // The room took none of it.
    let snapshot = h.server.room_snapshot("r").unwrap();
    let doc = loro::LoroDoc::new();
    doc.import(&snapshot).unwrap();
    assert!(doc.oplog_vv().is_empty());
}
