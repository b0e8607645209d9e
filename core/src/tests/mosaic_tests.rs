//! Mosaic's socket protocol: no ids, answers in the order asked, bare results.

use bytes::Bytes;
use serde_json::json;

use super::harness::{runs, sent_binary, sent_json, Harness};
use crate::{Config, ConnectionInfo, Dialect, Effect, Frame, Gate, QueryHandle, QueryOutcome};

fn mosaic() -> ConnectionInfo {
    ConnectionInfo {
        dialect: Dialect::MosaicSocket,
        ..Default::default()
    }
}

fn sent(effects: &[Effect]) -> Vec<Frame> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn answers_come_in_request_order_as_bare_results() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, mosaic());
    let arrow = runs(&h.text(1, json!({"type":"arrow","sql":"select 1"})))[0].clone();
    assert!(arrow.arrow_header.is_empty(), "bare IPC");
    assert_eq!(
        arrow.gate,
        Gate::ClassifyFirst,
        "DuckDB says whether it is a read"
    );
    let json_effects = h.text(1, json!({"type":"json","sql":"select 2"}));
    assert!(
        runs(&json_effects).is_empty(),
        "held until the first is classified"
    );
    let json_query = runs(&h.classified_read(arrow.query))[0].clone();
    assert_eq!(json_query.json_header, None);
    let bad = h.text(1, json!({"type":"subscribe","channel":"c"}));
    assert!(sent(&bad).is_empty(), "waits its turn");
    let finish = |h: &mut Harness, q: QueryHandle, o: QueryOutcome| {
        h.server.handle_query_done(q, o, false, h.now()).unwrap();
        h.drain()
    };
    assert!(sent(&finish(
        &mut h,
        json_query.query,
        QueryOutcome::Json("[{\"x\":2}]".into())
    ))
    .is_empty());
    let effects = finish(
        &mut h,
        arrow.query,
        QueryOutcome::Arrow(Bytes::from_static(b"IPC")),
    );
    assert_eq!(
        sent(&effects),
        vec![
            Frame::Binary(Bytes::from_static(b"IPC")),
            Frame::Text("[{\"x\":2}]".into()),
            Frame::Text(
                json!({"error":"`subscribe` messages are not part of Mosaic's socket protocol (send arrow, json or exec)"})
                    .to_string()
            ),
        ]
    );
}

/// Mosaic's servers run a socket's messages one at a time; duckwire runs its reads together
/// but a write alone: after the queries sent before it, before the ones sent after it.
#[test]
fn a_write_runs_alone_between_the_reads_around_it() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, mosaic());
    let finish = |h: &mut Harness, q: QueryHandle, o: QueryOutcome| {
        h.server.handle_query_done(q, o, false, h.now()).unwrap();
        h.drain()
    };
    let before = runs(&h.text(1, json!({"type":"json","sql":"select 1 as x"})))[0].clone();
    h.classified_read(before.query);
    let exec = json!({"type":"exec","sql":"create table t as select 1 as a"});
    assert!(
        runs(&h.text(1, exec)).is_empty(),
        "the write waits for the read before it"
    );
    let count = json!({"type":"json","sql":"select count(*) as n from t"});
    assert!(
        runs(&h.text(1, count)).is_empty(),
        "the read after the write waits for it"
    );
    let also = json!({"type":"arrow","sql":"select 2"});
    assert!(
        runs(&h.text(1, also)).is_empty(),
        "and so does every later query"
    );

    let effects = finish(
        &mut h,
        before.query,
        QueryOutcome::Json("[{\"x\":1}]".into()),
    );
    assert_eq!(sent(&effects), vec![Frame::Text("[{\"x\":1}]".into())]);
    let started = runs(&effects);
    assert_eq!(started.len(), 1, "the write alone: {started:?}");
    assert_eq!(started[0].sql, "create table t as select 1 as a");

    let effects = finish(&mut h, started[0].query, QueryOutcome::NoResultSet);
    assert_eq!(sent(&effects), vec![Frame::Text("{}".into())]);
    let count = runs(&effects);
    assert_eq!(
        count.iter().map(|r| r.sql.as_str()).collect::<Vec<_>>(),
        ["select count(*) as n from t"],
        "the read after it starts once it finished"
    );
    let also = runs(&h.classified_read(count[0].query));
    assert_eq!(
        also.iter().map(|r| r.sql.as_str()).collect::<Vec<_>>(),
        ["select 2"],
        "and the next one once DuckDB called the first a read; both run together"
    );
}

