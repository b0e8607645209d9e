//! The HTTP door: requests through the same core as WebSocket frames.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;

use super::harness::*;
use crate::{
    Config, ConnId, ConnectionInfo, Dialect, Effect, HttpRequest, HttpResponse, Millis,
    QueryHandle, QueryOutcome,
};

pub(super) fn http_info() -> ConnectionInfo {
    ConnectionInfo {
        dialect: Dialect::Http,
        ..Default::default()
    }
}

pub(super) fn post(body: serde_json::Value) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        path: "/".into(),
        body: Bytes::from(body.to_string()),
        ..Default::default()
    }
}

fn request(h: &mut Harness, conn: u64, request: HttpRequest) -> Vec<Effect> {
    h.server
        .handle_http_request(ConnId(conn), request, h.now())
        .unwrap();
    h.drain()
}

fn responses(effects: &[Effect]) -> Vec<HttpResponse> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Respond { response, .. } => Some(response.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn answers_leave_in_request_order_whatever_order_queries_finish_in() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, http_info());
    let mut handles = Vec::new();
    for n in 0..3 {
        let effects = request(
            &mut h,
            1,
            post(json!({"type":"json","sql":format!("select {n}")})),
        );
        let run = effects.iter().find_map(|e| match e {
            Effect::RunQuery(run) => Some(run.clone()),
            _ => None,
        });
        let run = run.expect("a query runs");
        assert!(
            run.arrow_header.is_empty() && run.json_header.is_none(),
            "bare results"
        );
        h.classified_read(run.query);
        handles.push(run.query);
    }
    let done = |h: &mut Harness, handle, n: u32| {
        h.server
            .handle_query_done(handle, QueryOutcome::Json(format!("[{n}]")), false, h.now())
            .unwrap();
        responses(&h.drain())
    };
    assert!(
        done(&mut h, handles[2], 2).is_empty(),
        "waits for the first"
    );
    assert!(done(&mut h, handles[1], 1).is_empty());
    assert_eq!(
        done(&mut h, handles[0], 0),
        vec![
            HttpResponse::Json("[0]".into()),
            HttpResponse::Json("[1]".into()),
            HttpResponse::Json("[2]".into())
        ]
    );
}

#[test]
fn refusals_take_their_turn_too() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, http_info());
    let handle = started(&request(
        &mut h,
        1,
        post(json!({"type":"exec","sql":"create table t(a int)"})),
    ))[0];
    assert!(responses(&request(&mut h, 1, post(json!({"type":"json"})))).is_empty());
    h.server
        .handle_query_done(handle, QueryOutcome::NoResultSet, true, h.now())
        .unwrap();
    let effects = h.drain();
    let invalidated = effects
        .iter()
        .position(|e| *e == Effect::InvalidateCache)
        .expect("a write invalidates the cache");
    let first_answer = effects
        .iter()
        .position(|e| matches!(e, Effect::Respond { .. }))
        .unwrap();
    assert!(
        invalidated < first_answer,
        "before the write is acknowledged"
    );
    let answers = responses(&effects);
    assert_eq!(answers[0], HttpResponse::Done);
    assert_eq!(answers[1].status(), 400);
}

#[test]
fn each_request_brings_its_own_credentials_and_origin() {
    let mut h = Harness::new(Config {
        auth_token: Some("s3cret".into()),
        ..Config::default()
    });
    h.open_with(1, http_info());
    let query = json!({"type":"json","sql":"select 1"});
    let refused = responses(&request(&mut h, 1, post(query.clone())));
    assert_eq!(refused[0].status(), 401);
    let with_token = HttpRequest {
        bearer_token: Some("s3cret".into()),
        ..post(query.clone())
    };
    assert_eq!(started(&request(&mut h, 1, with_token)).len(), 1);
    let foreign = HttpRequest {
        bearer_token: Some("s3cret".into()),
        origin: Some("https://evil.example".into()),
        ..post(query)
    };
    let effects = request(&mut h, 1, foreign);
    assert!(started(&effects).is_empty());
    // Health needs no token.
    let health = HttpRequest {
        method: "GET".into(),
        path: "/healthz".into(),
        ..Default::default()
    };
    request(&mut h, 1, health);
    h.server.handle_closed(ConnId(1), h.now()).unwrap();
}

#[test]
fn closing_an_http_connection_interrupts_its_queries() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, http_info());
    let handle = started(&request(
        &mut h,
        1,
        post(json!({"type":"json","sql":"select 1"})),
    ))[0];
    h.server.handle_closed(ConnId(1), h.now()).unwrap();
    assert!(h.drain().contains(&Effect::Interrupt { query: handle }));
}

