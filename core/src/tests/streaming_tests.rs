//! Results sent as they are produced (PROTOCOL §3b): the reply starts when the executor says
//! so, the window is counted as queued, and a failure after the start closes the connection.

use bytes::Bytes;
use serde_json::json;

use super::harness::*;
use super::http_tests::{http_info, post};
use crate::codec::encode_arrow_frame_header;
use crate::server::close_code;
use crate::{
    Config, ConnId, ConnectionInfo, Dialect, Effect, HttpResponse, Limits, QueryHandle, QueryId,
    QueryOutcome, RunQuery, StreamPolicy, StreamReader,
};

const WINDOW: usize = 1 << 20;

fn config() -> Config {
    Config {
        stream_results_above: Some(4096),
        stream_window_bytes: WINDOW,
        ..Config::default()
    }
}

/// An `arrow` query from connection 1, as the core asks to run it.
fn arrow_query(h: &mut Harness, sql: &str, id: &str) -> RunQuery {
    runs(&h.text(1, json!({"type":"arrow","sql":sql,"queryId":id})))[0].clone()
}

fn streaming(h: &mut Harness, query: QueryHandle) -> Vec<Effect> {
    h.server.handle_query_streaming(query, h.now()).unwrap();
    h.drain()
}

fn done(h: &mut Harness, query: QueryHandle, outcome: QueryOutcome) -> Vec<Effect> {
    h.server
        .handle_query_done(query, outcome, false, h.now())
        .unwrap();
    h.drain()
}

fn stream_sends(effects: &[Effect]) -> Vec<(u64, QueryHandle, usize)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SendStream {
                conn,
                query,
                window,
            } => Some((conn.0, *query, *window)),
            _ => None,
        })
        .collect()
}

