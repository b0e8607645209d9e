//! The inbound budget: a connection at its budget is not read until its work finishes.

use proptest::prelude::*;
use serde_json::json;

use super::harness::{started, Harness};
use crate::{Config, ConnId, Effect, Limits, QueryHandle, QueryOutcome};

fn budgeted(per_conn: usize, total: usize) -> Config {
    Config {
        limits: Limits {
            max_inbound_bytes_per_conn: Some(per_conn),
            max_inbound_bytes: Some(total),
            ..Limits::default()
        },
        ..Config::default()
    }
}

fn query(id: u64, padding: usize) -> serde_json::Value {
    json!({"type":"json","sql":format!("select 1 -- {}", "x".repeat(padding)),"queryId":id})
}

#[test]
fn a_connection_at_its_budget_is_paused_and_resumed_when_work_finishes() {
    let mut h = Harness::new(budgeted(1_000, 1_000_000));
    h.open(1);
    h.open(2);
    let first = started(&h.text(1, query(1, 400)));
    let effects = h.text(1, query(2, 600));
    assert!(effects.contains(&Effect::PauseReading { conn: ConnId(1) }));
    assert!(h.server.inbound_bytes(ConnId(1)) >= 1_000);
    // Another connection is not affected.
    let other = h.text(2, query(3, 10));
    assert!(!other
        .iter()
        .any(|e| matches!(e, Effect::PauseReading { .. })));
    h.server
        .handle_query_done(first[0], QueryOutcome::Json("[]".into()), false, h.now())
        .unwrap();
    assert!(h
        .drain()
        .contains(&Effect::ResumeReading { conn: ConnId(1) }));
    assert!(!h.server.is_reading_paused(ConnId(1)));
}

#[test]
fn over_the_total_every_connection_holding_bytes_is_paused() {
    let mut h = Harness::new(budgeted(1_000_000, 1_000));
    h.open(1);
    h.open(2);
    h.open(3);
    let a = started(&h.text(1, query(1, 400)));
    let effects = h.text(2, query(2, 600));
    assert!(effects.contains(&Effect::PauseReading { conn: ConnId(1) }));
    assert!(effects.contains(&Effect::PauseReading { conn: ConnId(2) }));
    assert!(!h.server.is_reading_paused(ConnId(3)), "holds nothing");
    h.server
        .handle_query_done(a[0], QueryOutcome::Json("[]".into()), false, h.now())
        .unwrap();
    let effects = h.drain();
    assert!(effects.contains(&Effect::ResumeReading { conn: ConnId(1) }));
    assert!(effects.contains(&Effect::ResumeReading { conn: ConnId(2) }));
}

#[test]
fn closing_a_connection_releases_its_bytes() {
    let mut h = Harness::new(budgeted(1_000, 2_000));
    h.open(1);
    h.text(1, query(1, 900));
    h.text(1, query(2, 900));
    assert!(h.server.inbound_bytes_total() > 1_000);
    h.server.handle_closed(ConnId(1), h.now()).unwrap();
    assert_eq!(h.server.inbound_bytes_total(), 0);
}

proptest! {
    /// Over any interleaving of queries of any size, completions and closes, with a driver
    /// that stops reading a paused connection (at most the frame already read gets in), no
    /// connection holds more than its budget plus one frame, nor all of them more than the
    /// total budget plus one frame each; and everything is released in the end.
    #[test]
    fn the_budget_holds_over_any_input_sequence(
        steps in prop::collection::vec((0u64..3, 0usize..3_000, any::<bool>(), 0usize..16), 1..80)
    ) {
        let (per_conn, total) = (4_000, 7_000);
        let mut h = Harness::new(Config {
            limits: Limits {
                max_inbound_bytes_per_conn: Some(per_conn),
                max_inbound_bytes: Some(total),
                max_inflight_per_conn: None,
                ..Limits::default()
            },
            ..Config::default()
        });
        for conn in 0..3 {
            h.open(conn);
        }
        let mut running: Vec<QueryHandle> = Vec::new();
        let mut largest = 0;
        for (i, (conn, padding, finish, pick)) in steps.into_iter().enumerate() {
            if finish && !running.is_empty() {
                let handle = running.remove(pick % running.len());
                h.server.handle_query_done(handle, QueryOutcome::Json("[]".into()), false, h.now()).unwrap();
                h.drain();
            } else if !h.server.is_reading_paused(ConnId(conn)) {
                let frame = query(i as u64, padding);
                largest = largest.max(frame.to_string().len());
                running.extend(started(&h.text(conn, frame)));
            }
            for conn in 0..3 {
                prop_assert!(h.server.inbound_bytes(ConnId(conn)) < per_conn + largest);
            }
            prop_assert!(h.server.inbound_bytes_total() < total + 3 * largest);
        }
        for handle in running {
            h.server.handle_query_done(handle, QueryOutcome::Json("[]".into()), false, h.now()).unwrap();
        }
        prop_assert_eq!(h.server.inbound_bytes_total(), 0);
        for conn in 0..3 {
            prop_assert!(!h.server.is_reading_paused(ConnId(conn)));
        }
    }
}
