//! DNS rebinding (PROTOCOL §4): a page on a name that re-resolves to 127.0.0.1 is
//! same-origin with the server and sends no `Origin` on a GET, but its requests carry its own
//! name in `Host`. Only loopback names and addresses, the address the client reached, and
//! names listed in `--allowed-hosts` are answered.

use std::io::{Read, Write};
use std::net::TcpStream;

use duckwire_tests::*;
use serde_json::{json, Value};

fn get_with_host(addr: &str, host: &str, path: &str) -> (u16, Value) {
    let (status, _, body) = http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn post_with_host(addr: &str, host: &str, sql: &str) -> (u16, Value) {
    let body = json!({"type":"json","sql":sql}).to_string();
    let (status, _, body) = http(
        addr,
        &format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The status line of a WebSocket upgrade sent with this `Host`.
fn upgrade_status(addr: &str, host: &str, path: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

const READ_A_FILE: &str = "select 1 as secret";

#[test]
fn a_foreign_host_is_refused_on_get_post_and_the_upgrade() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.rsplit_once(':').unwrap().1.to_string();
    let read = format!("/?type=json&sql={}", url_encode(READ_A_FILE));
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("localhost.attacker.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        let (status, body) = get_with_host(&server.addr, &host, &read);
        assert_eq!(status, 403, "GET with Host {host}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("--allowed-hosts"), "{error}");
        assert_eq!(
            post_with_host(&server.addr, &host, READ_A_FILE).0,
            403,
            "{host}"
        );
        assert_eq!(upgrade_status(&server.addr, &host, "/"), 403, "{host}");
        assert_eq!(
            upgrade_status(&server.addr, &host, "/mosaic"),
            403,
            "{host}"
        );
    }
    // Health probes come with whatever Host a load balancer sends, and reveal nothing.
    assert_eq!(
        get_with_host(&server.addr, "lb.internal", "/healthz").0,
        200
    );
}

#[test]
fn loopback_hosts_are_answered_on_any_port() {
    let server = ServerProcess::start(&[]);
    let read = format!("/?type=json&sql={}", url_encode(READ_A_FILE));
    for host in [
        "localhost",
        "localhost:4000",
        "127.0.0.1:1",
        "[::1]:3000",
        &server.addr,
    ] {
        let (status, body) = get_with_host(&server.addr, host, &read);
        assert_eq!((status, body), (200, json!([{"secret": 1}])), "{host}");
        assert_eq!(
            post_with_host(&server.addr, host, READ_A_FILE).0,
            200,
            "{host}"
        );
        assert_eq!(upgrade_status(&server.addr, host, "/"), 101, "{host}");
    }
}

#[test]
fn listed_hosts_are_answered_and_a_star_answers_any() {
    let server = ServerProcess::start(&["--allowed-hosts", "dash.example.com,Other.Example"]);
    let read = format!("/?type=json&sql={}", url_encode(READ_A_FILE));
    for host in [
        "dash.example.com",
        "dash.example.com:443",
        "other.example:80",
    ] {
        assert_eq!(get_with_host(&server.addr, host, &read).0, 200, "{host}");
        assert_eq!(upgrade_status(&server.addr, host, "/mosaic"), 101, "{host}");
    }
    assert_eq!(get_with_host(&server.addr, "evil.example", &read).0, 403);

    let open = ServerProcess::start(&["--allowed-hosts", "*"]);
    assert_eq!(get_with_host(&open.addr, "evil.example", &read).0, 200);
    assert_eq!(upgrade_status(&open.addr, "evil.example", "/"), 101);
}

/// The address a client reached is answered (a server on 0.0.0.0 reached at its LAN
/// address), another address is not.
#[test]
fn the_address_the_client_reached_is_answered() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address");
        return;
    };
    let server = ServerProcess::start(&["--host", "0.0.0.0"]);
    let port = server.addr.rsplit_once(':').unwrap().1.to_string();
    let addr = format!("{ip}:{port}");
    let read = format!("/?type=json&sql={}", url_encode(READ_A_FILE));
    assert_eq!(get_with_host(&addr, &addr, &read).0, 200, "{addr}");
    assert_eq!(upgrade_status(&addr, &addr, "/"), 101);
    let other = format!("203.0.113.9:{port}");
    assert_eq!(get_with_host(&addr, &other, &read).0, 403);
    drop(server);
}

fn non_loopback_ipv4() -> Option<String> {
    let output = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}