/// The reasons of the connections closed with 1011 (a stream broken after it began).
fn broken_streams(effects: &[Effect]) -> Vec<(u64, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Close { conn, code, reason } if *code == close_code::INTERNAL_ERROR => {
                Some((conn.0, reason.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn queries_with_rows_carry_the_stream_policy_and_none_disables_it() {
    let mut h = Harness::new(config());
    h.open(1);
    let arrow = arrow_query(&mut h, "select 1", "a");
    assert_eq!(
        arrow.stream,
        Some(StreamPolicy {
            above: 4096,
            window: WINDOW
        })
    );
    let rows = runs(&h.text(1, json!({"type":"json","sql":"select 1","queryId":"j"})));
    assert_eq!(rows[0].stream, arrow.stream, "JSON is streamed as Arrow is");
    let exec = runs(&h.text(1, json!({"type":"exec","sql":"select 1","queryId":"e"})));
    assert_eq!(exec[0].stream, None, "an exec has no rows to stream");

    let mut h = Harness::new(Config {
        stream_results_above: None,
        ..config()
    });
    h.open(1);
    assert_eq!(arrow_query(&mut h, "select 1", "a").stream, None);
}

#[test]
fn a_streamed_reply_starts_on_the_executors_word_and_ends_without_another_message() {
    let mut h = Harness::new(config());
    h.open(1);
    let run = arrow_query(&mut h, "select 1", "a");
    let started = streaming(&mut h, run.query);
    assert_eq!(stream_sends(&started), vec![(1, run.query, WINDOW)]);
    assert_eq!(h.server.inflight_count(ConnId(1)), 1, "still running");
    let ended = done(&mut h, run.query, QueryOutcome::Streamed);
    assert!(ended.is_empty(), "the stream was the reply: {ended:?}");
    assert_eq!(h.server.inflight_count(ConnId(1)), 0);
}

/// A connection whose outbound cap holds one window (and a little), after one stream that
/// ended but whose window the writer has not reported yet.
fn after_one_stream_under_a_window_cap() -> Harness {
    let mut h = Harness::new(Config {
        limits: Limits {
            max_outbound_bytes_per_conn: Some(WINDOW + 100),
            ..Limits::default()
        },
        ..config()
    });
    h.open(1);
    let run = arrow_query(&mut h, "select 1", "a");
    assert_eq!(stream_sends(&streaming(&mut h, run.query)).len(), 1);
    done(&mut h, run.query, QueryOutcome::Streamed);
    h
}

#[test]
fn the_window_counts_against_the_outbound_cap_until_the_writer_reports_it() {
    // A second stream does not fit beside the first's unreported window: the cap closes.
    let mut h = after_one_stream_under_a_window_cap();
    let second = arrow_query(&mut h, "select 2", "b");
    let refused = streaming(&mut h, second.query);
    assert!(stream_sends(&refused).is_empty());
    assert_eq!(closes(&refused), vec![(1, close_code::POLICY_VIOLATION)]);

    // Reported sent, the window is free again.
    let mut h = after_one_stream_under_a_window_cap();
    h.server.handle_sent(ConnId(1), WINDOW).unwrap();
    let second = arrow_query(&mut h, "select 2", "b");
    assert_eq!(stream_sends(&streaming(&mut h, second.query)).len(), 1);
}

#[test]
fn a_failure_after_the_stream_began_closes_the_connection_with_its_reason() {
    let mut h = Harness::new(config());
    h.open(1);
    let run = arrow_query(&mut h, "select 1", "q7");
    streaming(&mut h, run.query);
    let failed = done(
        &mut h,
        run.query,
        QueryOutcome::Failed("Invalid Input Error: boom".into()),
    );
    assert!(
        sent_json(&failed, 1).is_empty(),
        "no message after a cut one"
    );
    let reason = "query q7 failed after its result began: Invalid Input Error: boom";
    assert_eq!(broken_streams(&failed), vec![(1, reason.into())]);
    assert_eq!(closes(&failed).len(), 1);
}

#[test]
fn a_cancel_after_the_stream_began_is_acknowledged_then_closes_the_connection() {
    let mut h = Harness::new(config());
    h.open(1);
    let run = arrow_query(&mut h, "select 1", "c");
    streaming(&mut h, run.query);
    let cancel = h.text(1, json!({"type":"cancel","queryId":"c"}));
    assert!(cancel
        .iter()
        .any(|e| matches!(e, Effect::Interrupt { query } if *query == run.query)));
    assert_eq!(
        only_json(&cancel, 1),
        json!({"type":"cancelAck","queryId":"c","cancelled":true})
    );
    let ended = done(&mut h, run.query, QueryOutcome::Cancelled);
    let reason = "query c failed after its result began: Query was cancelled";
    assert_eq!(broken_streams(&ended), vec![(1, reason.into())]);
}

#[test]
fn an_interrupted_query_that_reports_its_stream_late_starts_nothing() {
    // The worker then ends interrupted, or, if the rest of the result fit in the window
    // before the driver dropped the stream nobody was given, "whole": the stream went
    // nowhere either way, and the query is answered as any cancelled query.
    for outcome in [QueryOutcome::Cancelled, QueryOutcome::Streamed] {
        let mut h = Harness::new(config());
        h.open(1);
        let run = arrow_query(&mut h, "select 1", "c");
        h.text(1, json!({"type":"cancel","queryId":"c"}));
        assert!(stream_sends(&streaming(&mut h, run.query)).is_empty());
        assert!(!h.server.is_streaming(run.query));
        let ended = done(&mut h, run.query, outcome.clone());
        assert_eq!(
            sent_json(&ended, 1),
            vec![json!({"type":"error","queryId":"c","error":"Query was cancelled"})],
            "{outcome:?}: answered as any cancelled query"
        );
        assert!(closes(&ended).is_empty());
    }
}

#[test]
fn a_query_timed_out_before_its_stream_began_answers_the_timeout() {
    let mut h = Harness::new(Config {
        query_timeout_ms: Some(100),
        ..config()
    });
    h.open(1);
    let run = arrow_query(&mut h, "select 1", "t");
    h.now += 200;
    h.server.handle_timeout(h.now()).unwrap();
    assert!(h
        .drain()
        .iter()
        .any(|e| matches!(e, Effect::Interrupt { .. })));
    assert!(stream_sends(&streaming(&mut h, run.query)).is_empty());
    let ended = done(&mut h, run.query, QueryOutcome::Streamed);
    assert_eq!(
        sent_json(&ended, 1),
        vec![json!({"type":"error","queryId":"t","error":"query timeout (100 ms) exceeded"})]
    );
}

fn persisted(id: &str) -> serde_json::Value {
    json!({"type":"arrow","sql":"select big","queryId":id,"persist":true})
}

fn shares(effects: &[Effect]) -> Vec<(QueryHandle, usize, Vec<StreamReader>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ShareStream {
                source,
                cut,
                readers,
            } => Some((*source, *cut, readers.clone())),
            _ => None,
        })
        .collect()
}

fn interrupts(effects: &[Effect]) -> Vec<QueryHandle> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Interrupt { query } => Some(*query),
            _ => None,
        })
        .collect()
}

