//! Channels across replicas (PROTOCOL §5a): what the core asks of the broker and what it
//! does with the broker's deliveries. Two cores stand for two replicas; the test carries
//! publications between them as Redis would.

use bytes::Bytes;
use serde_json::json;

use super::harness::{sent_json, Harness};
use crate::{Config, Effect};

fn replica(id: &str) -> Harness {
    Harness::new(Config {
        replica_id: Some(id.into()),
        ..Config::default()
    })
}

fn broker_subscribes(effects: &[Effect]) -> Vec<(String, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::BrokerSubscribe { channel, token } => Some((channel.clone(), *token)),
            _ => None,
        })
        .collect()
}

fn publications(effects: &[Effect]) -> Vec<(String, Bytes)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PublishNotify {
                channel, message, ..
            } => Some((channel.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

fn unsubscribes(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::BrokerUnsubscribe { channel } => Some(channel.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn subscribed_waits_for_the_broker_and_the_broker_subscription_is_shared() {
    let mut b = replica("b");
    b.open(1);
    b.open(2);
    let effects = b.text(1, json!({"type":"subscribe","channel":"c"}));
    let asked = broker_subscribes(&effects);
    assert_eq!(asked.len(), 1);
    assert!(
        sent_json(&effects, 1).is_empty(),
        "no `subscribed` before the broker's"
    );
    // A second local subscriber waits for the same confirmation, without a second request.
    let effects = b.text(2, json!({"type":"subscribe","channel":"c"}));
    assert!(broker_subscribes(&effects).is_empty());
    assert!(sent_json(&effects, 2).is_empty());
    // A stale token (an earlier request) confirms nothing.
    let (channel, token) = asked[0].clone();
    b.server
        .handle_broker_subscribed(&channel, token + 7, b.now())
        .unwrap();
    assert!(b.drain().is_empty());
    b.server
        .handle_broker_subscribed(&channel, token, b.now())
        .unwrap();
    let effects = b.drain();
    for conn in [1, 2] {
        assert_eq!(
            sent_json(&effects, conn),
            vec![json!({"type":"subscribed","channel":"c"})]
        );
    }
    // Once confirmed, a new local subscriber is answered at once.
    b.open(3);
    let effects = b.text(3, json!({"type":"subscribe","channel":"c"}));
    assert!(broker_subscribes(&effects).is_empty());
    assert_eq!(
        sent_json(&effects, 3),
        vec![json!({"type":"subscribed","channel":"c"})]
    );
}

#[test]
fn a_notify_crosses_replicas_exactly_once_and_the_origin_drops_its_echo() {
    let mut a = replica("a");
    let mut b = replica("b");
    a.open(1);
    a.open(2);
    b.open(1);
    for (h, conn) in [(&mut a, 2), (&mut b, 1)] {
        let effects = h.text(conn, json!({"type":"subscribe","channel":"c"}));
        let (channel, token) = broker_subscribes(&effects)[0].clone();
        h.server
            .handle_broker_subscribed(&channel, token, h.now())
            .unwrap();
        h.drain();
    }
    let effects = a.text(1, json!({"type":"notify","channel":"c","payload":{"n":1}}));
    let notify = json!({"type":"notify","channel":"c","payload":{"n":1}});
    assert_eq!(
        sent_json(&effects, 1),
        vec![notify.clone(), json!({"type":"notifyAck","channel":"c"})]
    );
    assert_eq!(sent_json(&effects, 2), vec![notify.clone()]);
    let published = publications(&effects);
    assert_eq!(published.len(), 1, "published once");
    let (channel, message) = &published[0];
    // Redis delivers the publication to every subscribed replica, the origin included.
    assert!(b
        .server
        .handle_remote_notify(channel, message, b.now())
        .unwrap());
    assert_eq!(sent_json(&b.drain(), 1), vec![notify]);
    assert!(a
        .server
        .handle_remote_notify(channel, message, a.now())
        .unwrap());
    assert!(
        a.drain().is_empty(),
        "the origin already delivered it locally"
    );
}

#[test]
fn malformed_or_misdirected_broker_messages_are_ignored() {
    let mut b = replica("b");
    b.open(1);
    let effects = b.text(1, json!({"type":"subscribe","channel":"c"}));
    let (channel, token) = broker_subscribes(&effects)[0].clone();
    b.server
        .handle_broker_subscribed(&channel, token, b.now())
        .unwrap();
    b.drain();
    for message in [
        b"not json".to_vec(),
        br#"{"origin":"a","payload":1}"#.to_vec(),
        br#"{"origin":"a","channel":"other","payload":1}"#.to_vec(),
    ] {
        assert!(!b
            .server
            .handle_remote_notify("c", &message, b.now())
            .unwrap());
        assert!(b.drain().is_empty());
    }
}

#[test]
fn the_broker_subscription_is_dropped_with_the_last_local_subscriber() {
    let mut b = replica("b");
    b.open(1);
    b.open(2);
    let effects = b.text(1, json!({"type":"subscribe","channel":"c"}));
    let (channel, token) = broker_subscribes(&effects)[0].clone();
    b.text(2, json!({"type":"subscribe","channel":"c"}));
    // Unsubscribing while the confirmation is pending answers in order.
    let effects = b.text(1, json!({"type":"unsubscribe","channel":"c"}));
    assert_eq!(
        sent_json(&effects, 1),
        vec![
            json!({"type":"subscribed","channel":"c"}),
            json!({"type":"unsubscribed","channel":"c"})
        ]
    );
    assert!(unsubscribes(&effects).is_empty(), "conn 2 still listens");
    b.server
        .handle_broker_subscribed(&channel, token, b.now())
        .unwrap();
    assert_eq!(
        sent_json(&b.drain(), 2),
        vec![json!({"type":"subscribed","channel":"c"})]
    );
    // The last subscriber goes away by closing.
    b.server.handle_closed(crate::ConnId(2), b.now()).unwrap();
    assert_eq!(unsubscribes(&b.drain()), vec!["c".to_string()]);
    // A later subscriber asks the broker again, with a new token.
    b.open(3);
    let effects = b.text(3, json!({"type":"subscribe","channel":"c"}));
    let again = broker_subscribes(&effects);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].1, token);
}

#[test]
fn single_node_mode_asks_nothing_of_a_broker() {
    let mut h = Harness::new(Config::default());
    h.open(1);
    let mut effects = h.text(1, json!({"type":"subscribe","channel":"c"}));
    effects.extend(h.text(1, json!({"type":"notify","channel":"c","payload":1})));
    assert!(broker_subscribes(&effects).is_empty());
    assert!(publications(&effects).is_empty());
    assert!(!h.server.handle_remote_notify("c", b"{}", h.now()).unwrap());
}

#[test]
fn a_room_snapshot_covers_the_shared_log_delivered_before_it() {
    let mut h = Harness::new(Config {
        replica_id: Some("b".into()),
        sync_enabled: true,
        durable_room_log: true,
        ..Config::default()
    });
    h.open(1);
    h.text(1, json!({"type":"crdt-join","roomId":"r"}));
    let stored = crate::StoredRoom {
        shared_log_position: Some("5-0".into()),
        ..crate::StoredRoom::default()
    };
    h.server
        .handle_room_loaded("r", Ok(stored), h.now())
        .unwrap();
    h.drain();
    let update = super::harness::loro_update(9, "k", 1);
    assert!(h
        .server
        .handle_remote_room_update("r", Bytes::from(update.clone()), h.now())
        .unwrap());
    // Imported by the room's next job (the import timer), then relayed.
    h.server.handle_timeout(h.now()).unwrap();
    let relayed = super::harness::sent_binary(&h.drain(), 1);
    assert_eq!(
        relayed,
        vec![Bytes::from(update)],
        "the member gets the change"
    );
    h.server
        .handle_shared_log_position("r", "9-0".into())
        .unwrap();
    // The save after the debounce covers the position delivered before it.
    h.now += 10_000;
    h.server.handle_timeout(h.now()).unwrap();
    let covers: Vec<Option<String>> = h
        .drain()
        .into_iter()
        .filter_map(|e| match e {
            Effect::PersistSnapshot { covers, .. } => Some(covers),
            _ => None,
        })
        .collect();
    assert_eq!(covers, vec![Some("9-0".to_string())]);
}

/// A publication holds its notify's bytes in the sender's inbound budget until the broker
/// took it: a slow broker pauses the sender (PROTOCOL §7) instead of its notifies piling up.
#[test]
fn unpublished_notifies_hold_their_sender_s_budget_until_the_broker_took_them() {
    let mut config = Config {
        replica_id: Some("a".into()),
        ..Config::default()
    };
    config.limits.max_inbound_bytes_per_conn = Some(500);
    let mut h = Harness::new(config);
    h.open(1);
    let mut tokens = Vec::new();
    let mut paused = false;
    for n in 0..20 {
        let effects = h.text(1, json!({"type":"notify","channel":"c","payload":{"n": n}}));
        tokens.extend(effects.iter().filter_map(|e| match e {
            Effect::PublishNotify { token, .. } => Some(*token),
            _ => None,
        }));
        paused |= effects.contains(&Effect::PauseReading {
            conn: crate::ConnId(1),
        });
    }
    assert_eq!(tokens.len(), 20, "every notify is published");
    assert!(paused, "the sender is not read while its publications wait");
    assert!(h.server.inbound_bytes(crate::ConnId(1)) >= 500);
    for token in tokens {
        h.server.handle_notify_published(token).unwrap();
    }
    assert_eq!(h.server.inbound_bytes(crate::ConnId(1)), 0);
    assert!(h.drain().contains(&Effect::ResumeReading {
        conn: crate::ConnId(1)
    }));
    assert!(!h.server.is_reading_paused(crate::ConnId(1)));
}