#[test]
fn an_idle_kept_alive_connection_is_closed_but_a_busy_one_is_not() {
    let mut h = Harness::new(Config {
        http_idle_timeout_ms: Some(1_000),
        ..Config::default()
    });
    h.open_with(1, http_info());
    assert_eq!(h.server.poll_timeout(), Some(Millis(h.now + 1_000)));
    let handle = started(&request(
        &mut h,
        1,
        post(json!({"type":"json","sql":"select 1"})),
    ))[0];
    assert_eq!(h.server.poll_timeout(), None, "busy: no idle clock");
    h.now += 5_000;
    h.server
        .handle_query_done(handle, QueryOutcome::Json("[]".into()), false, h.now())
        .unwrap();
    h.drain();
    let idle_at = h.server.poll_timeout().expect("idle clock restarted");
    assert_eq!(idle_at, Millis(h.now + 1_000));
    h.server.handle_timeout(idle_at).unwrap();
    assert_eq!(closes(&h.drain()), vec![(1, 1001)]);
}

#[test]
fn websocket_frames_on_an_http_connection_are_ignored() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, http_info());
    assert!(h
        .text(1, json!({"type":"json","sql":"select 1","queryId":"q"}))
        .is_empty());
}

#[derive(Debug, Clone)]
enum Step {
    /// A write or read arrives on the WebSocket (0) or HTTP (1) connection.
    Submit { http: bool, exec: bool },
    /// The executor finishes the i-th running query (it wrote, or not).
    Finish { index: usize, wrote: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(http, exec)| Step::Submit { http, exec }),
        (0usize..8, any::<bool>()).prop_map(|(index, wrote)| Step::Finish { index, wrote }),
    ]
}

proptest! {
    /// Through any door, a query that may have written invalidates the cache before anything
    /// acknowledges it: no persisted read answered after a write can come from an older
    /// cache generation.
    #[test]
    fn every_write_invalidates_before_it_is_acknowledged(steps in prop::collection::vec(step(), 1..40)) {
        let mut h = Harness::new(Config::default());
        h.open(1);
        h.open_with(2, http_info());
        let mut running: Vec<(QueryHandle, bool)> = Vec::new();
        let mut next_id = 0;
        for step in steps {
            match step {
                Step::Submit { http, exec } => {
                    let kind = if exec { "exec" } else { "json" };
                    next_id += 1;
                    let effects = if http {
                        request(&mut h, 2, post(json!({"type":kind,"sql":"x","persist":true})))
                    } else {
                        h.text(1, json!({"type":kind,"sql":"x","persist":true,"queryId":next_id}))
                    };
                    running.extend(started(&effects).into_iter().map(|q| (q, exec)));
                }
                Step::Finish { index, wrote } if !running.is_empty() => {
                    let (handle, exec) = running.remove(index % running.len());
                    let outcome = if exec { QueryOutcome::NoResultSet } else { QueryOutcome::Json("[]".into()) };
                    h.server.handle_query_done(handle, outcome, wrote, h.now()).unwrap();
                    let effects = h.drain();
                    let invalidated = effects.iter().position(|e| *e == Effect::InvalidateCache);
                    let acknowledged = effects.iter().position(|e| matches!(e, Effect::Send { .. } | Effect::Respond { .. }));
                    if wrote || exec {
                        prop_assert!(invalidated.is_some(), "a write left the cache: {effects:?}");
                        if let Some(ack) = acknowledged {
                            prop_assert!(invalidated.unwrap() < ack);
                        }
                    }
                }
                Step::Finish { .. } => {}
            }
        }
    }
}

/// What a transport could not frame is answered by the core, the same for every transport:
/// an HTTP refusal and a close, or a WebSocket close with 1009.
#[test]
fn malformed_requests_and_frames_are_answered_by_the_core() {
    let mut config = Config::default();
    config.limits.max_frame_bytes = Some(1000);
    let mut h = Harness::new(config);
    h.open_with(1, http_info());
    let cases = [
        (
            crate::Malformed::BodyTooLarge,
            413,
            "max_frame_bytes exceeded (limit 1000)",
        ),
        (
            crate::Malformed::LengthRequired,
            411,
            "Content-Length required",
        ),
        (crate::Malformed::HeadTimedOut, 408, "request head timeout"),
    ];
    for (conn, (malformed, status, message)) in (1..).zip(cases) {
        if conn > 1 {
            h.open_with(conn, http_info());
        }
        h.server
            .handle_malformed(ConnId(conn), malformed, h.now())
            .unwrap();
        let effects = h.drain();
        assert_eq!(
            responses(&effects),
            vec![HttpResponse::Error {
                status,
                message: message.into()
            }]
        );
        assert_eq!(
            closes(&effects).len(),
            1,
            "{malformed:?} closes the connection"
        );
    }
    h.open(9);
    h.server
        .handle_malformed(ConnId(9), crate::Malformed::FrameTooLarge, h.now())
        .unwrap();
    assert_eq!(closes(&h.drain()), vec![(9, 1009)]);
}

/// A request still waiting when the core closes its connection gets the reason as its answer.
#[test]
fn a_request_waiting_when_the_server_shuts_down_is_answered_503() {
    let mut h = Harness::new(Config::default());
    h.open_with(1, http_info());
    request(&mut h, 1, post(json!({"type":"json","sql":"select 1"})));
    h.server.handle_shutdown(h.now()).unwrap();
    let effects = h.drain();
    assert_eq!(
        responses(&effects),
        vec![HttpResponse::Error {
            status: 503,
            message: "server shutting down".into()
        }]
    );
}
