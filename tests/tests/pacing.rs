//! The compression level follows the link (transport README, "Compression follows the
//! link"): an answer that crosses a link slower than the compressor comes out smaller than
//! the same answer to a reader that keeps up, on the REST door (gzip) and on the WebSocket
//! (permessage-deflate), and both decode to the same rows.
//!
//! The slow link is a proxy that forwards the server's bytes at a fixed rate through a socket
//! with a small receive buffer, so the server's socket backs up as it would behind a slow
//! network (this kernel has no `netem`, and the test must not need root for `tc`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use duckwire_tests::deflate_client::{DeflateClient, BROWSER_OFFER};
use duckwire_tests::*;
use serde_json::{json, Value};

/// The flights table as JSON rows (10 MB): real data, which compresses 7.1:1 at the fastest
/// level and 8.6:1 at the slowest (synthetic rows compress about as well at every level).
fn rows_sql() -> String {
    let flights = data_file("flights-200k.parquet");
    format!("select * from read_parquet('{}')", flights.display())
}

/// What the slow link carries per second (8 Mbit/s): below what the compressor produces even
/// at its slowest level, so the level climbs to the top.
const LINK_BYTES_PER_SECOND: f64 = 1_000_000.0;

fn flights_rows(server: &ServerProcess) -> usize {
    let sql = format!("select count(*) as n from ({})", rows_sql());
    post_rows(server, &sql)[0]["n"].as_u64().unwrap() as usize
}

/// A link slower than the compressor in front of `server`: connections to the returned
/// address reach the server; its answers are forwarded at `LINK_BYTES_PER_SECOND`.
fn slow_link(server: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            std::thread::spawn(move || forward(client, server));
        }
    });
    addr
}

fn forward(mut client: TcpStream, server: SocketAddr) {
    // A small receive buffer set before connecting: the window the server sees stays small,
    // so what the link has not carried yet waits in the server's socket.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket.connect(&server.into()).unwrap();
    let mut upstream: TcpStream = socket.into();
    let (mut requests_in, mut requests_out) =
        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut requests_in, &mut requests_out);
        let _ = requests_out.shutdown(Shutdown::Write);
    });
    let started = Instant::now();
    let mut carried = 0f64;
    let mut chunk = [0u8; 8 * 1024];
    loop {
        let n = match upstream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        carried += n as f64;
        // The link's pace: these bytes arrive once the link had time to carry them.
        let due = Duration::from_secs_f64(carried / LINK_BYTES_PER_SECOND);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        if client.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// The JSON rows of a REST answer, gzip-compressed, and the size of its compressed body.
fn rest_rows(addr: &str) -> (Vec<Value>, usize) {
    let (status, headers, body) = post_json(
        addr,
        &json!({"type":"json","sql":rows_sql()}),
        "Accept-Encoding: gzip\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    let rows = serde_json::from_slice(&decode_body(Some("gzip"), &body)).unwrap();
    (rows, body.len())
}

#[test]
fn over_a_slow_link_rest_answers_are_compressed_harder() {
    let server = ServerProcess::start(&["--http-compression", "on"]);
    let (fast_rows, fast_bytes) = rest_rows(&server.addr);
    let link = slow_link(server.addr.parse().unwrap()).to_string();
    let (slow_rows, slow_bytes) = rest_rows(&link);
    eprintln!("REST: fast reader {fast_bytes} bytes, slow link {slow_bytes}");
    assert_eq!(fast_rows.len(), flights_rows(&server));
    assert_eq!(slow_rows, fast_rows);
    // The reader that keeps up gets the fastest level (2); the slow link lets the level
    // climb.
    assert!(
        slow_bytes * 10 < fast_bytes * 9,
        "slow link {slow_bytes} bytes, fast reader {fast_bytes}"
    );
}

/// A WebSocket query's JSON rows and the compressed bytes the server sent for them.
fn ws_rows(server: &ServerProcess, url: &str) -> (Vec<Value>, f64) {
    let before = server.metric("duckwire_ws_deflated_wire_bytes_total");
    let mut client = DeflateClient::connect(url, Some(BROWSER_OFFER)).unwrap();
    assert!(client.deflate());
    let query = json!({"type":"json","sql":rows_sql(),"queryId":"q"}).to_string();
    client.send_text(&query).unwrap();
    let reply: Value = serde_json::from_str(&client.recv().unwrap().text()).unwrap();
    assert_eq!(reply["type"], "json", "{reply}");
    let rows = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    let sent = server.metric("duckwire_ws_deflated_wire_bytes_total") - before;
    (rows, sent)
}

#[test]
fn over_a_slow_link_websocket_replies_are_compressed_harder() {
    let server = ServerProcess::start(&["--ws-compression", "on"]);
    let (fast_rows, fast_bytes) = ws_rows(&server, &server.url("/"));
    let link = slow_link(server.addr.parse().unwrap());
    let (slow_rows, slow_bytes) = ws_rows(&server, &format!("ws://{link}/"));
    eprintln!("WebSocket: fast reader {fast_bytes} bytes, slow link {slow_bytes}");
    assert_eq!(fast_rows.len(), flights_rows(&server));
    assert_eq!(slow_rows, fast_rows);
    assert!(
        slow_bytes * 10.0 < fast_bytes * 9.0,
        "slow link {slow_bytes} bytes, fast reader {fast_bytes}"
    );
}
