//! PROTOCOL §1: one port, HTTP routes, origin policy, Mosaic REST.

use duckwire_tests::*;
use serde_json::{json, Value};

#[test]
fn healthz_readyz_version() {
    let server = ServerProcess::start(&[]);
    let (status, _, body) = get(&server.addr, "/healthz", "");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, _, body) = get(&server.addr, "/readyz", "");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, _, body) = get(&server.addr, "/version", "");
    assert_eq!(status, 200);
    let version: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(version["name"], "duckwire");
    let duckdb = version["duckdb"].as_str().unwrap();
    assert!(
        duckdb.starts_with("v2.0."),
        "DuckDB 2.0 is the engine: {duckdb}"
    );
    assert!(version["version"].is_string());
}

/// Parses Prometheus text: sample name (with labels) -> value; checks every sample has a
/// `# TYPE` line for its family.
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            let family = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|suffix| family.strip_suffix(suffix).filter(|f| typed.contains(*f)))
                .unwrap_or(family);
            assert!(typed.contains(family), "no # TYPE for {family}");
            samples.insert(name.to_string(), value.parse().expect("a number"));
        }
    }
    samples
}

#[test]
fn metrics_cover_connections_queries_latency_cache_crdt_and_bytes() {
    let server = ServerProcess::start(&["--sync"]);
    let mut client = server.connect();
    client.request(json!({"type":"json","sql":"select 1","queryId":"m"}));
    client.request(json!({"type":"json","sql":"select nope","queryId":"e"}));
    client.request(json!({"type":"exec","sql":"select 1","queryId":"x"}));
    for id in ["p1", "p2"] {
        client
            .send_json(json!({"type":"arrow","sql":"select 42 as v","queryId":id,"persist":true}));
        client.recv_binary();
    }
    join_room(&mut client, "metrics-room");
    client.send_binary(loro_update("k", 1));
    assert_eq!(client.recv_json()["type"], "crdt-update-ack");

    let (status, headers, body) = get(&server.addr, "/metrics", "");
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let text = String::from_utf8(body).unwrap();
    let m = parse_prometheus(&text);
    let at = |name: &str| {
        *m.get(name)
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    // The WebSocket client and the HTTP connection asking for the metrics.
    assert_eq!(at("duckwire_connections_open"), 2.0);
    assert!(at("duckwire_connections_total") >= 1.0);
    assert_eq!(
        at("duckwire_queries_total{type=\"json\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        at("duckwire_queries_total{type=\"json\",outcome=\"error\"}"),
        1.0
    );
    assert_eq!(
        at("duckwire_queries_total{type=\"exec\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(at("duckwire_cache_misses_total"), 1.0);
    assert_eq!(at("duckwire_cache_hits_total"), 1.0);
    assert!(at("duckwire_cache_bytes") > 0.0);
    assert_eq!(at("duckwire_crdt_rooms"), 1.0);
    assert_eq!(at("duckwire_crdt_updates_total"), 1.0);
    assert!(at("duckwire_bytes_in_total") > 0.0);
    assert!(at("duckwire_bytes_out_total") > 0.0);
    // The latency histogram: cumulative buckets ending in +Inf = count.
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(name, _)| name.starts_with("duckwire_query_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 3);
    let count = at("duckwire_query_seconds_count");
    assert!(count >= 4.0);
    assert_eq!(at("duckwire_query_seconds_bucket{le=\"+Inf\"}"), count);
    assert!(buckets.iter().all(|b| *b <= count));
    assert!(at("duckwire_query_seconds_sum") > 0.0);
}

#[test]
fn unknown_routes_are_404_and_malformed_http_is_400() {
    let server = ServerProcess::start(&[]);
    assert_eq!(get(&server.addr, "/nope", "").0, 404);
    let (status, _, _) = http(&server.addr, "NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(status, 400);
}

#[test]
fn http_endpoints_need_the_token_except_health() {
    let server = ServerProcess::start(&["--auth-token", "tok"]);
    assert_eq!(get(&server.addr, "/healthz", "").0, 200);
    assert_eq!(get(&server.addr, "/readyz", "").0, 200);
    assert_eq!(get(&server.addr, "/version", "").0, 401);
    assert_eq!(get(&server.addr, "/metrics", "").0, 401);
    assert_eq!(
        get(&server.addr, "/version", "Authorization: Bearer tok\r\n").0,
        200
    );
    assert_eq!(
        post_json(&server.addr, &json!({"type":"json","sql":"select 1"}), "").0,
        401
    );
}

#[test]
fn foreign_origins_are_refused_and_loopback_or_listed_ones_allowed() {
    let server = ServerProcess::start(&["--allowed-origins", "https://app.example.com"]);
    let refused = Client::try_connect(&server.url("/"), &[("Origin", "https://evil.example")]);
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    for origin in ["http://localhost:5173", "https://app.example.com"] {
        let mut client = Client::connect(&server.url("/"), &[("Origin", origin)]);
        assert_eq!(
            client.request(json!({"type":"subscribe","channel":"c"}))["type"],
            "subscribed"
        );
    }
    // Non-browser clients send no Origin and are accepted.
    server.connect();
    assert_eq!(
        get(&server.addr, "/version", "Origin: https://evil.example\r\n").0,
        403
    );
}

#[test]
fn mosaic_rest_arrow_json_exec_and_errors() {
    let server = ServerProcess::start(&[]);
    let (status, headers, body) = post_json(
        &server.addr,
        &json!({"type":"arrow","sql":"select 42::int as x"}),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    let batches = read_ipc(&body);
    assert_eq!(batches[0].num_rows(), 1);
    let (status, _, body) = post_json(
        &server.addr,
        &json!({"type":"json","sql":"select 1 as a"}),
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!([{"a":1}])
    );
    let (status, _, body) = post_json(
        &server.addr,
        &json!({"type":"exec","sql":"create table t(x int)"}),
        "",
    );
    assert_eq!(
        (status, serde_json::from_slice::<Value>(&body).unwrap()),
        (200, json!({}))
    );
    let (status, _, body) = post_json(
        &server.addr,
        &json!({"type":"json","sql":"select * from missing"}),
        "",
    );
    assert_eq!(status, 500);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("missing"));
    assert_eq!(
        post_json(&server.addr, &json!({"type":"nope","sql":"select 1"}), "").0,
        400
    );
    assert_eq!(
        post_json(&server.addr, &json!({"type":"json","sql":"  "}), "").0,
        400
    );
}

#[test]
fn rest_answers_cors_headers_for_allowed_origins() {
    let server = ServerProcess::start(&[]);
    let (status, headers, _) = post_json(
        &server.addr,
        &json!({"type":"json","sql":"select 1"}),
        "Origin: http://localhost:3000\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let (status, headers, _) = http(
        &server.addr,
        "OPTIONS / HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 204);
    assert!(header(&headers, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
}

#[test]
fn websocket_upgrade_works_on_any_path_with_a_query_string() {
    let server = ServerProcess::start(&[]);
    let mut client = Client::connect(&server.url("/some/path?roomId=r1&x=y"), &[]);
    assert_eq!(
        client.request(json!({"type":"subscribe","channel":"c"}))["type"],
        "subscribed"
    );
}

#[test]
fn hostile_percent_encoding_in_the_upgrade_url_is_harmless() {
    let server = ServerProcess::start(&["--auth-token", "tok"]);
    let mut client = Client::connect(&server.url("/?token=%a%C3%A9&x=%"), &[]);
    assert_eq!(
        client.request(json!({"type":"auth","token":"tok"})),
        json!({"type":"authAck"})
    );
    assert_eq!(get(&server.addr, "/healthz", "").0, 200);
}

/// The upgrade is checked by tungstenite's own handshake: a WebSocket version other than 13
/// gets `426` naming the one we speak (RFC 6455 §4.2.2), a missing key `400`.
#[test]
fn websocket_upgrades_need_version_13_and_a_key() {
    let server = ServerProcess::start(&[]);
    let upgrade = |extra: &str| {
        http(
            &server.addr,
            &format!("GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"),
        )
    };
    let (status, headers, _) =
        upgrade("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n");
    assert_eq!(status, 426);
    assert_eq!(header(&headers, "sec-websocket-version"), Some("13"));
    let (status, _, body) = upgrade("Sec-WebSocket-Version: 13\r\n");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}
