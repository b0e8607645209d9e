//! Room document jobs (`rooms/doc.rs`, `rooms/jobs.rs`): Loro's imports and snapshot exports
//! run off the protocol thread, one job per room at a time. These tests hold jobs back (the
//! harness's `drain` runs them on the spot) to check what happens while one runs.

use bytes::Bytes;
use serde_json::json;

use super::harness::{loro_update, sent_binary, sent_json, snapshot_value, Harness};
use crate::{Config, ConnId, Effect, Frame, Millis, RoomDocJob};

use super::rooms_tests::sync_config;

/// A room "r" with members 1 and 2, loaded empty, no job running.
fn room_of_two() -> Harness {
    super::rooms_tests::joined(&[1, 2])
}

/// Effects without running jobs: the jobs asked for are returned apart.
fn effects_holding_jobs(h: &mut Harness) -> (Vec<Effect>, Vec<(u64, RoomDocJob)>) {
    let (mut effects, mut jobs) = (Vec::new(), Vec::new());
    while let Some(effect) = h.server.poll_effect() {
        match effect {
            Effect::RunRoomDocJob { job_id, job, .. } => jobs.push((job_id, job)),
            effect => effects.push(effect),
        }
    }
    (effects, jobs)
}

fn send_update(h: &mut Harness, conn: u64, update: &[u8]) -> (Vec<Effect>, Vec<(u64, RoomDocJob)>) {
    h.server
        .handle_frame(
            ConnId(conn),
            Frame::Binary(Bytes::copy_from_slice(update)),
            h.now(),
        )
        .unwrap();
    effects_holding_jobs(h)
}

/// Fires the timers due now (the room's import) and returns the job it started.
fn import_job(h: &mut Harness) -> (u64, RoomDocJob) {
    h.server.handle_timeout(h.now()).unwrap();
    let (_, mut jobs) = effects_holding_jobs(h);
    assert_eq!(jobs.len(), 1, "one job per room: {jobs:?}");
    jobs.pop().unwrap()
}

fn report(h: &mut Harness, job_id: u64, job: RoomDocJob) -> (Vec<Effect>, Vec<(u64, RoomDocJob)>) {
    h.server
        .handle_room_doc_worked("r", job_id, job.run(), h.now())
        .unwrap();
    effects_holding_jobs(h)
}

fn saved_version(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|e| match e {
        Effect::PersistSnapshot { version, .. } => Some(*version),
        _ => None,
    })
}

/// The save of `version` is reported: the idle room stays loaded until the eviction delay
/// has passed, then leaves memory.
fn saved_then_unloaded_after_the_delay(h: &mut Harness, version: u64) {
    h.server
        .handle_snapshot_persisted("r", version, Ok(()), h.now())
        .unwrap();
    h.drain();
    assert_eq!(h.server.room_count(), 1, "not before the eviction delay");
    h.now += sync_config().room_idle_evict_ms + 1;
    h.server.handle_timeout(h.now()).unwrap();
    assert!(h
        .drain()
        .iter()
        .any(|e| matches!(e, Effect::RoomUnloaded { .. })));
}

fn acked(effects: &[Effect], conn: u64) -> bool {
    sent_json(effects, conn)
        .iter()
        .any(|m| m["type"] == json!("crdt-update-ack"))
}

fn decoded_snapshot(message: &serde_json::Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(message["data"].as_str().unwrap())
        .unwrap()
}

#[test]
fn a_change_is_relayed_and_acknowledged_before_its_import_job_runs() {
    let mut h = room_of_two();
    let update = loro_update(7, "a", 1);
    let (effects, jobs) = send_update(&mut h, 1, &update);
    assert!(jobs.is_empty(), "the import waits for its timer: {jobs:?}");
    assert!(acked(&effects, 1));
    assert_eq!(sent_binary(&effects, 2), vec![Bytes::from(update)]);
    let (_, job) = import_job(&mut h);
    assert_eq!((job.changes(), job.exports()), (1, false));
}

