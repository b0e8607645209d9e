//! Auth (§4), channels (§5), connection caps (§7), poisoning and determinism.

use serde_json::json;

use super::harness::{closes, only_json, sent_json, Harness};
use crate::{
    Config, ConnId, ConnectionInfo, Effect, Frame, Limits, Server, ServerError, MAX_AUTH_STRIKES,
};

/// A token, and no keep-alive timers, so the only timer is the authentication deadline.
fn with_token() -> Config {
    Config {
        auth_token: Some("s3cret".into()),
        ping_interval_ms: None,
        idle_timeout_ms: None,
        ..Config::default()
    }
}

#[test]
fn without_a_token_auth_is_acked() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    assert_eq!(
        only_json(&h.text(1, json!({"type":"auth","token":"x"})), 1),
        json!({"type":"authAck"})
    );
}

#[test]
fn unauthenticated_messages_are_refused_and_not_executed() {
    let mut h = Harness::new(with_token());
    h.open(1);
    let effects = h.text(1, json!({"type":"json","sql":"select 1","queryId":"q"}));
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","queryId":"q","error":"unauthorized"})
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::RunQuery(_))));
    // Even malformed input learns nothing but "unauthorized".
    let effects = h.text(1, json!({"type":"bogus"}));
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","error":"unauthorized"})
    );
    let effects = h.binary(1, b"loro".to_vec());
    assert_eq!(
        only_json(&effects, 1),
        json!({"type":"error","error":"unauthorized"})
    );
}

#[test]
fn auth_message_authenticates_the_connection() {
    let mut h = Harness::new(with_token());
    h.open(1);
    assert_eq!(
        only_json(&h.text(1, json!({"type":"auth","token":"s3cret"})), 1),
        json!({"type":"authAck"})
    );
    let effects = h.text(1, json!({"type":"json","sql":"select 1"}));
    assert!(effects.iter().any(|e| matches!(e, Effect::RunQuery(_))));
}

#[test]
fn three_wrong_tokens_close_with_1008() {
    let mut h = Harness::new(with_token());
    h.open(1);
    for strike in 1..=MAX_AUTH_STRIKES {
        let effects = h.text(1, json!({"type":"auth","token":"wrong"}));
        assert_eq!(
            sent_json(&effects, 1),
            vec![json!({"type":"error","error":"unauthorized"})]
        );
        let expected = if strike == MAX_AUTH_STRIKES {
            vec![(1, 1008)]
        } else {
            vec![]
        };
        assert_eq!(closes(&effects), expected);
    }
    assert!(h
        .text(1, json!({"type":"auth","token":"s3cret"}))
        .is_empty());
}