/// Connection 1 leads "a", 2 and 3 wait with "b" and "c"; the leader's result streams.
/// Returns the leader's handle and the readers' (in connection order).
fn one_stream_three_readers(h: &mut Harness) -> (QueryHandle, Vec<QueryHandle>) {
    for conn in 1..=3 {
        h.open(conn);
    }
    let leader = runs(&h.text(1, persisted("a")))[0].query;
    assert!(runs(&h.text(2, persisted("b"))).is_empty(), "waits");
    assert!(runs(&h.text(3, persisted("c"))).is_empty(), "waits");
    let started = streaming(h, leader);
    let shared = shares(&started);
    assert_eq!(shared.len(), 1);
    let (source, cut, readers) = shared[0].clone();
    assert_eq!(source, leader);
    assert_eq!(
        cut,
        encode_arrow_frame_header(&QueryId::Str("a".into())).len()
    );
    let heads: Vec<(u64, Bytes)> = readers
        .iter()
        .map(|r| (r.conn.0, r.header.clone()))
        .collect();
    assert_eq!(
        heads,
        vec![
            (2, encode_arrow_frame_header(&QueryId::Str("b".into()))),
            (3, encode_arrow_frame_header(&QueryId::Str("c".into()))),
        ],
        "each reply keeps its own query id"
    );
    // The readers are announced before any reply starts (the driver splits the stream
    // first), and nothing runs again.
    let share_at = started
        .iter()
        .position(|e| matches!(e, Effect::ShareStream { .. }));
    let first_send = started
        .iter()
        .position(|e| matches!(e, Effect::SendStream { .. }));
    assert!(share_at < first_send);
    assert!(runs(&started).is_empty());
    let readers: Vec<QueryHandle> = readers.iter().map(|r| r.query).collect();
    assert_eq!(
        stream_sends(&started),
        vec![
            (1, leader, WINDOW),
            (2, readers[0], WINDOW),
            (3, readers[1], WINDOW)
        ]
    );
    (leader, readers)
}

#[test]
fn waiters_for_a_result_that_streams_read_the_same_stream() {
    let mut h = Harness::new(config());
    let (leader, readers) = one_stream_three_readers(&mut h);
    assert!(readers.iter().all(|r| h.server.is_streaming(*r)));
    assert_eq!(h.server.queries_shared(), 2);
    let ended = done(&mut h, leader, QueryOutcome::Streamed);
    assert!(
        ended.is_empty(),
        "whole: nothing more for anyone: {ended:?}"
    );
    assert!(!h.server.is_streaming(leader));
    assert!(readers.iter().all(|r| !h.server.is_streaming(*r)));
}

#[test]
fn a_shared_stream_that_fails_closes_every_readers_connection_with_its_own_id() {
    let mut h = Harness::new(config());
    let (leader, _) = one_stream_three_readers(&mut h);
    let failed = done(&mut h, leader, QueryOutcome::Failed("boom".into()));
    let reason = |id: &str| format!("query {id} failed after its result began: boom");
    assert_eq!(
        broken_streams(&failed),
        vec![(1, reason("a")), (2, reason("b")), (3, reason("c"))]
    );
}

#[test]
fn a_reader_that_cancels_leaves_the_others_reading() {
    let mut h = Harness::new(config());
    let (leader, _) = one_stream_three_readers(&mut h);
    let cancel = h.text(2, json!({"type":"cancel","queryId":"b"}));
    assert!(interrupts(&cancel).is_empty(), "the others still read");
    assert_eq!(
        sent_json(&cancel, 2),
        vec![json!({"type":"cancelAck","queryId":"b","cancelled":true})]
    );
    let reason = "query b failed after its result began: Query was cancelled";
    assert_eq!(broken_streams(&cancel), vec![(2, reason.into())]);
    // The leader itself cancels: the last reader still reads, the run goes on.
    let cancel = h.text(1, json!({"type":"cancel","queryId":"a"}));
    assert!(interrupts(&cancel).is_empty());
    assert_eq!(broken_streams(&cancel).len(), 1);
    let ended = done(&mut h, leader, QueryOutcome::Streamed);
    assert!(closes(&ended).is_empty(), "c's reply is whole: {ended:?}");
}