#[test]
fn a_join_while_a_job_runs_gets_the_snapshot_then_the_changes_accepted_meanwhile() {
    let mut h = room_of_two();
    let a = loro_update(7, "a", 1);
    send_update(&mut h, 1, &a);
    let (import_id, import) = import_job(&mut h);
    // Conn 3 joins while the import holds the document: nothing yet, no second job.
    h.open(3);
    h.server
        .handle_frame(
            ConnId(3),
            Frame::Text(json!({"type":"crdt-join","roomId":"r"}).to_string()),
            h.now(),
        )
        .unwrap();
    let (effects, jobs) = effects_holding_jobs(&mut h);
    assert!(sent_json(&effects, 3).is_empty() && jobs.is_empty());
    // A change accepted meanwhile reaches the members, not the joiner (it has no state yet).
    let b = loro_update(8, "b", 2);
    let (effects, _) = send_update(&mut h, 1, &b);
    assert!(acked(&effects, 1));
    assert_eq!(sent_binary(&effects, 2).len(), 1);
    assert!(sent_binary(&effects, 3).is_empty());
    // The import reports: the joiner's job starts, with `b`, and exports.
    let (effects, mut jobs) = report(&mut h, import_id, import);
    assert!(sent_json(&effects, 3).is_empty());
    let (export_id, export) = jobs.pop().expect("the joiner's job");
    assert_eq!((export.changes(), export.exports()), (1, true));
    // One more change while the export runs, from the other member.
    let c = loro_update(9, "c", 3);
    send_update(&mut h, 2, &c);
    let (effects, jobs) = report(&mut h, export_id, export);
    let replies = sent_json(&effects, 3);
    assert_eq!(replies[0], json!({"type":"crdt-joined","roomId":"r"}));
    assert_eq!(replies[1]["type"], json!("crdt-snapshot"));
    assert_eq!(sent_binary(&effects, 3), vec![Bytes::from(c.clone())]);
    // Snapshot and the change after it make the whole room.
    let joiner = loro::LoroDoc::new();
    joiner.import(&decoded_snapshot(&replies[1])).unwrap();
    joiner.import(&c).unwrap();
    let expected = loro::LoroDoc::new();
    for change in [&a, &b, &c] {
        expected.import(change).unwrap();
    }
    assert_eq!(joiner.get_deep_value(), expected.get_deep_value());
    // `c` is still to import: the next job starts right after the report.
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].1.changes(), jobs[0].1.exports()), (1, false));
    // The joiner is a member now: the next change reaches it.
    let (effects, _) = send_update(&mut h, 1, &loro_update(7, "d", 4));
    assert_eq!(sent_binary(&effects, 3).len(), 1);
}

#[test]
fn a_joiner_is_not_sent_its_own_change_back_after_its_snapshot() {
    let mut h = room_of_two();
    send_update(&mut h, 1, &loro_update(7, "a", 1));
    let (import_id, import) = import_job(&mut h);
    h.text_holding(3);
    let (_, mut jobs) = report(&mut h, import_id, import);
    let (export_id, export) = jobs.pop().unwrap();
    // The joiner sends a change before its snapshot arrived.
    let own = loro_update(9, "mine", 1);
    let (effects, _) = send_update(&mut h, 3, &own);
    assert!(acked(&effects, 3));
    assert_eq!(sent_binary(&effects, 1).len(), 1);
    let (effects, _) = report(&mut h, export_id, export);
    assert_eq!(sent_json(&effects, 3)[1]["type"], json!("crdt-snapshot"));
    assert!(sent_binary(&effects, 3).is_empty(), "its own change echoed");
}

#[test]
fn a_save_waits_for_the_running_job_and_covers_every_change_accepted_when_it_starts() {
    let mut h = room_of_two();
    let a = loro_update(7, "a", 1);
    send_update(&mut h, 1, &a);
    let (import_id, import) = import_job(&mut h);
    let b = loro_update(8, "b", 2);
    send_update(&mut h, 1, &b);
    // Both members leave; the debounce asks for a save, which waits for the import.
    for conn in [1, 2] {
        h.server.handle_closed(ConnId(conn), h.now()).unwrap();
    }
    h.now += sync_config().save_debounce_ms;
    h.server.handle_timeout(h.now()).unwrap();
    let (effects, jobs) = effects_holding_jobs(&mut h);
    assert!(jobs.is_empty());
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::PersistSnapshot { .. })));
    assert_eq!(h.server.pending_persists(), 1, "shutdown waits for it");
    let (_, mut jobs) = report(&mut h, import_id, import);
    let (save_id, save) = jobs.pop().expect("the save's job");
    assert_eq!((save.changes(), save.exports()), (1, true));
    let (effects, _) = report(&mut h, save_id, save);
    let (snapshot, version) = effects
        .iter()
        .find_map(|e| match e {
            Effect::PersistSnapshot {
                snapshot, version, ..
            } => Some((snapshot.clone(), *version)),
            _ => None,
        })
        .expect("the save");
    assert_eq!(version, 2);
    let expected = loro::LoroDoc::new();
    expected.import(&a).unwrap();
    expected.import(&b).unwrap();
    assert_eq!(snapshot_value(&snapshot), expected.get_deep_value());
    // Saved and idle: it leaves memory after the eviction delay, not before.
    saved_then_unloaded_after_the_delay(&mut h, version);
}

