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
fn notifies_waiting_together_share_one_redis_round_trip_and_keep_their_order() {
    let Some(redis) = RedisServer::start("cluster-publish-batch") else {
        return;
    };
    let servers = replicas(&redis, 2, &[]);
    let mut sender = servers[0].connect();
    let mut subscriber = servers[1].connect();
    subscribe(&mut subscriber, "c");
    let published = || servers[0].metric("duckwire_publications_total");
    let round_trips = || servers[0].metric("duckwire_publish_round_trips_total");
    let (published_before, round_trips_before) = (published(), round_trips());
    // Redis holds every write (PUBLISH too) for a second: the first publication waits in it
    // and the notifies sent meanwhile queue behind it.
    redis.command(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    const SENT: i64 = 50;
    for n in 0..SENT {
        notify(&mut sender, "c", json!({ "n": n }));
    }
    for n in 0..SENT {
        assert_eq!(subscriber.recv_json(), notified(json!({ "n": n })));
    }
    until("every publication counted", || {
        published() - published_before == SENT as f64
    });
    let shared = round_trips() - round_trips_before;
    assert!(
        shared <= 5.0,
        "{SENT} notifies queued behind a paused Redis took {shared} round trips"
    );
}

/// A flood of notifies while Redis is slow is held back, not dropped: each publication's
/// bytes stay in its sender's inbound budget until Redis took it, so the sender is not read
/// meanwhile (PROTOCOL §7) and every notify reaches the other replica once Redis answers.
/// (Before, publications queued past 4 096 were dropped.)
#[test]
fn a_flood_of_notifies_while_redis_is_slow_pauses_its_sender_instead_of_dropping_them() {
    let Some(redis) = RedisServer::start("cluster-backpressure") else {
        return;
    };
    let servers = replicas(&redis, 2, &["--max-inbound-bytes-per-conn", "20000"]);
    let mut sender = servers[0].connect();
    let mut subscriber = servers[1].connect();
    subscribe(&mut subscriber, "c");
    redis.command(&["CLIENT", "PAUSE", "2000", "WRITE"]);
    const SENT: i64 = 6_000;
    for n in 0..SENT {
        // Not read meanwhile: the echoes and acks wait in the sender's socket.
        sender.send_json(json!({"type":"notify","channel":"c","payload":{ "n": n }}));
    }
    for n in 0..SENT {
        assert_eq!(subscriber.recv_json(), notified(json!({ "n": n })));
    }
    for n in 0..SENT {
        assert_eq!(sender.recv_json(), notified(json!({ "n": n })), "the echo");
        assert_eq!(
            sender.recv_json(),
            json!({"type":"notifyAck","channel":"c"})
        );
    }
    assert_eq!(servers[0].metric("duckwire_notifies_dropped_total"), 0.0);
    until("every publication counted", || {
        servers[0].metric("duckwire_publications_total") == SENT as f64
    });
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

// ----- CRDT rooms across replicas (PROTOCOL §6a) -----------------------------------------

fn crdt_ack() -> Value {
    json!({"type":"crdt-update-ack","roomId":"r"})
}

#[test]
fn room_edits_reach_members_on_every_replica_and_late_joiners_anywhere() {
    let Some(redis) = RedisServer::start("cluster-rooms") else {
        return;
    };
    let servers = replicas(&redis, 3, &["--sync"]);
    let mut a = servers[0].connect();
    let mut b = servers[1].connect();
    let mut c = servers[2].connect();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(join_room(client, "r"), json!({}));
    }
    let from_a = loro_update("a", 1);
    a.send_binary(from_a.clone());
    assert_eq!(a.recv_json(), crdt_ack());
    assert_eq!(b.recv_binary(), from_a, "B's member gets A's change");
    assert_eq!(c.recv_binary(), from_a, "C's member gets A's change");
    let from_b = loro_update("b", 2);
    b.send_binary(from_b.clone());
    assert_eq!(b.recv_json(), crdt_ack());
    assert_eq!(a.recv_binary(), from_b);
    assert_eq!(c.recv_binary(), from_b);

    // A late joiner on a replica holding the room, and on one that never loaded it.
    let mut late = servers[2].connect();
    assert_eq!(join_room(&mut late, "r"), json!({"a":1,"b":2}));
    let fresh = replicas(&redis, 1, &["--sync"]);
    let mut elsewhere = fresh[0].connect();
    assert_eq!(join_room(&mut elsewhere, "r"), json!({"a":1,"b":2}));
}

#[test]
fn changes_waiting_together_share_one_redis_round_trip_and_keep_their_order() {
    let Some(redis) = RedisServer::start("cluster-group-commit") else {
        return;
    };
    let servers = replicas(&redis, 2, &["--sync"]);
    let mut writer = servers[0].connect();
    let mut member = servers[1].connect();
    join_room(&mut writer, "r");
    join_room(&mut member, "r");
    let appends = || servers[0].metric("duckwire_shared_log_appends_total");
    let round_trips = || servers[0].metric("duckwire_shared_log_round_trips_total");
    let (appends_before, round_trips_before) = (appends(), round_trips());
    // Redis holds every write for a second (as when it pauses for a fork or a slow fsync):
    // the first change's append waits in it and the changes sent meanwhile queue behind it,
    // as under a burst of edits. A slow Redis delays the acks; it does not fail them.
    redis.command(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    const SENT: i64 = 50;
    let changes: Vec<Vec<u8>> = (0..SENT)
        .map(|i| loro_update(&format!("k{i}"), i))
        .collect();
    for change in &changes {
        writer.send_binary(change.clone());
    }
    for _ in 0..SENT {
        assert_eq!(writer.recv_json(), crdt_ack());
    }
    for (i, change) in changes.iter().enumerate() {
        assert_eq!(&member.recv_binary(), change, "change {i} relayed in order");
    }
    assert_eq!(appends() - appends_before, SENT as f64);
    let shared = round_trips() - round_trips_before;
    assert!(
        shared <= 5.0,
        "{SENT} changes queued behind a paused Redis took {shared} round trips"
    );
    let mut late = servers[1].connect();
    let state = join_room(&mut late, "r");
    for i in 0..SENT {
        assert_eq!(state[format!("k{i}")], json!(i), "change k{i}");
    }
}

#[test]
fn a_replica_killed_mid_edits_loses_no_acknowledged_change() {
    let Some(redis) = RedisServer::start("cluster-sigkill") else {
        return;
    };
    let mut servers = replicas(&redis, 2, &["--sync"]);
    let mut writer = servers[0].connect();
    join_room(&mut writer, "r");
    const SENT: i64 = 2000;
    for i in 0..SENT {
        writer.send_binary(loro_update(&format!("k{i}"), i));
    }
    let mut acked = 0;
    while acked < 50 {
        assert_eq!(writer.recv_json(), crdt_ack());
        acked += 1;
    }
    servers.remove(0).kill(); // SIGKILL while changes are still arriving
                              // Acks the server sent before it died may still sit unread in our socket.
    loop {
        match writer.recv() {
            Received::Json(reply) if reply == crdt_ack() => acked += 1,
            _ => break,
        }
    }
    assert!(
        acked < SENT,
        "the kill came after every change was acknowledged"
    );
    let mut reader = servers[0].connect();
    let state = join_room(&mut reader, "r");
    for i in 0..acked {
        assert_eq!(
            state[format!("k{i}")],
            json!(i),
            "acknowledged change k{i} lost"
        );
    }
}

#[test]
fn replicas_converge_after_redis_restarts_empty() {
    let Some(mut redis) = RedisServer::start("cluster-rooms-restart") else {
        return;
    };
    let servers = replicas(&redis, 2, &["--sync"]);
    let mut a = servers[0].connect();
    let mut b = servers[1].connect();
    join_room(&mut a, "r");
    join_room(&mut b, "r");
    let first = loro_update("before", 1);
    a.send_binary(first.clone());
    assert_eq!(a.recv_json(), crdt_ack());
    assert_eq!(b.recv_binary(), first);

    redis.stop();
    // Without the shared log a change is applied here but never acknowledged.
    a.send_binary(loro_update("while_down", 2));
    let reply = a.recv_json();
    assert_eq!(reply["type"], "error", "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("not saved"),
        "{reply}"
    );

    // A room this replica does not hold cannot be opened without the shared log.
    let mut newcomer = servers[1].connect();
    newcomer.send_json(json!({"type":"crdt-join","roomId":"other","clientId":"n"}));
    let mut refused = newcomer.recv_json();
    if refused["type"] == "crdt-joined" {
        refused = newcomer.recv_json();
    }
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("failed to load room: cannot read the room's shared log"),
        "{refused}"
    );

    redis.restart(); // empty: no persistence
                     // A republishes the room's whole state; B imports it and relays it to its member.
    let state = b.recv_binary();
    let doc = loro::LoroDoc::new();
    for bytes in [&first[..], &state[..]] {
        doc.import(bytes).unwrap();
    }
    assert_eq!(
        serde_json::to_value(doc.get_map("m").get_deep_value()).unwrap(),
        json!({"before":1,"while_down":2})
    );
    let mut late = servers[1].connect();
    assert_eq!(
        join_room(&mut late, "r"),
        json!({"before":1,"while_down":2})
    );
}

/// The deployment the README describes: read-only replicas serving one DuckDB file (DuckDB
/// lets several read-only processes open it), each with its own writable meta file for
/// rooms, sharing rooms and channels through Redis.
#[test]
fn read_only_replicas_share_one_database_file_and_their_rooms() {
    let Some(redis) = RedisServer::start("cluster-read-only") else {
        return;
    };
    let dir = temp_dir("cluster-read-only-data");
    let db = dir.join("shared.duckdb");
    let db = db.to_str().unwrap();
    database_with(db, "create table t as select 7 as a");
    let url = redis.url();
    let metas: Vec<String> = ["a", "b"]
        .iter()
        .map(|r| dir.join(format!("meta-{r}.duckdb")).display().to_string())
        .collect();
    let servers: Vec<ServerProcess> = metas
        .iter()
        .map(|meta| {
            ServerProcess::start(&[
                "--db-path",
                db,
                "--read-only",
                "--sync",
                "--meta-db",
                meta,
                "--redis-url",
                &url,
            ])
        })
        .collect();
    for server in &servers {
        let reply = server
            .connect()
            .request(json!({"type":"json","sql":"select a from t","queryId":"r"}));
        assert_eq!(reply["data"], "[{\"a\":7}]");
    }
    let mut a = servers[0].connect();
    let mut b = servers[1].connect();
    join_room(&mut a, "r");
    join_room(&mut b, "r");
    let change = loro_update("k", 1);
    a.send_binary(change.clone());
    assert_eq!(a.recv_json(), crdt_ack());
    assert_eq!(b.recv_binary(), change);
}

/// Polls Redis until `check` holds (saves follow edits asynchronously); panics after
/// [`REPLY_TIMEOUT`].
fn redis_until(redis: &RedisServer, what: &str, check: impl Fn(&RedisServer) -> bool) {
    until(what, || check(redis));
}

fn field(redis: &RedisServer, key: &str, name: &str) -> Option<String> {
    redis
        .command(&["HGET", key, name])
        .filter(|value| value != "(nil)")
}

fn stream_length(redis: &RedisServer) -> usize {
    redis
        .command(&["XLEN", "duckwire:room:r"])
        .and_then(|a| a.trim_start_matches(':').parse().ok())
        .unwrap_or(usize::MAX)
}

#[test]
fn one_replica_at_a_time_saves_the_shared_snapshot_and_the_stream_is_trimmed_below_it() {
    let Some(redis) = RedisServer::start("cluster-snapshots") else {
        return;
    };
    let servers = replicas(&redis, 2, &["--sync", "--save-debounce-ms", "50"]);
    let mut a = servers[0].connect();
    let mut b = servers[1].connect();
    join_room(&mut a, "r");
    join_room(&mut b, "r");
    for i in 0..20 {
        a.send_binary(loro_update(&format!("k{i}"), i));
        assert_eq!(a.recv_json(), crdt_ack());
        b.recv_binary();
    }
    // Saved beside the stream by the lease holder, the stream trimmed below what it covers.
    redis_until(&redis, "a shared snapshot covering the edits", |r| {
        field(r, "duckwire:room:r:snapshot", "covers").is_some() && stream_length(r) <= 2
    });
    let lease = redis.command(&["GET", "duckwire:room:r:lease"]).unwrap();
    assert_eq!(
        lease.len(),
        16,
        "one replica (a 16-digit id) holds the save lease: {lease}"
    );
    let fence = field(&redis, "duckwire:room:r:snapshot", "fence").unwrap();
    // Both replicas hold the room and save it on their debounce; within one lease interval
    // (30 s, longer than this test) every shared save is the holder's, the other replica's
    // attempts are skipped.
    let saved = |server: &ServerProcess| server.metric("duckwire_shared_snapshots_saved_total");
    let skipped = |server: &ServerProcess| server.metric("duckwire_shared_snapshots_skipped_total");
    until("every replica holding the room to try to save it", || {
        servers.iter().all(|s| saved(s) + skipped(s) > 0.0)
    });
    let savers: Vec<f64> = servers.iter().map(saved).collect();
    assert_eq!(
        savers.iter().filter(|n| **n > 0.0).count(),
        1,
        "one replica saves the room per lease interval: {savers:?}"
    );

    // A replica that never held the room loads snapshot + the rest of the stream.
    let fresh = replicas(&redis, 1, &["--sync"]);
    let mut late = fresh[0].connect();
    let state = join_room(&mut late, "r");
    for i in 0..20 {
        assert_eq!(state[format!("k{i}")], json!(i));
    }

    // A holder whose lease was taken over is refused: nothing it saves lands. Each replica
    // counts the saves it left to the lease holder; wait for both to have tried.
    redis.command(&["SET", "duckwire:room:r:lease", "intruder"]);
    let covers = field(&redis, "duckwire:room:r:snapshot", "covers");
    let before: Vec<f64> = servers.iter().map(skipped).collect();
    for i in 20..25 {
        a.send_binary(loro_update(&format!("k{i}"), i));
        assert_eq!(a.recv_json(), crdt_ack());
    }
    until("a save attempt by every replica after the edits", || {
        servers.iter().zip(&before).all(|(s, b)| skipped(s) > *b)
    });
    assert_eq!(field(&redis, "duckwire:room:r:snapshot", "covers"), covers);
    assert_eq!(
        field(&redis, "duckwire:room:r:snapshot", "fence").as_deref(),
        Some(fence.as_str())
    );
    // Once the lease is free again, the next save takes it with a higher fencing number.
    redis.command(&["DEL", "duckwire:room:r:lease"]);
    a.send_binary(loro_update("k25", 25));
    assert_eq!(a.recv_json(), crdt_ack());
    redis_until(&redis, "a save under a new lease", |r| {
        field(r, "duckwire:room:r:snapshot", "fence")
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|f| f > fence.parse().unwrap())
    });
}