#[test]
fn unauthenticated_connections_are_closed_at_the_auth_deadline() {
    let mut h = Harness::new(with_token());
    h.open(1);
    let deadline = h.server.poll_timeout();
    assert_eq!(deadline, Some(crate::Millis(h.now + 30_000)));
    // Early calls do nothing.
    h.server
        .handle_timeout(crate::Millis(h.now + 29_999))
        .unwrap();
    assert!(closes(&h.drain()).is_empty());
    h.server.handle_timeout(deadline.unwrap()).unwrap();
    assert_eq!(closes(&h.drain()), vec![(1, 1008)]);
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn authenticating_in_time_cancels_the_deadline() {
    let mut h = Harness::new(with_token());
    h.open(1);
    assert!(h.server.poll_timeout().is_some());
    h.text(1, json!({"type":"auth","token":"s3cret"}));
    assert_eq!(h.server.poll_timeout(), None, "the deadline is disarmed");
    // Even a late call leaves an authenticated connection alone.
    h.server.handle_timeout(crate::Millis(u64::MAX)).unwrap();
    assert!(closes(&h.drain()).is_empty());
    // No deadline without a token, or when the upgrade already authenticated.
    let mut open = Harness::new(Config::default());
    assert!(open.open(2).is_empty());
    let mut h = Harness::new(with_token());
    let effects = h.open_with(
        3,
        ConnectionInfo {
            bearer_token: Some("s3cret".into()),
            ..ConnectionInfo::default()
        },
    );
    assert!(effects.is_empty());
}

#[test]
fn upgrade_bearer_or_url_token_authenticates() {
    let mut h = Harness::new(with_token());
    h.open_with(
        1,
        ConnectionInfo {
            bearer_token: Some("s3cret".into()),
            ..ConnectionInfo::default()
        },
    );
    h.open_with(
        2,
        ConnectionInfo {
            url_token: Some("s3cret".into()),
            ..ConnectionInfo::default()
        },
    );
    h.open_with(
        3,
        ConnectionInfo {
            url_token: Some("nope".into()),
            ..ConnectionInfo::default()
        },
    );
    assert!(h.server.is_authenticated(ConnId(1)));
    assert!(h.server.is_authenticated(ConnId(2)));
    assert!(!h.server.is_authenticated(ConnId(3)));
}

#[test]
fn foreign_browser_origins_are_closed_and_loopback_or_listed_ones_kept() {
    let mut h = Harness::new(Config {
        origins: crate::OriginPolicy::from_list("https://app.example.com"),
        ..Config::default()
    });
    let with_origin = |origin: &str| ConnectionInfo {
        origin: Some(origin.into()),
        ..ConnectionInfo::default()
    };
    assert_eq!(
        closes(&h.open_with(1, with_origin("https://evil.example"))),
        vec![(1, 1008)]
    );
    assert!(h
        .open_with(2, with_origin("http://localhost:5173"))
        .is_empty());
    assert!(h
        .open_with(3, with_origin("https://app.example.com"))
        .is_empty());
    assert!(
        h.open_with(4, ConnectionInfo::default()).is_empty(),
        "no Origin: not a browser"
    );
    let effects = h.text(1, json!({"type":"json","sql":"select 1"}));
    assert!(
        effects.is_empty(),
        "nothing from a refused connection is acted on"
    );
}

#[test]
fn authentication_belongs_to_the_connection_not_the_address() {
    let mut h = Harness::new(with_token());
    let same_peer = ConnectionInfo {
        peer: "127.0.0.1:5000".into(),
        ..ConnectionInfo::default()
    };
    h.open_with(1, same_peer.clone());
    h.open_with(2, same_peer);
    h.text(1, json!({"type":"auth","token":"s3cret"}));
    let effects = h.text(2, json!({"type":"json","sql":"select 1"}));
    assert_eq!(sent_json(&effects, 2)[0]["error"], json!("unauthorized"));
}

#[test]
fn subscribe_notify_unsubscribe() {
    let mut h = Harness::new(Config::default());
    for conn in 1..=3 {
        h.open(conn);
    }
    assert_eq!(
        only_json(&h.text(1, json!({"type":"subscribe","channel":"c"})), 1),
        json!({"type":"subscribed","channel":"c"})
    );
    h.text(2, json!({"type":"subscribe","channel":"c"}));
    // Conn 3 is not subscribed but may notify.
    let effects = h.text(3, json!({"type":"notify","channel":"c","payload":{"n":1}}));
    let notify = json!({"type":"notify","channel":"c","payload":{"n":1}});
    assert_eq!(
        sent_json(&effects, 3),
        vec![notify.clone(), json!({"type":"notifyAck","channel":"c"})]
    );
    assert_eq!(sent_json(&effects, 1), vec![notify.clone()]);
    assert_eq!(sent_json(&effects, 2), vec![notify.clone()]);

    // The sender, subscribed too, gets its echo exactly once.
    let effects = h.text(1, json!({"type":"notify","channel":"c","payload":{"n":1}}));
    assert_eq!(sent_json(&effects, 1).len(), 2);
    assert_eq!(sent_json(&effects, 2), vec![notify]);

    assert_eq!(
        only_json(&h.text(2, json!({"type":"unsubscribe","channel":"c"})), 2),
        json!({"type":"unsubscribed","channel":"c"})
    );
    let effects = h.text(1, json!({"type":"notify","channel":"c","payload":null}));
    assert!(sent_json(&effects, 2).is_empty());
}

#[test]
fn internal_topics_are_ordinary_user_channels() {
    // In the Python server `__conn:<n>` carried other connections' results.
    let mut h = Harness::new(Config::default());
    h.open(1);
    h.open(2);
    h.text(2, json!({"type":"subscribe","channel":"__conn:1"}));
    let effects = h.text(1, json!({"type":"json","sql":"select 1","queryId":"q"}));
    let Some(Effect::RunQuery(run)) = effects
        .into_iter()
        .find(|e| matches!(e, Effect::RunQuery(_)))
    else {
        panic!()
    };
    h.server
        .handle_query_done(
            run.query,
            crate::QueryOutcome::Json("[]".into()),
            false,
            h.now(),
        )
        .unwrap();
    let effects = h.drain();
    assert!(sent_json(&effects, 2).is_empty());
}

#[test]
fn subscription_cap() {
    let mut h = Harness::new(Config {
        limits: Limits {
            max_subscriptions_per_conn: Some(1),
            ..Limits::default()
        },
        ..Config::default()
    });
    h.open(1);
    h.text(1, json!({"type":"subscribe","channel":"a"}));
    // Re-subscribing to the same channel is not a new subscription.
    assert_eq!(
        only_json(&h.text(1, json!({"type":"subscribe","channel":"a"})), 1)["type"],
        json!("subscribed")
    );
    assert_eq!(
        only_json(&h.text(1, json!({"type":"subscribe","channel":"b"})), 1),
        json!({"type":"error","error":"max_subscriptions_per_conn exceeded (limit 1)"})
    );
}

#[test]
fn frame_over_the_cap_closes_with_1009() {
    let mut h = Harness::new(Config {
        limits: Limits {
            max_frame_bytes: Some(10),
            ..Limits::default()
        },
        ..Config::default()
    });
    h.open(1);
    let effects = h.frame(1, Frame::Text("x".repeat(11)));
    assert_eq!(closes(&effects), vec![(1, 1009)]);
}

#[test]
fn connections_over_the_cap_are_closed_with_1013() {
    let mut h = Harness::new(Config {
        limits: Limits {
            max_connections: Some(1),
            ..Limits::default()
        },
        ..Config::default()
    });
    assert!(h.open(1).is_empty());
    assert_eq!(closes(&h.open(2)), vec![(2, 1013)]);
    h.server.handle_closed(ConnId(1), h.now()).unwrap();
    h.server.handle_closed(ConnId(2), h.now()).unwrap();
    assert!(h.open(3).is_empty());
}

#[test]
fn the_connection_stays_open_after_per_message_errors() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    h.frame(1, Frame::Text("not json".into()));
    h.text(1, json!({"type":"nope"}));
    assert_eq!(h.server.connection_count(), 1);
    assert_eq!(
        only_json(&h.text(1, json!({"type":"subscribe","channel":"c"})), 1)["type"],
        json!("subscribed")
    );
}