#[test]
fn an_idle_room_is_not_evicted_while_a_job_holds_its_document() {
    let mut h = room_of_two();
    send_update(&mut h, 1, &loro_update(7, "a", 1));
    h.text_holding(3);
    let (_, mut jobs) = effects_holding_jobs(&mut h);
    let (export_id, export) = jobs.pop().expect("the joiner's job");
    for conn in [1, 2, 3] {
        h.server.handle_closed(ConnId(conn), h.now()).unwrap();
    }
    h.now += sync_config().room_idle_evict_ms + 1;
    h.server.handle_timeout(h.now()).unwrap();
    let (effects, _) = effects_holding_jobs(&mut h);
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::RoomUnloaded { .. })));
    // The joiner left: nothing is sent to it. The save the debounce asked for meanwhile
    // runs next; once saved, the room is evicted after the delay.
    let (effects, mut jobs) = report(&mut h, export_id, export);
    assert!(sent_json(&effects, 3).is_empty());
    let (save_id, save) = jobs.pop().expect("the save's job");
    let (effects, _) = report(&mut h, save_id, save);
    let version = saved_version(&effects).expect("the save");
    saved_then_unloaded_after_the_delay(&mut h, version);
}

#[test]
fn another_replicas_change_waits_for_the_job_then_reaches_every_member() {
    let mut h = room_of_two();
    // A change's import holds the document in a job.
    let first = loro_update(7, "a", 1);
    send_update(&mut h, 1, &first);
    let (job_id, job) = import_job(&mut h);
    let remote = loro_update(40, "remote", 5);
    assert!(h
        .server
        .handle_remote_room_update("r", Bytes::from(remote.clone()), h.now())
        .unwrap());
    let (effects, _) = effects_holding_jobs(&mut h);
    assert!(sent_binary(&effects, 1).is_empty(), "relayed before import");
    // The running job's report starts the next one, which imports it.
    let (effects, mut jobs) = report(&mut h, job_id, job);
    assert!(sent_binary(&effects, 1).is_empty(), "relayed before import");
    let (next_id, next) = jobs.pop().expect("the remote change's import");
    assert_eq!(next.changes(), 1);
    let (effects, _) = report(&mut h, next_id, next);
    assert_eq!(sent_binary(&effects, 1), vec![Bytes::from(remote.clone())]);
    assert_eq!(sent_binary(&effects, 2), vec![Bytes::from(remote.clone())]);
    // Delivered again (the shared log also carries whole states): nothing new, no relay.
    h.server
        .handle_remote_room_update("r", Bytes::from(remote.clone()), h.now())
        .unwrap();
    let (again_id, again) = import_job(&mut h);
    let (effects, _) = report(&mut h, again_id, again);
    assert!(
        sent_binary(&effects, 1).is_empty(),
        "a duplicate is not relayed"
    );
    let expected = loro::LoroDoc::new();
    expected.import(&first).unwrap();
    expected.import(&loro_update(40, "remote", 5)).unwrap();
    let snapshot = h.server.room_snapshot("r").unwrap();
    assert_eq!(snapshot_value(&snapshot), expected.get_deep_value());
}

