//! Replicas sharing channels through a real Redis (PROTOCOL §5a): three duckwire processes
//! on one `redis-server`, official message shapes, over real sockets.

use duckwire_tests::*;
use serde_json::{json, Value};

const CHANNEL: &str = "duckwire:channel:c";

fn replicas(redis: &RedisServer, count: usize, extra: &[&str]) -> Vec<ServerProcess> {
    let url = redis.url();
    (0..count)
        .map(|_| {
            let mut args = vec!["--redis-url", url.as_str()];
            args.extend_from_slice(extra);
            ServerProcess::start(&args)
        })
        .collect()
}

fn subscribe(client: &mut Client, channel: &str) {
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":channel})),
        json!({"type":"subscribed","channel":channel})
    );
}

fn notify(client: &mut Client, channel: &str, payload: Value) {
    client.send_json(json!({"type":"notify","channel":channel,"payload":payload}));
    assert_eq!(
        client.recv_json(),
        json!({"type":"notify","channel":channel,"payload":payload}),
        "the sender's echo"
    );
    assert_eq!(
        client.recv_json(),
        json!({"type":"notifyAck","channel":channel})
    );
}

fn notified(payload: Value) -> Value {
    json!({"type":"notify","channel":"c","payload":payload})
}

#[test]
fn a_notify_crosses_replicas_exactly_once() {
    let Some(redis) = RedisServer::start("cluster-notify") else {
        return;
    };
    let servers = replicas(&redis, 3, &[]);
    let mut sender = servers[0].connect();
    let mut same_replica = servers[0].connect();
    let mut on_b = servers[1].connect();
    let mut on_c = servers[2].connect();
    let mut bystander = servers[2].connect();
    for client in [&mut same_replica, &mut on_b, &mut on_c] {
        subscribe(client, "c");
    }
    subscribe(&mut bystander, "other");
    // `subscribed` means Redis holds the subscription: one per replica with subscribers.
    assert_eq!(redis.subscribers(CHANNEL), 3);

    notify(&mut sender, "c", json!({"n":1}));
    notify(&mut sender, "c", json!({"n":2}));
    for client in [&mut same_replica, &mut on_b, &mut on_c] {
        // Exactly once each, in order: the second comes right after the first.
        assert_eq!(client.recv_json(), notified(json!({"n":1})));
        assert_eq!(client.recv_json(), notified(json!({"n":2})));
    }
    // Nothing on `c` reached the non-subscriber: its next message is on its own channel.
    notify(&mut sender, "other", json!("x"));
    assert_eq!(
        bystander.recv_json(),
        json!({"type":"notify","channel":"other","payload":"x"})
    );
    // Nor did the sender get its own notify back from Redis: its next message is the ack
    // of its next request.
    assert_eq!(
        sender.request(json!({"type":"unsubscribe","channel":"nothing"})),
        json!({"type":"unsubscribed","channel":"nothing"})
    );
}

#[test]
fn redis_subscriptions_follow_local_subscribers_and_prefixes_separate_clusters() {
    let Some(redis) = RedisServer::start("cluster-subscriptions") else {
        return;
    };
    let servers = replicas(&redis, 2, &[]);
    let elsewhere = replicas(&redis, 1, &["--redis-prefix", "other-app"]);
    let mut a = servers[0].connect();
    let mut b = servers[1].connect();
    let mut b2 = servers[1].connect();
    let mut other_app = elsewhere[0].connect();
    subscribe(&mut a, "c");
    subscribe(&mut b, "c");
    subscribe(&mut b2, "c");
    subscribe(&mut other_app, "c");
    assert_eq!(
        redis.subscribers(CHANNEL),
        2,
        "one subscription per replica"
    );
    assert_eq!(redis.subscribers("other-app:channel:c"), 1);

    // B keeps its subscription while one local subscriber is left.
    b.request(json!({"type":"unsubscribe","channel":"c"}));
    drop(b2); // closes the connection: B's last subscriber of `c`
    redis.wait_for_subscribers(CHANNEL, 1);

    // Another prefix is another cluster: A's notify does not reach it.
    let mut sender = servers[0].connect();
    notify(&mut sender, "c", json!(1));
    assert_eq!(a.recv_json(), notified(json!(1)));
    let mut other_sender = elsewhere[0].connect();
    notify(&mut other_sender, "c", json!("own"));
    assert_eq!(other_app.recv_json(), notified(json!("own")));
}

#[test]
fn replicas_work_while_redis_is_down_and_resubscribe_when_it_is_back() {
    let Some(mut redis) = RedisServer::start("cluster-restart") else {
        return;
    };
    let servers = replicas(&redis, 2, &[]);
    let mut a = servers[0].connect();
    let mut a2 = servers[0].connect();
    let mut b = servers[1].connect();
    subscribe(&mut a2, "c");
    subscribe(&mut b, "c");
    redis.stop();
    // Local clients keep working: subscribing answers, a local notify is delivered.
    let mut a3 = servers[0].connect();
    subscribe(&mut a3, "c");
    notify(&mut a, "c", json!("while down"));
    assert_eq!(a2.recv_json(), notified(json!("while down")));
    assert_eq!(a3.recv_json(), notified(json!("while down")));

    redis.restart();
    // Both replicas reconnect and subscribe again to what their clients listen to.
    redis.wait_for_subscribers(CHANNEL, 2);
    notify(&mut a, "c", json!("after"));
    assert_eq!(b.recv_json(), notified(json!("after")));
    assert_eq!(a2.recv_json(), notified(json!("after")));
}
