//! Query lifecycle: run, reply, cancel, ids, caps, closed connections, cache invalidation.

use bytes::Bytes;
use serde_json::json;

use super::harness::{closes, only_json, runs, sent_binary, sent_json, Harness};
use crate::{Config, ConnId, Effect, Limits, QueryHandle, QueryKind, QueryOutcome, RunQuery};

fn run_effect(effects: &[Effect]) -> RunQuery {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::RunQuery(run) => Some(run.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no RunQuery in {effects:?}"))
}

fn done(h: &mut Harness, query: QueryHandle, outcome: QueryOutcome) -> Vec<Effect> {
    h.server
        .handle_query_done(query, outcome, false, h.now())
        .unwrap();
    h.drain()
}

#[test]
fn arrow_query_runs_and_its_frame_is_sent_as_is() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let effects = h.text(1, json!({"type":"arrow","sql":"select 1","queryId":"q1"}));
    let run = run_effect(&effects);
    assert_eq!(run.kind, QueryKind::Arrow);
    assert_eq!(run.sql, "select 1");
    assert_eq!(run.conn, ConnId(1));
    let mut frame = run.arrow_header.to_vec();
    frame.extend_from_slice(b"IPC-STREAM");
    let frame = Bytes::from(frame);
    let effects = done(&mut h, run.query, QueryOutcome::Arrow(frame.clone()));
    let sent = sent_binary(&effects, 1);
    assert_eq!(sent, vec![frame.clone()]);
    assert_eq!(sent[0].as_ptr(), frame.as_ptr(), "no copy of the result");
    assert_eq!(h.server.inflight_count(ConnId(1)), 0);
}

#[test]
fn json_query_replies_rows_and_no_result_set_replies_ok() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let run = run_effect(&h.text(
        1,
        json!({"type":"json","sql":"select 1 as x","queryId":"q"}),
    ));
    let reply = only_json(
        &done(&mut h, run.query, QueryOutcome::Json("[{\"x\":1}]".into())),
        1,
    );
    assert_eq!(
        reply,
        json!({"type":"json","queryId":"q","data":"[{\"x\":1}]"})
    );

    let run = run_effect(&h.text(1, json!({"type":"json","sql":"insert …","queryId":"w"})));
    let effects = done(&mut h, run.query, QueryOutcome::NoResultSet);
    assert_eq!(only_json(&effects, 1), json!({"type":"ok","queryId":"w"}));
    let invalidate = effects.iter().position(|e| *e == Effect::InvalidateCache);
    let reply = effects
        .iter()
        .position(|e| matches!(e, Effect::Send { .. }));
    assert!(
        invalidate.unwrap() < reply.unwrap(),
        "cache dropped before the ok"
    );
}

#[test]
fn exec_replies_ok_and_invalidates_the_cache() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let run = run_effect(&h.text(1, json!({"type":"exec","sql":"select 1","queryId":3})));
    let effects = done(&mut h, run.query, QueryOutcome::Json("[]".into()));
    assert_eq!(only_json(&effects, 1), json!({"type":"ok","queryId":3}));
    assert!(effects.contains(&Effect::InvalidateCache));
}

#[test]
fn failures_reply_the_error_with_the_query_id() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let run = run_effect(&h.text(1, json!({"type":"arrow","sql":"selec","queryId":"q"})));
    let effects = done(
        &mut h,
        run.query,
        QueryOutcome::Failed("Parser Error: x".into()),
    );
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","queryId":"q","error":"Parser Error: x"})
    );
}

#[test]
fn empty_sql_is_an_error() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let effects = h.text(1, json!({"type":"json","sql":"  \n ","queryId":"e"}));
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","queryId":"e","error":"empty SQL"})
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::RunQuery(_))));
}

#[test]
fn missing_query_id_gets_a_generated_uuid_used_in_every_reply() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let run = run_effect(&h.text(1, json!({"type":"json","sql":"select 1"})));
    let header: serde_json::Value = serde_json::from_slice(&run.arrow_header[4..]).unwrap();
    let id = header["queryId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    let reply = only_json(&done(&mut h, run.query, QueryOutcome::Json("[]".into())), 1);
    assert_eq!(reply["queryId"], json!(id));
}