/// The keyword hint cannot tell `with … insert` from a read: DuckDB's verdict hands it back,
/// unrun, and it runs alone after the queries before it and before the ones after it.
#[test]
fn a_write_the_hint_took_for_a_read_is_handed_back_and_runs_alone() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, mosaic());
    let finish = |h: &mut Harness, q: QueryHandle, o: QueryOutcome, wrote: bool| {
        h.server.handle_query_done(q, o, wrote, h.now()).unwrap();
        h.drain()
    };
    let before = runs(&h.text(1, json!({"type":"json","sql":"select 1 as x"})))[0].clone();
    h.classified_read(before.query);
    let sql = "with a as (select 1) insert into t select * from a";
    let disguised = runs(&h.text(1, json!({"type":"exec","sql":"select 0"})));
    assert_eq!(
        disguised.len(),
        0,
        "an exec is a write by its type: it waits"
    );
    let effects = finish(
        &mut h,
        before.query,
        QueryOutcome::Json("[1]".into()),
        false,
    );
    let exec = runs(&effects)[0].clone();
    assert_eq!(exec.gate, Gate::Any);
    finish(&mut h, exec.query, QueryOutcome::NoResultSet, true);

    let write = runs(&h.text(1, json!({"type":"json","sql":sql})))[0].clone();
    assert_eq!(write.gate, Gate::ClassifyFirst);
    let after = h.text(1, json!({"type":"json","sql":"select count(*) from t"}));
    assert!(runs(&after).is_empty(), "waits for DuckDB's verdict");
    let effects = finish(
        &mut h,
        write.query,
        QueryOutcome::NotARead("INSERT".into()),
        false,
    );
    assert!(
        sent(&effects).is_empty(),
        "nothing is answered: it has not run"
    );
    let again = runs(&effects);
    assert_eq!(again.len(), 1, "it runs again, alone: {again:?}");
    assert_eq!((again[0].sql.as_str(), again[0].gate), (sql, Gate::Any));
    let effects = finish(&mut h, again[0].query, QueryOutcome::NoResultSet, true);
    assert_eq!(sent(&effects), vec![Frame::Text("{}".into())]);
    assert!(effects.contains(&Effect::InvalidateCache));
    let later = runs(&effects);
    assert_eq!(
        later[0].sql, "select count(*) from t",
        "then the read after it"
    );
}

#[test]
fn failures_and_binary_messages_answer_errors() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, mosaic());
    let q = runs(&h.text(1, json!({"type":"json","sql":"select nope"})))[0].query;
    h.server
        .handle_query_done(
            q,
            QueryOutcome::Failed("Binder Error: nope".into()),
            false,
            h.now(),
        )
        .unwrap();
    assert_eq!(
        sent_json(&h.drain(), 1),
        vec![json!({"error":"Binder Error: nope"})]
    );
    let effects = h.binary(1, vec![1, 2, 3]);
    assert_eq!(
        sent_json(&effects, 1),
        vec![json!({"error":"binary messages are not part of Mosaic's socket protocol"})]
    );
    assert!(sent_binary(&effects, 1).is_empty());
}

#[test]
fn the_token_comes_with_the_upgrade() {
    let mut h = Harness::new(Config {
        auth_token: Some("s3cret".into()),
        ..Config::default()
    });
    h.open_with(1, mosaic());
    let effects = h.text(1, json!({"type":"json","sql":"select 1"}));
    assert!(runs(&effects).is_empty());
    assert_eq!(
        sent_json(&effects, 1),
        vec![json!({"error":"unauthorized"})]
    );
    h.open_with(
        2,
        ConnectionInfo {
            url_token: Some("s3cret".into()),
            ..mosaic()
        },
    );
    let first = runs(&h.text(2, json!({"type":"json","sql":"select 1"})));
    assert_eq!(first.len(), 1);
    h.classified_read(first[0].query);
    // Closing the socket interrupts what it had running.
    let q = runs(&h.text(2, json!({"type":"json","sql":"select 2"})))[0].query;
    h.server.handle_closed(crate::ConnId(2), h.now()).unwrap();
    assert!(h.drain().contains(&Effect::Interrupt { query: q }));
}

/// What a text is depends on the text alone: once DuckDB called it a read, the same text is
/// not asked about again, and runs beside the queries before it at once.
#[test]
fn a_text_duckdb_called_a_read_is_not_asked_about_again() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, mosaic());
    let first = runs(&h.text(1, json!({"type":"json","sql":"select 1"})))[0].clone();
    assert_eq!(first.gate, Gate::ClassifyFirst);
    h.classified_read(first.query);
    let again = runs(&h.text(1, json!({"type":"json","sql":"select 1"})));
    assert_eq!(again.len(), 1, "starts at once, beside the first");
    assert_eq!(again[0].gate, Gate::Any);
    let other = runs(&h.text(1, json!({"type":"json","sql":"select 2"})));
    assert_eq!(
        other[0].gate,
        Gate::ClassifyFirst,
        "another text is asked about"
    );
}
