//! `--tls-cert`/`--tls-key` (PROTOCOL §7a): HTTPS and `wss://` on one port, with a
//! certificate made by the test; nothing in clear text on a TLS port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use duckwire_tests::*;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tungstenite::Message;

struct Certificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    der: CertificateDer<'static>,
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
fn certificate(name: &str) -> Certificate {
    let dir = temp_dir(name);
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("generate a certificate");
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    Certificate {
        cert_file,
        key_file,
        der: certified.cert.der().clone(),
    }
}

/// A TLS client that trusts exactly `cert`, connected to `addr` as `localhost`.
fn tls_connect(
    addr: &str,
    cert: &Certificate,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

fn start(cert: &Certificate) -> ServerProcess {
    ServerProcess::start(&[
        "--tls-cert",
        cert.cert_file.to_str().unwrap(),
        "--tls-key",
        cert.key_file.to_str().unwrap(),
    ])
}

/// Reads one HTTP answer with a `Content-Length` body: status and body.
fn read_answer(stream: &mut impl Read) -> (u16, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "answer head cut short");
        bytes.push(byte[0]);
    }
    let head = String::from_utf8(bytes).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    (status, body)
}

#[test]
fn https_answers_on_a_kept_alive_encrypted_connection() {
    let cert = certificate("tls-https");
    let server = start(&cert);
    let mut stream = tls_connect(&server.addr, &cert);
    for (sql, connection) in [
        ("select 42 as n", "keep-alive"),
        ("select 43 as n", "close"),
    ] {
        let body = json!({"type":"json","sql":sql}).to_string();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let (status, body) = read_answer(&mut stream);
        let rows: Value = serde_json::from_slice(&body).unwrap();
        let expected: i64 = sql[7..9].parse().unwrap();
        assert_eq!((status, rows), (200, json!([{"n": expected}])));
    }
}

#[test]
fn wss_speaks_the_sqlrooms_protocol() {
    let cert = certificate("tls-wss");
    let server = start(&cert);
    let stream = tls_connect(&server.addr, &cert);
    let (mut socket, _) = tungstenite::client::client(
        format!(
            "wss://localhost:{}/",
            server.addr.rsplit(':').next().unwrap()
        ),
        stream,
    )
    .expect("wss handshake");
    socket
        .send(Message::Text(
            json!({"type":"json","sql":"select 7 as n","queryId":"q1"})
                .to_string()
                .into(),
        ))
        .unwrap();
    let reply = loop {
        match socket.read().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(reply["type"], "json");
    assert_eq!(reply["queryId"], "q1");
    let rows: Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(rows, json!([{"n": 7}]));
}

#[test]
fn clear_text_on_a_tls_port_gets_no_answer() {
    let cert = certificate("tls-plain");
    let server = start(&cert);
    let mut tcp = TcpStream::connect(&server.addr).unwrap();
    tcp.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // The server drops the connection; whatever it sent (a TLS alert at most) is no HTTP.
    let _ = tcp.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "answered in clear text");
    // The encrypted door still works after a failed handshake.
    let mut stream = tls_connect(&server.addr, &cert);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut stream).0, 200);
}

#[test]
fn bad_certificate_flags_stop_the_start_naming_the_flag() {
    let cert = certificate("tls-bad");
    let cert_path = cert.cert_file.to_str().unwrap();
    let key_path = cert.key_file.to_str().unwrap();
    assert!(refused_start(&["--tls-cert", cert_path]).contains("--tls-cert needs --tls-key"));
    assert!(
        refused_start(&["--tls-cert", "/nonexistent.pem", "--tls-key", key_path])
            .contains("--tls-cert /nonexistent.pem")
    );
    // A key file in place of the certificate: no CERTIFICATE block.
    assert!(refused_start(&["--tls-cert", key_path, "--tls-key", key_path]).contains("--tls-cert"));
    // The certificate in place of the key.
    assert!(
        refused_start(&["--tls-cert", cert_path, "--tls-key", cert_path]).contains("--tls-key")
    );
}

/// What a server started on every interface with a token logs before it listens.
fn startup_log_with_token_on_all_interfaces(name: &str, extra: &[&str]) -> String {
    let log = temp_dir(name).join("server.log");
    let mut args = vec!["--host", "0.0.0.0", "--auth-token", "secret"];
    args.extend_from_slice(extra);
    let server = ServerProcess::start_logging_to(&args, &[], &log);
    let logged = std::fs::read_to_string(&log).unwrap();
    drop(server);
    logged
}

#[test]
fn a_token_on_a_public_address_without_tls_is_warned_about() {
    let warned = startup_log_with_token_on_all_interfaces("tls-warning", &[]);
    assert!(warned.contains("clear text"), "{warned}");
    let cert = certificate("tls-no-warning");
    let quiet = startup_log_with_token_on_all_interfaces(
        "tls-no-warning-log",
        &[
            "--tls-cert",
            cert.cert_file.to_str().unwrap(),
            "--tls-key",
            cert.key_file.to_str().unwrap(),
        ],
    );
    assert!(!quiet.contains("clear text"), "{quiet}");
}