#[test]
fn duplicate_in_flight_query_id_is_refused() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    h.text(1, json!({"type":"json","sql":"select 1","queryId":"q"}));
    let effects = h.text(1, json!({"type":"json","sql":"select 2","queryId":"q"}));
    let reply = only_json(&effects, 1);
    assert_eq!(reply["queryId"], json!("q"));
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .starts_with("duplicate queryId"));
}

#[test]
fn inflight_cap_is_enforced() {
    let mut h = Harness::new(Config {
        limits: Limits {
            max_inflight_per_conn: Some(2),
            ..Limits::default()
        },
        ..Config::default()
    });
    h.open(1);
    h.text(1, json!({"type":"json","sql":"a","queryId":1}));
    h.text(1, json!({"type":"json","sql":"b","queryId":2}));
    let effects = h.text(1, json!({"type":"json","sql":"c","queryId":3}));
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","queryId":3,"error":"max_inflight_per_conn exceeded (limit 2)"})
    );
}

#[test]
fn cancel_interrupts_acks_and_ends_the_query_with_cancelled() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let run = run_effect(&h.text(1, json!({"type":"json","sql":"select 1","queryId":"q"})));
    let effects = h.text(1, json!({"type":"cancel","queryId":"q"}));
    assert!(effects.contains(&Effect::Interrupt { query: run.query }));
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"cancelAck","queryId":"q","cancelled":true})
    );
    let effects = done(
        &mut h,
        run.query,
        QueryOutcome::Failed("INTERRUPT Error".into()),
    );
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","queryId":"q","error":"Query was cancelled"})
    );
    // Once finished, a second terminal reply is impossible.
    assert!(done(&mut h, run.query, QueryOutcome::Json("[]".into())).is_empty());
}

#[test]
fn cancel_of_a_finished_or_unknown_query_is_not_cancelled() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let effects = h.text(1, json!({"type":"cancel","queryId":"nope"}));
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"cancelAck","queryId":"nope","cancelled":false})
    );
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::Interrupt { .. })));
}

#[test]
fn a_query_that_finished_despite_cancel_delivers_its_result() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let run = run_effect(&h.text(1, json!({"type":"json","sql":"s","queryId":"q"})));
    h.text(1, json!({"type":"cancel","queryId":"q"}));
    let effects = done(&mut h, run.query, QueryOutcome::Json("[1]".into()));
    assert_eq!(only_json(&effects, 1)["type"], json!("json"));
}

#[test]
fn closing_a_connection_interrupts_its_queries_and_sends_nothing_more() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let run = run_effect(&h.text(1, json!({"type":"json","sql":"s","queryId":"q"})));
    h.server.handle_closed(ConnId(1), h.now()).unwrap();
    assert!(h.drain().contains(&Effect::Interrupt { query: run.query }));
    let effects = done(&mut h, run.query, QueryOutcome::Json("[]".into()));
    assert!(sent_json(&effects, 1).is_empty());
}

#[test]
fn uploads_are_acked_and_invalidate_the_cache() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let header = r#"{"type":"uploadArrow","queryId":"u","tableName":"t"}"#;
    let mut frame = (header.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(b"IPC");
    let effects = h.binary(1, frame);
    let upload = effects
        .iter()
        .find_map(|e| match e {
            Effect::UploadTable(u) => Some(u.clone()),
            _ => None,
        })
        .expect("upload effect");
    assert_eq!(upload.table_name, "t");
    assert_eq!(&upload.payload[..], b"IPC");
    h.server
        .handle_upload_done(upload.query, crate::UploadOutcome::Written, h.now())
        .unwrap();
    let effects = h.drain();
    assert!(effects.contains(&Effect::InvalidateCache));
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"uploadAck","queryId":"u"})
    );
}

