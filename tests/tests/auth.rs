//! SPEC §4: per-connection authentication.

use duckwire_tests::*;
use serde_json::json;

#[test]
fn messages_before_auth_are_refused_then_auth_lets_the_connection_in() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"json","sql":"create table leaked(x int)","queryId":"q"})),
        json!({"type":"error","queryId":"q","error":"unauthorized"})
    );
    assert_eq!(
        client.request(json!({"type":"auth","token":"s3cret"})),
        json!({"type":"authAck"})
    );
    // The refused statement never ran.
    let reply = client.request(json!({"type":"json","sql":"select count(*) as n from information_schema.tables where table_name = 'leaked'","queryId":"c"}));
    assert_eq!(reply["data"], "[{\"n\":0}]");
}

#[test]
fn three_wrong_tokens_close_the_connection_with_1008() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut client = server.connect();
    for _ in 0..3 {
        assert_eq!(
            client.request(json!({"type":"auth","token":"nope"})),
            json!({"type":"error","error":"unauthorized"})
        );
    }
    assert_eq!(client.recv_close(), Some(1008));
}

#[test]
fn bearer_header_or_url_token_authenticate_at_upgrade() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut by_header = Client::connect(&server.url("/"), &[("Authorization", "Bearer s3cret")]);
    assert_eq!(
        by_header.request(json!({"type":"exec","sql":"select 1","queryId":1}))["type"],
        "ok"
    );
    let mut by_url = Client::connect(&server.url("/?roomId=r&token=s3cret"), &[]);
    assert_eq!(
        by_url.request(json!({"type":"exec","sql":"select 1","queryId":1}))["type"],
        "ok"
    );
    let mut wrong = Client::connect(&server.url("/?token=wrong"), &[]);
    assert_eq!(
        wrong.request(json!({"type":"exec","sql":"select 1","queryId":1}))["error"],
        "unauthorized"
    );
}

#[test]
fn env_token_is_used_when_the_flag_is_absent() {
    let server = ServerProcess::start_with_env(&[], &[("DUCKWIRE_AUTH_TOKEN", "from-env")]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"exec","sql":"select 1","queryId":1}))["error"],
        "unauthorized"
    );
    assert_eq!(
        client.request(json!({"type":"auth","token":"from-env"})),
        json!({"type":"authAck"})
    );
}

#[test]
fn authentication_is_per_connection_not_per_address() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let mut first = server.connect();
    assert_eq!(
        first.request(json!({"type":"auth","token":"s3cret"})),
        json!({"type":"authAck"})
    );
    // Same address (127.0.0.1), new connection: still needs its own token.
    let mut second = server.connect();
    assert_eq!(
        second.request(json!({"type":"exec","sql":"select 1","queryId":1}))["error"],
        "unauthorized"
    );
}

#[test]
fn without_a_token_auth_is_acked_for_compatibility() {
    let server = ServerProcess::start(&[]);
    let mut client = server.connect();
    assert_eq!(
        client.request(json!({"type":"auth","token":"anything"})),
        json!({"type":"authAck"})
    );
}
