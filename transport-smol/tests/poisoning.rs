//! A panic inside the protocol core stops the server cleanly: the driver catches it, closes
//! the connections, and `run` returns `StartError::CorePoisoned` instead of hanging or
//! unwinding out of the driver task.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use duckwire_smol::{run, ServerConfig, StartError};

const PANIC_SQL: &str = "select 'make the core panic'";

#[test]
fn a_panic_in_the_core_stops_the_server_through_the_shutdown_path() {
    let mut config = ServerConfig {
        port: 0,
        threads: 1,
        ..ServerConfig::default()
    };
    config.core.panic_on_sql = Some(PANIC_SQL.into());
    let (listening_tx, listening) = mpsc::channel();
    let (_keep_open, shutdown) = async_channel::bounded::<()>(1);
    let (result_tx, result) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = run(
            config,
            move |addr| listening_tx.send(addr).unwrap(),
            shutdown,
        );
        let _ = result_tx.send(outcome);
    });
    let addr = listening
        .recv_timeout(Duration::from_secs(30))
        .expect("server listening");

    // A healthy query first: the core works.
    let ok = post(&addr.to_string(), "select 1 as n");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    let answer = post(&addr.to_string(), PANIC_SQL);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "the request is refused or dropped, not answered: {answer}"
    );
    let outcome = result
        .recv_timeout(Duration::from_secs(30))
        .expect("run returned after the panic");
    assert!(
        matches!(outcome, Err(StartError::CorePoisoned)),
        "{outcome:?}"
    );
}

fn post(addr: &str, sql: &str) -> String {
    let body = serde_json::json!({"type":"json","sql":sql}).to_string();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}
