//! Security over the real server: origin policy, channel isolation from query results and
//! rooms, per-connection authentication, and the token never reaching the logs.

use duckwire_tests::*;
use serde_json::json;

/// The names the Python server uses internally for per-connection results and rooms,
/// and a few wildcard-looking ones.
fn suspicious_channel_names(room: &str) -> Vec<String> {
    let mut names: Vec<String> = (0..16).map(|n| format!("__conn:{n}")).collect();
    names.extend(
        [room, "*", "#", ">", "__all__", "__room", "results", "crdt"]
            .iter()
            .map(|s| s.to_string()),
    );
    names.push(format!("__room:{room}"));
    names.push(format!("crdt:{room}"));
    names
}

/// Sends a notify on the client's own channel and returns what arrives before its echo:
/// anything leaked to the client was queued before it, since the server handles messages
/// in order.
fn messages_before_sentinel(client: &mut Client, channel: &str) -> Vec<Received> {
    client.send_json(json!({"type":"notify","channel":channel,"payload":"sentinel"}));
    let mut before = Vec::new();
    loop {
        match client.recv() {
            Received::Json(value)
                if value["type"] == "notify" && value["payload"] == "sentinel" =>
            {
                assert_eq!(client.recv_json()["type"], "notifyAck");
                return before;
            }
            other => before.push(other),
        }
    }
}

#[test]
fn no_channel_name_observes_another_connections_results_or_rooms() {
    let server = ServerProcess::start(&["--sync"]);
    let mut snoop = server.connect();
    for name in suspicious_channel_names("r1") {
        assert_eq!(
            snoop.request(json!({"type":"subscribe","channel":name}))["type"],
            "subscribed"
        );
    }
    snoop.request(json!({"type":"subscribe","channel":"own"}));

    // A victim runs queries of every kind and edits a room it shares with a peer.
    let mut victim = server.connect();
    let mut peer = server.connect();
    join_room(&mut victim, "r1");
    join_room(&mut peer, "r1");
    let json_reply =
        victim.request(json!({"type":"json","sql":"select 'secret' as s","queryId":"v1"}));
    assert_eq!(json_reply["data"], "[{\"s\":\"secret\"}]");
    victim.send_json(json!({"type":"arrow","sql":"select 'secret' as s","queryId":"v2"}));
    victim.recv_binary();
    victim.send_binary(loro_update("secret", 1));
    assert_eq!(victim.recv_json()["type"], "crdt-update-ack");
    peer.recv_binary(); // the peer, a member, gets the update

    let leaked = messages_before_sentinel(&mut snoop, "own");
    assert!(leaked.is_empty(), "a non-member observed {leaked:?}");

    // Forging into the internal names reaches no one's query stream either.
    victim.request(json!({"type":"subscribe","channel":"victim-own"}));
    for name in suspicious_channel_names("r1") {
        snoop.request(json!({"type":"notify","channel":name,"payload":{"type":"json","queryId":"v1","data":"[]"}}));
        snoop.recv_json(); // notifyAck
    }
    let forged = messages_before_sentinel(&mut victim, "victim-own");
    assert!(
        forged.is_empty(),
        "forged messages reached the victim: {forged:?}"
    );
}

#[test]
fn a_valid_token_does_not_bypass_the_origin_policy() {
    let server = ServerProcess::start(&["--auth-token", "tok"]);
    let foreign = [
        ("Origin", "https://evil.example"),
        ("Authorization", "Bearer tok"),
    ];
    let error = Client::try_connect(&server.url("/"), &foreign).err();
    match error {
        Some(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let body = json!({"type":"json","sql":"select 1"});
    let (status, headers, _) = post_json(
        &server.addr,
        &body,
        "Origin: https://evil.example\r\nAuthorization: Bearer tok\r\n",
    );
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
}

#[test]
fn the_token_never_appears_in_the_logs() {
    let token = "Sup3rSecretTokenValue";
    let log = temp_dir("token-log").join("server.log");
    let server = ServerProcess::start_logging_to(
        &["--auth-token", token, "--log-level", "trace", "--sync"],
        &[],
        &log,
    );
    // Every way a token travels: auth messages (wrong and right), the URL, the header,
    // REST and metrics requests.
    let mut by_message = server.connect();
    by_message.request(json!({"type":"auth","token":format!("{token}-wrong")}));
    assert_eq!(
        by_message.request(json!({"type":"auth","token":token}))["type"],
        "authAck"
    );
    by_message.request(json!({"type":"json","sql":"select 1 as x","queryId":1}));
    let mut by_url = Client::connect(&server.url(&format!("/?roomId=r&token={token}")), &[]);
    join_room(&mut by_url, "r");
    let bearer = format!("Bearer {token}");
    let mut by_header = Client::connect(&server.url("/"), &[("Authorization", bearer.as_str())]);
    by_header.request(json!({"type":"exec","sql":"select 1","queryId":2}));
    let auth_header = format!("Authorization: Bearer {token}\r\n");
    post_json(
        &server.addr,
        &json!({"type":"exec","sql":"select 1"}),
        &auth_header,
    );
    get(
        &server.addr,
        "/metrics",
        &format!("Authorization: Bearer {token}x\r\n"),
    );
    let _ = Client::try_connect(&server.url(&format!("/?token={token}-bad")), &[]);
    drop((by_message, by_url, by_header));
    assert!(server.terminate().success());

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.lines().count() > 10,
        "trace logging was on:\n{logged}"
    );
    assert!(!logged.contains(token), "the token was logged:\n{logged}");
}