#[test]
fn a_stale_report_changes_nothing_and_observers_read_a_lent_room_whole() {
    let mut h = room_of_two();
    let a = loro_update(7, "a", 1);
    send_update(&mut h, 1, &a);
    let (job_id, job) = import_job(&mut h);
    let b = loro_update(8, "b", 2);
    send_update(&mut h, 1, &b);
    // Read while the job holds the document (its change not imported yet): both changes.
    let expected = loro::LoroDoc::new();
    expected.import(&a).unwrap();
    expected.import(&b).unwrap();
    let value = snapshot_value(&h.server.room_snapshot("r").unwrap());
    assert_eq!(value, expected.get_deep_value());
    let (effects, jobs) = {
        h.server
            .handle_room_doc_worked("r", job_id + 7, Default::default(), Millis(h.now))
            .unwrap();
        effects_holding_jobs(&mut h)
    };
    assert!(effects.is_empty() && jobs.is_empty(), "a report of no job");
    let (_, jobs) = report(&mut h, job_id, job);
    assert_eq!(jobs.len(), 1, "the pending change's job");
}

#[test]
fn joiners_get_the_last_snapshot_without_a_job_until_the_room_changes() {
    let mut h = room_of_two();
    // Nothing changed since the load's snapshot: served at once, no job.
    h.text_holding(3);
    let (effects, jobs) = effects_holding_jobs(&mut h);
    assert!(jobs.is_empty(), "{jobs:?}");
    assert_eq!(sent_json(&effects, 3)[1]["type"], json!("crdt-snapshot"));
    // A change since: the next joiner's snapshot comes from a job, and holds it.
    let a = loro_update(7, "a", 1);
    send_update(&mut h, 1, &a);
    h.server.handle_timeout(h.now()).unwrap();
    let (_, mut jobs) = effects_holding_jobs(&mut h);
    let (import_id, import) = jobs.pop().expect("the import");
    report(&mut h, import_id, import);
    h.text_holding(4);
    let (_, mut jobs) = effects_holding_jobs(&mut h);
    let (export_id, export) = jobs.pop().expect("a job for the changed room");
    assert_eq!((export.changes(), export.exports()), (0, true));
    let (effects, _) = report(&mut h, export_id, export);
    let snapshot = decoded_snapshot(&sent_json(&effects, 4)[1]);
    let expected = loro::LoroDoc::new();
    expected.import(&a).unwrap();
    assert_eq!(snapshot_value(&snapshot), expected.get_deep_value());
    // And that snapshot serves the next joiner without a job.
    h.text_holding(5);
    let (effects, jobs) = effects_holding_jobs(&mut h);
    assert!(jobs.is_empty());
    let again = decoded_snapshot(&sent_json(&effects, 5)[1]);
    assert_eq!(again, snapshot);
}

#[test]
fn a_room_loaded_from_its_stored_snapshot_alone_serves_it_without_a_job() {
    let stored = {
        let doc = loro::LoroDoc::new();
        doc.import(&loro_update(7, "a", 1)).unwrap();
        doc.export(loro::ExportMode::Snapshot).unwrap()
    };
    let mut h = Harness::new(sync_config());
    h.text_holding(1);
    effects_holding_jobs(&mut h);
    h.server
        .handle_snapshot_loaded("r", Ok(Some(stored.clone())), h.now())
        .unwrap();
    // The load's job imports the stored snapshot without exporting it again.
    let (effects, mut jobs) = effects_holding_jobs(&mut h);
    assert!(
        sent_json(&effects, 1).is_empty(),
        "joined before the import"
    );
    let (load_id, load) = jobs.pop().expect("the load's job");
    assert_eq!((load.changes(), load.exports()), (1, false));
    let (effects, jobs) = report(&mut h, load_id, load);
    assert!(jobs.is_empty(), "{jobs:?}");
    assert_eq!(decoded_snapshot(&sent_json(&effects, 1)[1]), stored);
    // With updates logged after it, the room's state is more than the stored snapshot.
    let mut h = Harness::new(Config {
        durable_room_log: true,
        ..sync_config()
    });
    h.text_holding(1);
    effects_holding_jobs(&mut h);
    let logged = loro_update(8, "b", 2);
    let room = crate::StoredRoom {
        snapshot: Some(stored),
        updates: vec![logged],
        last_seq: 1,
        shared_log_position: None,
    };
    h.server.handle_room_loaded("r", Ok(room), h.now()).unwrap();
    let (_, jobs) = effects_holding_jobs(&mut h);
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].1.changes(), jobs[0].1.exports()), (2, true));
}

