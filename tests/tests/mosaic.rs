//! Mosaic's clients, unchanged: the socket protocol on `/mosaic` and the GET forms of the
//! REST protocol (PROTOCOL §1, §3).

use duckwire_tests::*;
use serde_json::{json, Value};

#[test]
fn the_mosaic_socket_answers_in_order_with_bare_results() {
    let server = ServerProcess::start(&[]);
    let mut socket = Client::connect(&server.url("/mosaic"), &[]);
    // Sent back to back: a slower query first, then others that finish sooner.
    for message in [
        json!({"type":"arrow","sql":"select count(*)::int as n from range(20000000)"}),
        json!({"type":"json","sql":"select 1 as x, 'a' as s"}),
        json!({"type":"exec","sql":"create table t(a int)"}),
        json!({"type":"json","sql":"select nope"}),
        json!({"type":"json","sql":"select count(*) as n from t"}),
    ] {
        socket.send_json(message);
    }
    let ipc = socket.recv_binary();
    let batches = read_ipc(&ipc);
    let column = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::Int32Array>()
        .expect("an int column");
    assert_eq!(column.value(0), 20_000_000);
    assert_eq!(socket.recv_json(), json!([{"x": 1, "s": "a"}]));
    assert_eq!(socket.recv_json(), json!({}));
    let error = socket.recv_json();
    assert!(error["error"].as_str().unwrap().contains("nope"), "{error}");
    assert_eq!(socket.recv_json(), json!([{"n": 0}]));
}

#[test]
fn the_mosaic_socket_takes_the_token_from_the_url_and_stops_queries_on_close() {
    let server = ServerProcess::start(&["--auth-token", "s3cret", "--threads", "1"]);
    let mut refused = Client::connect(&server.url("/mosaic"), &[]);
    assert_eq!(
        refused.request(json!({"type":"json","sql":"select 1"})),
        json!({"error":"unauthorized"})
    );
    let mut socket = Client::connect(&server.url("/mosaic?token=s3cret"), &[]);
    assert_eq!(
        socket.request(json!({"type":"json","sql":"select 1 as x"})),
        json!([{"x": 1}])
    );
    // The only worker runs a query that would take minutes; closing the socket stops it.
    socket.send_json(json!({"type":"json","sql":SLOW_SQL}));
    socket.close();
    let mut other = Client::connect(&server.url("/?token=s3cret"), &[]);
    let reply = other.request(json!({"type":"json","sql":"select 2 as y","queryId":"q"}));
    assert_eq!(reply["data"], "[{\"y\":2}]");
}

#[test]
fn get_forms_answer_like_post() {
    let server = ServerProcess::start(&[]);
    let query = url_encode(&json!({"type":"json","sql":"select 42 as n"}).to_string());
    let (status, headers, body) = get(&server.addr, &format!("/?query={query}"), "");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!([{"n": 42}])
    );

    let sql = url_encode("select 7::int as n");
    let (status, headers, body) = get(&server.addr, &format!("/?type=arrow&sql={sql}"), "");
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    let batches = read_ipc(&body);
    assert_eq!(batches[0].num_rows(), 1);
    // No query in the URL: nothing to answer.
    assert_eq!(get(&server.addr, "/", "").0, 404);
}

/// Any page can make a browser send a GET (an `<img src>`), so writes over GET need proof of
/// where they come from: an allowed Origin or a bearer token.
#[test]
fn writes_over_get_need_an_allowed_origin_or_a_bearer_token() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    let create = format!("/?type=exec&sql={}", url_encode("create table t(a int)"));
    let insert = format!(
        "/?type=json&sql={}",
        url_encode("insert into t values (1) returning a")
    );
    let read = format!("/?type=json&sql={}", url_encode("select 1 as one"));
    // The token in the URL authenticates, but nothing shows the request came from a page
    // the server trusts or a client holding the token in a header.
    for path in [&create, &insert] {
        let (status, _, body) = get(&server.addr, &format!("{path}&token=s3cret"), "");
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 405, "{path}");
        assert!(error["error"].as_str().unwrap().contains("CSRF"));
    }
    let (status, _, _) = get(&server.addr, &format!("{read}&token=s3cret"), "");
    assert_eq!(status, 200, "reads are fine");
    let bearer = "Authorization: Bearer s3cret\r\n";
    assert_eq!(get(&server.addr, &create, bearer).0, 200);
    let origin = "Origin: http://localhost:5173\r\n";
    let (status, _, body) = get(&server.addr, &format!("{insert}&token=s3cret"), origin);
    assert_eq!(
        (status, serde_json::from_slice::<Value>(&body).unwrap()),
        (200, json!([{"a": 1}]))
    );
    // A foreign page is refused before anything else.
    let foreign = "Origin: https://evil.example\r\n";
    assert_eq!(
        get(&server.addr, &format!("{read}&token=s3cret"), foreign).0,
        403
    );
}
