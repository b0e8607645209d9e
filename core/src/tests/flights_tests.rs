//! Single flight of persisted reads: waiters wait in the core, not on a worker.

use serde_json::json;

use super::harness::{runs, sent_binary, sent_json, Harness};
use crate::codec::{encode_arrow_frame_header, JsonReplyHeader, JsonReplyWriter};
use crate::{Config, ConnId, Effect, QueryId, QueryOutcome};

fn persisted(kind: &str, id: &str) -> serde_json::Value {
    json!({"type":kind,"sql":"select * from big","queryId":id,"persist":true})
}

#[test]
fn identical_persisted_reads_run_once_and_each_gets_its_own_reply() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    h.open(2);
    let leader = runs(&h.text(1, persisted("json", "a")));
    assert_eq!(leader.len(), 1);
    assert!(runs(&h.text(2, persisted("json", "b"))).is_empty(), "waits");
    assert!(runs(&h.text(1, persisted("json", "c"))).is_empty(), "waits");
    assert_eq!(h.server.flights.waiting(), 2);
    // The leader's reply is built by the executor with the leader's header.
    let header = leader[0].json_header.clone().unwrap();
    let mut writer = JsonReplyWriter::new(&header, 16);
    writer.push_rows("[{\"x\":1}]");
    h.server
        .handle_query_done(
            leader[0].query,
            QueryOutcome::JsonReply(writer.finish()),
            false,
            h.now(),
        )
        .unwrap();
    let effects = h.drain();
    let mine = |conn| sent_json(&effects, conn);
    assert_eq!(
        mine(1),
        vec![
            json!({"type":"json","queryId":"c","data":"[{\"x\":1}]"}),
            json!({"type":"json","queryId":"a","data":"[{\"x\":1}]"})
        ]
    );
    assert_eq!(
        mine(2),
        vec![json!({"type":"json","queryId":"b","data":"[{\"x\":1}]"})]
    );
    assert_eq!(h.server.inflight_count(ConnId(1)), 0);
    assert_eq!(h.server.flights.waiting(), 0);
}

#[test]
fn arrow_waiters_get_the_ipc_stream_under_their_own_header() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    h.open(2);
    let leader = runs(&h.text(1, persisted("arrow", "a")))[0].clone();
    h.text(2, persisted("arrow", "longer-id"));
    let frame = [leader.arrow_header.as_ref(), b"IPC"].concat();
    h.server
        .handle_query_done(
            leader.query,
            QueryOutcome::Arrow(frame.into()),
            false,
            h.now(),
        )
        .unwrap();
    let effects = h.drain();
    let expected = [
        encode_arrow_frame_header(&QueryId::Str("longer-id".into())).as_ref(),
        b"IPC",
    ]
    .concat();
    assert_eq!(sent_binary(&effects, 2), vec![bytes::Bytes::from(expected)]);
}

#[test]
fn a_waiter_is_cancelled_at_once_and_the_leader_goes_on() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    h.open(2);
    let leader = runs(&h.text(1, persisted("json", "a")))[0].clone();
    h.text(2, persisted("json", "b"));
    let effects = h.text(2, json!({"type":"cancel","queryId":"b"}));
    assert_eq!(
        sent_json(&effects, 2),
        vec![
            json!({"type":"cancelAck","queryId":"b","cancelled":true}),
            json!({"type":"error","queryId":"b","error":"Query was cancelled"})
        ]
    );
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::Interrupt { .. })));
    h.server
        .handle_query_done(
            leader.query,
            QueryOutcome::Json("[]".into()),
            false,
            h.now(),
        )
        .unwrap();
    let effects = h.drain();
    assert!(
        sent_json(&effects, 2).is_empty(),
        "nothing more for the cancelled waiter"
    );
    assert_eq!(sent_json(&effects, 1).len(), 1);
}

#[test]
fn waiters_of_a_cancelled_or_departed_leader_run_on_their_own() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    h.open(2);
    h.open(3);
    let leader = runs(&h.text(1, persisted("json", "a")))[0].clone();
    h.text(2, persisted("json", "b"));
    // The leader's client cancels: its interruption is not the waiter's.
    h.text(1, json!({"type":"cancel","queryId":"a"}));
    h.server
        .handle_query_done(leader.query, QueryOutcome::Cancelled, false, h.now())
        .unwrap();
    let effects = h.drain();
    let rerun = runs(&effects);
    assert_eq!(rerun.len(), 1);
    assert_eq!(rerun[0].query_id, QueryId::Str("b".into()));
    assert_eq!(
        rerun[0].json_header,
        Some(JsonReplyHeader::new(&rerun[0].query_id))
    );
    assert!(sent_json(&effects, 2).is_empty());

    // A leader whose connection closes releases its waiters at once.
    let leader = runs(&h.text(3, persisted("arrow", "x")))[0].clone();
    h.text(2, persisted("arrow", "y"));
    h.server.handle_closed(ConnId(3), h.now()).unwrap();
    let effects = h.drain();
    assert!(effects.contains(&Effect::Interrupt {
        query: leader.query
    }));
    assert_eq!(runs(&effects).len(), 1, "the waiter runs itself");
}

#[test]
fn a_write_seals_running_flights() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let leader = runs(&h.text(1, persisted("json", "before")))[0].clone();
    let write = runs(&h.text(
        1,
        json!({"type":"exec","sql":"insert into big values (1)","queryId":"w"}),
    ))[0]
        .clone();
    h.server
        .handle_query_done(write.query, QueryOutcome::NoResultSet, true, h.now())
        .unwrap();
    h.drain();
    // Sent after the write was acknowledged: must not share the older computation.
    let after = runs(&h.text(1, persisted("json", "after")));
    assert_eq!(after.len(), 1, "a new flight");
    assert_ne!(after[0].query, leader.query);
}

#[test]
fn writes_never_share_a_result() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let sql = json!({"type":"json","sql":"insert into t values (1) returning *","queryId":"1","persist":true});
    let leader = runs(&h.text(1, sql.clone()))[0].clone();
    let mut second = sql;
    second["queryId"] = json!("2");
    assert!(runs(&h.text(1, second)).is_empty());
    // The executor reports it wrote: the waiter's own write must run too.
    h.server
        .handle_query_done(
            leader.query,
            QueryOutcome::Json("[1]".into()),
            true,
            h.now(),
        )
        .unwrap();
    let effects = h.drain();
    assert_eq!(runs(&effects).len(), 1);
    assert_eq!(sent_json(&effects, 1).len(), 1, "only the leader answered");
}