/// A room's load is a job (a long log is imported off the protocol thread): nobody joins
/// before it reports, other replicas' changes delivered meanwhile are taken and imported
/// after it, and a corrupt logged update refuses the joiners with the update's place.
#[test]
fn a_room_loads_in_a_job_and_takes_other_replicas_changes_meanwhile() {
    let mut h = Harness::new(Config {
        replica_id: Some("b".into()),
        ..sync_config()
    });
    h.text_holding(1);
    effects_holding_jobs(&mut h);
    let logged: Vec<Vec<u8>> = (0..3).map(|i| loro_update(10 + i, "k", i as i64)).collect();
    let room = crate::StoredRoom {
        updates: logged.clone(),
        last_seq: 3,
        ..crate::StoredRoom::default()
    };
    h.server.handle_room_loaded("r", Ok(room), h.now()).unwrap();
    let (_, mut jobs) = effects_holding_jobs(&mut h);
    let (load_id, load) = jobs.pop().expect("the load's job");
    assert_eq!(load.changes(), 3);
    // Joining or sending before the load finished: the room is loading.
    let effects = h.frame(1, Frame::Binary(Bytes::from(loro_update(30, "x", 1))));
    assert_eq!(sent_json(&effects, 1)[0]["type"], json!("error"));
    let remote = loro_update(40, "remote", 5);
    assert!(h
        .server
        .handle_remote_room_update("r", Bytes::from(remote.clone()), h.now())
        .unwrap());
    // The joiner's snapshot comes from the next job, which imports the remote change: it
    // holds it, so it is not relayed to the joiner too.
    let (effects, mut jobs) = report(&mut h, load_id, load);
    assert!(sent_json(&effects, 1).is_empty());
    let (import_id, import) = jobs.pop().expect("the remote change's import");
    assert_eq!((import.changes(), import.exports()), (1, true));
    let (effects, _) = report(&mut h, import_id, import);
    let replies = sent_json(&effects, 1);
    assert_eq!(replies[0]["type"], json!("crdt-joined"));
    assert!(sent_binary(&effects, 1).is_empty());
    let expected = loro::LoroDoc::new();
    for update in logged.iter().chain([&remote]) {
        expected.import(update).unwrap();
    }
    let snapshot = decoded_snapshot(&replies[1]);
    assert_eq!(snapshot_value(&snapshot), expected.get_deep_value());

    let mut h = Harness::new(sync_config());
    h.text_holding(1);
    effects_holding_jobs(&mut h);
    let room = crate::StoredRoom {
        updates: vec![logged[0].clone(), b"not a loro update".to_vec()],
        last_seq: 2,
        ..crate::StoredRoom::default()
    };
    h.server.handle_room_loaded("r", Ok(room), h.now()).unwrap();
    let (_, mut jobs) = effects_holding_jobs(&mut h);
    let (load_id, load) = jobs.pop().expect("the load's job");
    let (effects, _) = report(&mut h, load_id, load);
    let error = &sent_json(&effects, 1)[0];
    assert_eq!(error["type"], json!("error"), "{error}");
    let message = error["error"].as_str().unwrap();
    assert!(message.contains("logged update 2 is corrupt"), "{message}");
    assert_eq!(h.server.room_count(), 0, "the room is not kept");
}

/// Two changes of one peer: the second depends on the first.
fn change_and_its_dependency() -> (Vec<u8>, Vec<u8>) {
    let doc = loro::LoroDoc::new();
    doc.set_peer_id(5).unwrap();
    doc.get_text("t").insert(0, "a").unwrap();
    doc.commit();
    let first = doc.export(loro::ExportMode::all_updates()).unwrap();
    let after_first = doc.oplog_vv();
    doc.get_text("t").insert(1, "b").unwrap();
    doc.commit();
    let second = doc.export(loro::ExportMode::updates(&after_first)).unwrap();
    (second, first)
}