#[test]
fn a_slow_reader_past_the_outbound_cap_is_closed_and_its_queries_interrupted() {
    let mut h = Harness::new(Config {
        limits: Limits {
            max_outbound_bytes_per_conn: Some(100),
            ..Limits::default()
        },
        ..Config::default()
    });
    h.open(1);
    let first = run_effect(&h.text(1, json!({"type":"json","sql":"a","queryId":"a"})));
    let second = run_effect(&h.text(1, json!({"type":"json","sql":"b","queryId":"b"})));
    let effects = done(&mut h, first.query, QueryOutcome::Json("x".repeat(200)));
    assert!(
        sent_json(&effects, 1).is_empty(),
        "the oversized reply is not queued"
    );
    assert_eq!(closes(&effects), vec![(1, 1008)]);
    assert!(effects.contains(&Effect::Interrupt {
        query: second.query
    }));

    // Reported writes free the budget.
    let mut h = Harness::new(Config {
        limits: Limits {
            max_outbound_bytes_per_conn: Some(100),
            ..Limits::default()
        },
        ..Config::default()
    });
    h.open(1);
    for i in 0..5 {
        let effects = h.text(
            1,
            json!({"type":"subscribe","channel":format!("channel-{i}")}),
        );
        let Effect::Send { frame, .. } = &effects[0] else {
            panic!()
        };
        h.server.handle_sent(ConnId(1), frame.len()).unwrap();
    }
    assert_eq!(h.server.connection_count(), 1);
}

#[test]
fn a_query_past_its_timeout_is_interrupted_and_answered_with_the_timeout() {
    let mut h = Harness::new(Config {
        query_timeout_ms: Some(1_000),
        // Only the query's timer, so `poll_timeout` shows it.
        ping_interval_ms: None,
        idle_timeout_ms: None,
        ..Config::default()
    });
    h.open(1);
    let run = run_effect(&h.text(1, json!({"type":"json","sql":"select 1","queryId":"slow"})));
    h.now += 999;
    h.server.handle_timeout(h.now()).unwrap();
    assert!(h.drain().is_empty(), "not yet");
    h.now += 1;
    h.server.handle_timeout(h.now()).unwrap();
    assert_eq!(h.drain(), vec![Effect::Interrupt { query: run.query }]);
    let effects = done(&mut h, run.query, QueryOutcome::Cancelled);
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","queryId":"slow","error":"query timeout (1000 ms) exceeded"})
    );
    // A query that finishes in time disarms its timer.
    let run = run_effect(&h.text(1, json!({"type":"json","sql":"select 2","queryId":"quick"})));
    done(&mut h, run.query, QueryOutcome::Json("[]".into()));
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn read_only_refuses_exec_writes_and_uploads_by_name() {
    let mut h = Harness::new(Config {
        read_only: true,
        ..Config::default()
    });
    h.open(1);
    let refused = "the server is read-only (--read-only): writes are refused";
    // An exec writes by its type: refused before anything runs.
    let effects = h.text(
        1,
        json!({"type":"exec","sql":"create table t(a int)","queryId":1}),
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::RunQuery(_))));
    assert_eq!(only_json(&effects, 1)["error"], refused);
    // SQL is DuckDB's to classify: it may run only as a read, and DuckDB's verdict refuses it.
    let effects = h.text(
        1,
        json!({"type":"json","sql":"insert into t values (1) returning a","queryId":2}),
    );
    let run = runs(&effects)[0].clone();
    assert_eq!(run.gate, crate::Gate::ReadsOnly);
    h.server
        .handle_query_done(
            run.query,
            QueryOutcome::NotARead("INSERT".into()),
            false,
            h.now(),
        )
        .unwrap();
    let effects = h.drain();
    assert_eq!(only_json(&effects, 1)["error"], refused);
    assert_eq!(only_json(&effects, 1)["queryId"], 2);
    assert!(!effects.contains(&Effect::InvalidateCache), "nothing ran");
    assert_eq!(h.server.inflight_count(ConnId(1)), 0);
    let reads = h.text(1, json!({"type":"json","sql":"select 1","queryId":3}));
    assert_eq!(runs(&reads)[0].gate, crate::Gate::ReadsOnly);
}