/// `rediss://` with `--redis-ca`: Redis serving TLS with a certificate of a private CA (made
/// by the test), replicas trusting that CA and nothing else.
#[test]
fn replicas_reach_redis_over_tls_trusting_a_private_ca() {
    let dir = temp_dir("cluster-tls-certs");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join("redis.pem");
    let key = dir.join("redis-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let tls = [
        "--tls-port".to_string(),
        port.to_string(),
        "--tls-cert-file".into(),
        cert.display().to_string(),
        "--tls-key-file".into(),
        key.display().to_string(),
        "--tls-auth-clients".into(),
        "no".into(),
    ];
    let Some(redis) = RedisServer::start_with("cluster-tls", &tls) else {
        return;
    };
    let url = format!("rediss://localhost:{port}/");
    let ca = cert.display().to_string();
    let start = || ServerProcess::start(&["--redis-url", &url, "--redis-ca", &ca]);
    let (a, b) = (start(), start());
    let mut on_b = b.connect();
    subscribe(&mut on_b, "c");
    assert_eq!(redis.subscribers(CHANNEL), 1, "subscribed over TLS");
    let mut sender = a.connect();
    notify(&mut sender, "c", json!("over tls"));
    assert_eq!(on_b.recv_json(), notified(json!("over tls")));
}