/// A change accepted before its dependency waits inside the room's document, and a
/// snapshot leaves it out: a joiner gets it after the snapshot, so when the dependency
/// comes it has both, like the room.
#[test]
fn a_joiner_gets_the_changes_that_wait_for_a_dependency() {
    let mut h = room_of_two();
    let (dependent, dependency) = change_and_its_dependency();
    let (effects, _) = send_update(&mut h, 1, &dependent);
    assert!(
        acked(&effects, 1),
        "a change waiting for its dependency is accepted"
    );
    h.drain(); // its import
    h.text_holding(3);
    let effects = h.drain();
    let snapshot = decoded_snapshot(&sent_json(&effects, 3)[1]);
    let after = sent_binary(&effects, 3);
    assert_eq!(after.len(), 1, "the waiting change after the snapshot");
    let (effects, _) = send_update(&mut h, 1, &dependency);
    assert_eq!(
        sent_binary(&effects, 3),
        vec![Bytes::from(dependency.clone())]
    );
    h.server.handle_timeout(h.now()).unwrap();
    h.drain();
    let joiner = loro::LoroDoc::new();
    joiner.import(&snapshot).unwrap();
    joiner.import(&after[0]).unwrap();
    joiner.import(&dependency).unwrap();
    assert_eq!(joiner.get_text("t").to_string(), "ab");
    let room = snapshot_value(&h.server.room_snapshot("r").unwrap());
    assert_eq!(joiner.get_deep_value(), room);
}

/// A save of a room holding a change that waits for a dependency trims no log entry (the
/// snapshot leaves the change out; the log has it for the next load).
#[test]
fn a_save_with_a_waiting_change_keeps_the_whole_log() {
    let mut h = Harness::new(Config {
        durable_room_log: true,
        ..sync_config()
    });
    h.text_holding(1);
    h.drain();
    h.server
        .handle_room_loaded("r", Ok(crate::StoredRoom::default()), h.now())
        .unwrap();
    h.drain();
    let (dependent, _) = change_and_its_dependency();
    h.binary(1, dependent);
    h.server
        .handle_room_update_appended("r", 1, Ok(()), h.now())
        .unwrap();
    h.now += sync_config().save_debounce_ms;
    h.server.handle_timeout(h.now()).unwrap();
    let trims: Vec<(u64, Option<String>)> = h
        .drain()
        .iter()
        .filter_map(|e| match e {
            Effect::PersistSnapshot {
                log_seq, covers, ..
            } => Some((*log_seq, covers.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(trims, vec![(0, None)]);
}

/// A sender outrunning the room's imports is not read (TCP back-pressure) once the room has
/// `max_unimported_changes_per_room` changes not imported, and is read again when the
/// imports catch up; its changes are acknowledged at once all the same.
#[test]
fn a_sender_outrunning_the_rooms_imports_is_paused_until_they_catch_up() {
    let mut h = Harness::new(Config {
        limits: crate::Limits {
            max_unimported_changes_per_room: Some(2),
            ..crate::Limits::default()
        },
        ..sync_config()
    });
    for conn in [1, 2] {
        h.text_holding(conn);
    }
    h.server
        .handle_snapshot_loaded("r", Ok(None), h.now())
        .unwrap();
    h.drain();
    let pauses = |effects: &[Effect]| {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::PauseReading { conn } => Some(("pause", conn.0)),
                Effect::ResumeReading { conn } => Some(("resume", conn.0)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let (effects, _) = send_update(&mut h, 1, &loro_update(7, "a", 1));
    assert!(acked(&effects, 1) && pauses(&effects).is_empty());
    let (job_id, job) = import_job(&mut h);
    let (effects, _) = send_update(&mut h, 1, &loro_update(8, "b", 2));
    assert!(acked(&effects, 1), "acknowledged at once");
    assert_eq!(
        pauses(&effects),
        vec![("pause", 1)],
        "two not imported: the cap"
    );
    // The other member is still read.
    let (effects, _) = send_update(&mut h, 2, &loro_update(9, "c", 3));
    assert_eq!(pauses(&effects), vec![("pause", 2)]);
    // The first import reports: two changes still wait (the next job takes them), so the
    // senders stay paused until that one reports too.
    let (effects, mut jobs) = report(&mut h, job_id, job);
    assert!(pauses(&effects).is_empty());
    let (next_id, next) = jobs.pop().expect("the next import starts");
    assert_eq!(next.changes(), 2);
    let (effects, _) = report(&mut h, next_id, next);
    assert_eq!(pauses(&effects), vec![("resume", 1), ("resume", 2)]);
}

impl Harness {
    /// Opens `conn` and sends its join of "r", holding any job it starts.
    fn text_holding(&mut self, conn: u64) {
        self.server
            .handle_open(ConnId(conn), Default::default(), self.now())
            .unwrap();
        self.server
            .handle_frame(
                ConnId(conn),
                Frame::Text(json!({"type":"crdt-join","roomId":"r"}).to_string()),
                self.now(),
            )
            .unwrap();
    }
}