#[test]
fn a_panic_inside_a_handler_poisons_the_machine() {
    let mut server = Server::new(Config::default(), [0; 16]);
    server
        .handle_open(ConnId(1), ConnectionInfo::default(), crate::Millis(0))
        .unwrap();
    server.panic_on_next_input = true;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = server.handle_frame(ConnId(1), Frame::Text("{}".into()), crate::Millis(0));
    }));
    assert!(result.is_err());
    assert!(server.is_poisoned());
    let again = server.handle_frame(
        ConnId(1),
        Frame::Text(json!({"type":"json","sql":"select 1"}).to_string()),
        crate::Millis(1),
    );
    assert_eq!(again, Err(ServerError::Poisoned));
    assert_eq!(
        server.handle_closed(ConnId(1), crate::Millis(2)),
        Err(ServerError::Poisoned)
    );
}

#[test]
fn the_same_inputs_give_the_same_effects() {
    let run = || {
        let mut h = Harness::new(Config {
            sync_enabled: true,
            ..Config::default()
        });
        let mut all = h.open(1);
        all.extend(h.text(1, json!({"type":"json","sql":"select 1"})));
        all.extend(h.text(1, json!({"type":"crdt-join","roomId":"r"})));
        format!("{all:?}")
    };
    assert_eq!(run(), run());
}

#[test]
fn peers_are_pinged_and_a_silent_one_is_closed_with_1001() {
    let mut h = Harness::new(Config {
        ping_interval_ms: Some(1_000),
        idle_timeout_ms: Some(3_000),
        ..Config::default()
    });
    h.open(1);
    h.open(2);
    let start = h.now;
    let mut pings = 0;
    // Peer 1 answers every ping; peer 2 never does.
    for step in 1..=4 {
        h.now = start + step * 1_000;
        h.server.handle_timeout(h.now()).unwrap();
        for effect in h.drain() {
            match effect {
                Effect::Ping { conn: ConnId(1) } => {
                    pings += 1;
                    h.server.handle_pong(ConnId(1), h.now()).unwrap();
                }
                Effect::Close { conn, code, .. } => {
                    assert_eq!((conn, code, h.now - start), (ConnId(2), 1001, 3_000));
                    h.server.handle_closed(conn, h.now()).unwrap();
                }
                _ => {}
            }
        }
    }
    assert_eq!(pings, 4);
    assert_eq!(h.server.connection_count(), 1, "the answering peer stays");
}

#[test]
fn a_peer_the_server_stopped_reading_is_not_closed_for_silence() {
    let mut h = Harness::new(Config {
        ping_interval_ms: None,
        idle_timeout_ms: Some(1_000),
        limits: crate::Limits {
            max_inbound_bytes_per_conn: Some(10),
            ..crate::Limits::default()
        },
        ..Config::default()
    });
    h.open(1);
    h.text(
        1,
        json!({"type":"json","sql":"select 1 as long_enough","queryId":"q"}),
    );
    assert!(h.server.is_reading_paused(ConnId(1)));
    h.now += 5_000;
    h.server.handle_timeout(h.now()).unwrap();
    assert!(closes(&h.drain()).is_empty());
}
