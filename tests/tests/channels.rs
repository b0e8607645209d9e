//! PROTOCOL §5: user channels, exactly-once delivery, namespace isolation.

use duckwire_tests::*;
use serde_json::json;

#[test]
fn subscribe_notify_unsubscribe() {
    let server = ServerProcess::start(&[]);
    let mut a = server.connect();
    let mut b = server.connect();
    let mut c = server.connect();
    assert_eq!(
        a.request(json!({"type":"subscribe","channel":"table:orders"})),
        json!({"type":"subscribed","channel":"table:orders"})
    );
    assert_eq!(
        b.request(json!({"type":"subscribe","channel":"table:orders"}))["type"],
        "subscribed"
    );
    c.send_json(json!({"type":"notify","channel":"table:orders","payload":{"op":"update"}}));
    let notify = json!({"type":"notify","channel":"table:orders","payload":{"op":"update"}});
    assert_eq!(c.recv_json(), notify);
    assert_eq!(
        c.recv_json(),
        json!({"type":"notifyAck","channel":"table:orders"})
    );
    assert_eq!(a.recv_json(), notify);
    assert_eq!(b.recv_json(), notify);

    // A subscribed sender gets its echo once, and each other subscriber exactly one copy.
    a.send_json(json!({"type":"notify","channel":"table:orders","payload":2}));
    assert_eq!(a.recv_json()["payload"], 2);
    assert_eq!(a.recv_json()["type"], "notifyAck");
    assert_eq!(b.recv_json()["payload"], 2);
    assert_eq!(
        b.request(json!({"type":"subscribe","channel":"probe"}))["type"],
        "subscribed",
        "no duplicate copy"
    );

    assert_eq!(
        b.request(json!({"type":"unsubscribe","channel":"table:orders"})),
        json!({"type":"unsubscribed","channel":"table:orders"})
    );
    a.request(json!({"type":"notify","channel":"table:orders","payload":3}));
    assert_eq!(
        b.request(json!({"type":"subscribe","channel":"probe2"}))["type"],
        "subscribed",
        "nothing after unsubscribe"
    );
}

#[test]
fn internal_topic_names_reach_no_query_results() {
    // In the Python server, subscribing to `__conn:<n>` reads another connection's results.
    let server = ServerProcess::start(&["--sync"]);
    let mut spy = server.connect();
    for n in 0..4 {
        spy.request(json!({"type":"subscribe","channel":format!("__conn:{n}")}));
    }
    spy.request(json!({"type":"subscribe","channel":"room-1"}));
    let mut victim = server.connect();
    assert_eq!(
        victim.request(json!({"type":"json","sql":"select 'secret' as s","queryId":"v"}))["type"],
        "json"
    );
    victim.request(json!({"type":"crdt-join","roomId":"room-1"}));
    victim.recv_json();
    victim.send_binary(loro_update("k", 1));
    assert_eq!(victim.recv_json()["type"], "crdt-update-ack");
    // The spy's next message is the answer to its own probe: nothing leaked before it.
    assert_eq!(
        spy.request(json!({"type":"subscribe","channel":"probe"})),
        json!({"type":"subscribed","channel":"probe"})
    );
}

#[test]
fn invalid_channels_are_errors() {
    let server = ServerProcess::start(&["--max-channel-len", "8"]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":""}))["error"],
        "field `channel` must not be empty"
    );
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":"123456789"}))["error"],
        "max_channel_len exceeded (limit 8)"
    );
    assert_eq!(
        client.request(json!({"type":"subscribe"}))["error"],
        "missing field `channel`"
    );
}