#[test]
fn the_run_stops_once_nobody_reads_its_stream() {
    let mut h = Harness::new(config());
    let (leader, _) = one_stream_three_readers(&mut h);
    for conn in [1, 3] {
        h.server.handle_closed(ConnId(conn), h.now()).unwrap();
        assert!(interrupts(&h.drain()).is_empty(), "a reader is left");
    }
    h.server.handle_closed(ConnId(2), h.now()).unwrap();
    assert_eq!(interrupts(&h.drain()), vec![leader]);
    // Its worker then ends interrupted: nobody is left to tell.
    assert!(done(&mut h, leader, QueryOutcome::Cancelled).is_empty());
}

#[test]
fn a_reader_that_times_out_leaves_alone() {
    let mut h = Harness::new(Config {
        query_timeout_ms: Some(100),
        ..config()
    });
    h.open(1);
    let leader = runs(&h.text(1, persisted("a")))[0].query;
    h.now += 60;
    h.open(2);
    h.text(2, persisted("b"));
    streaming(&mut h, leader);
    // The leader's deadline comes first: it leaves, the run goes on for "b".
    h.now += 50;
    h.server.handle_timeout(h.now()).unwrap();
    let timed_out = h.drain();
    assert!(interrupts(&timed_out).is_empty());
    let reason = "query a failed after its result began: query timeout (100 ms) exceeded";
    assert_eq!(broken_streams(&timed_out), vec![(1, reason.into())]);
    // Then b's: nobody reads, the run is interrupted.
    h.now += 60;
    h.server.handle_timeout(h.now()).unwrap();
    let timed_out = h.drain();
    assert_eq!(interrupts(&timed_out), vec![leader]);
    assert_eq!(broken_streams(&timed_out).len(), 1);
}

#[test]
fn a_waiter_whose_connection_has_replies_queued_runs_on_its_own() {
    let mut h = Harness::new(config());
    h.open(1);
    h.open(2);
    let leader = runs(&h.text(1, persisted("a")))[0].query;
    // Connection 2 has a reply its writer has not yet reported written: a stream for it
    // would wait behind it, so it does not read the leader's.
    let other = runs(&h.text(2, json!({"type":"json","sql":"select 1","queryId":"x"})))[0].query;
    h.classified_read(other);
    assert_eq!(
        done(&mut h, other, QueryOutcome::Json("[]".into())).len(),
        1
    );
    assert!(runs(&h.text(2, persisted("b"))).is_empty(), "waits");
    let started = streaming(&mut h, leader);
    assert!(shares(&started).is_empty());
    let rerun = runs(&started);
    assert_eq!(rerun.len(), 1, "the waiter runs its own query");
    assert_eq!(rerun[0].conn, ConnId(2));
    assert_eq!(stream_sends(&started), vec![(1, leader, WINDOW)]);
}

#[test]
fn a_waiter_on_a_connection_already_reading_the_stream_runs_on_its_own() {
    let mut h = Harness::new(config());
    h.open(1);
    h.open(2);
    let leader = runs(&h.text(1, persisted("a")))[0].query;
    // The same client asks twice on one socket (its second reply would wait for the first,
    // which could not end while the stream waits for the second), and once elsewhere.
    assert!(runs(&h.text(1, persisted("a2"))).is_empty(), "waits");
    assert!(runs(&h.text(2, persisted("b"))).is_empty(), "waits");
    assert!(runs(&h.text(2, persisted("b2"))).is_empty(), "waits");
    let started = streaming(&mut h, leader);
    let shared = shares(&started);
    assert_eq!(shared.len(), 1);
    let reading: Vec<u64> = shared[0].2.iter().map(|r| r.conn.0).collect();
    assert_eq!(reading, vec![2], "one reader per connection");
    let rerun: Vec<u64> = runs(&started).iter().map(|r| r.conn.0).collect();
    assert_eq!(
        rerun,
        vec![1, 2],
        "the second of each connection runs on its own"
    );
}

#[test]
fn waiters_of_a_leader_whose_reply_waits_run_on_their_own() {
    let mut h = Harness::new(config());
    h.open(1);
    h.open(2);
    // The leader's connection has a reply its writer has not reported written.
    let other = runs(&h.text(1, json!({"type":"json","sql":"select 1","queryId":"x"})))[0].query;
    h.classified_read(other);
    done(&mut h, other, QueryOutcome::Json("[]".into()));
    let leader = runs(&h.text(1, persisted("a")))[0].query;
    assert!(runs(&h.text(2, persisted("b"))).is_empty(), "waits");
    let started = streaming(&mut h, leader);
    assert!(shares(&started).is_empty());
    assert_eq!(runs(&started).len(), 1, "the waiter runs its own query");
}

#[test]
fn an_http_waiter_reads_the_stream_in_its_turn_and_bare() {
    let mut h = Harness::new(config());
    h.open_with(1, http_info());
    h.open_with(2, http_info());
    let body = json!({"type":"arrow","sql":"select big","persist":true});
    h.server
        .handle_http_request(ConnId(1), post(body.clone()), h.now())
        .unwrap();
    let leader = runs(&h.drain())[0].query;
    h.server
        .handle_http_request(ConnId(2), post(body), h.now())
        .unwrap();
    assert!(runs(&h.drain()).is_empty(), "waits");
    let started = streaming(&mut h, leader);
    let shared = shares(&started);
    assert_eq!(shared.len(), 1);
    let (_, cut, readers) = shared[0].clone();
    assert_eq!((cut, readers[0].header.len()), (0, 0), "bare: no header");
    let answers: Vec<(u64, HttpResponse)> = started
        .iter()
        .filter_map(|e| match e {
            Effect::Respond { conn, response } => Some((conn.0, response.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        vec![
            (
                1,
                HttpResponse::Streamed {
                    query: leader,
                    window: WINDOW
                }
            ),
            (
                2,
                HttpResponse::Streamed {
                    query: readers[0].query,
                    window: WINDOW
                }
            ),
        ]
    );
}

#[test]
fn an_http_stream_takes_its_turn_among_the_answers() {
    let mut h = Harness::new(config());
    h.open_with(1, http_info());
    let mut handles = Vec::new();
    for sql in ["select 1", "select big"] {
        h.server
            .handle_http_request(ConnId(1), post(json!({"type":"arrow","sql":sql})), h.now())
            .unwrap();
        let mut started = runs(&h.drain());
        if let Some(&first) = handles.first() {
            // The write barrier holds the second until DuckDB calls the first a read.
            assert!(started.is_empty());
            started = runs(&h.classified_read(first));
        }
        handles.push(started[0].query);
    }
    // The second streams first: its answer waits for the first one's.
    let early = streaming(&mut h, handles[1]);
    assert!(!early.iter().any(|e| matches!(e, Effect::Respond { .. })));
    let first = done(
        &mut h,
        handles[0],
        QueryOutcome::Arrow(Bytes::from_static(b"x")),
    );
    let answers: Vec<HttpResponse> = first
        .iter()
        .filter_map(|e| match e {
            Effect::Respond { response, .. } => Some(response.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers,
        vec![
            HttpResponse::Arrow(Bytes::from_static(b"x")),
            HttpResponse::Streamed {
                query: handles[1],
                window: WINDOW
            }
        ]
    );
}

#[test]
fn a_mosaic_socket_stream_is_sent_in_its_turn() {
    let mut h = Harness::new(config());
    h.open_with(
        1,
        ConnectionInfo {
            dialect: Dialect::MosaicSocket,
            ..Default::default()
        },
    );
    let run = runs(&h.text(1, json!({"type":"arrow","sql":"select big"})))[0].clone();
    h.classified_read(run.query);
    let started = streaming(&mut h, run.query);
    assert_eq!(stream_sends(&started), vec![(1, run.query, WINDOW)]);
    assert!(done(&mut h, run.query, QueryOutcome::Streamed).is_empty());
}
