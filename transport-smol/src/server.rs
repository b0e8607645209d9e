//! Startup, the accept loop on one port (HTTP routes and WebSocket upgrades), and graceful
//! shutdown (SPEC §1, §8).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use duckdb::Connection;
use duckwire_core::{tokens_match, ConnId, ConnectionInfo, QueryKind, QueryOutcome, Server};
use serde_json::{json, Value};
use smol::io::AsyncWriteExt;
use smol::net::{TcpListener, TcpStream};

use crate::cache::ResultCache;
use crate::config::ServerConfig;
use crate::driver::{Driver, DriverInput};
use crate::executor::{Completion, Executor, Job};
use crate::http::{read_body, read_head, write_response, HeadError, RequestHead, Response};
use crate::meta::{self, MetaWorker};
use crate::metrics::Metrics;

/// How long shutdown waits for room saves and running queries.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open database {path}: {message}")]
    Database { path: String, message: String },
    #[error("cannot initialise meta storage: {0}")]
    Meta(String),
    #[error("cannot prepare the cache directory: {0}")]
    Cache(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// What every connection task needs.
struct Shared {
    config: ServerConfig,
    driver: async_channel::Sender<DriverInput>,
    executor: Arc<Executor>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    duckdb_version: String,
    next_conn: AtomicU64,
}

/// Opens (or creates) the database as SPEC §8 says.
pub fn open_database(config: &ServerConfig) -> Result<Connection, StartError> {
    let fail = |message: String| StartError::Database {
        path: config.db_path.clone(),
        message,
    };
    let conn = if config.is_in_memory() {
        Connection::open_in_memory().map_err(|e| fail(e.to_string()))?
    } else {
        let path = std::path::Path::new(&config.db_path);
        if path.metadata().is_ok_and(|m| m.is_file() && m.len() == 0) {
            // An empty file is not a DuckDB database; DuckDB refuses it.
            std::fs::remove_file(path).map_err(|e| fail(e.to_string()))?;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        Connection::open(path).map_err(|e| fail(e.to_string()))?
    };
    conn.execute_batch(&format!("SET threads = {}", config.threads.max(1)))
        .map_err(|e| fail(e.to_string()))?;
    Ok(conn)
}

fn load_extensions(conn: &Connection, extensions: &[String]) {
    for spec in extensions {
        let (name, repository) = match spec.split_once('@') {
            Some((name, repo)) => (name, Some(repo)),
            None => (spec.as_str(), None),
        };
        let valid =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid(name) || !repository.is_none_or(valid) {
            tracing::warn!(extension = spec, "skipping extension with an invalid name");
            continue;
        }
        let install = match repository {
            Some(repo) => format!("INSTALL {name} FROM {repo}"),
            None => format!("INSTALL {name}"),
        };
        match conn.execute_batch(&format!("{install}; LOAD {name};")) {
            Ok(()) => tracing::info!(extension = spec, "extension loaded"),
            Err(e) => tracing::warn!(extension = spec, "extension not loaded (skipped): {e}"),
        }
    }
}

/// `host:port`, with IPv6 hosts bracketed (`[::1]:4000`).
fn listen_address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Runs the server until `shutdown` receives (or closes). `on_listening` gets the bound
/// address once the server accepts connections.
pub fn run(
    config: ServerConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: async_channel::Receiver<()>,
) -> Result<(), StartError> {
    let base = open_database(&config)?;
    load_extensions(&base, &config.extensions);
    let ns = meta::init(&base, &config.meta_namespace, config.meta_db.as_deref())
        .map_err(StartError::Meta)?;
    let duckdb_version: String = base
        .query_row("SELECT version()", [], |row| row.get(0))
        .unwrap_or_else(|_| "unknown".into());
    let meta_conn = base
        .try_clone()
        .map_err(|e| StartError::Meta(e.to_string()))?;
    let base = Arc::new(Mutex::new(base));

    let metrics = Arc::new(Metrics::default());
    let cache = Arc::new(
        ResultCache::new(
            config.cache_bytes,
            config.cache_dir.clone(),
            metrics.clone(),
        )
        .map_err(StartError::Cache)?,
    );
    let (driver_tx, driver_rx) = async_channel::unbounded::<DriverInput>();
    let completions = {
        let driver_tx = driver_tx.clone();
        Arc::new(move |done: Completion| {
            let _ = driver_tx.try_send(DriverInput::Executor(done));
        })
    };
    let executor = Arc::new(Executor::start(
        base.clone(),
        config.threads,
        cache.clone(),
        metrics.clone(),
        completions,
    ));
    let meta_worker = {
        let driver_tx = driver_tx.clone();
        MetaWorker::start(
            meta_conn,
            ns,
            executor.write_epoch(),
            Arc::new(move |done| {
                let _ = driver_tx.try_send(DriverInput::Meta(done));
            }),
        )
    };
    let (fatal_tx, fatal_rx) = async_channel::bounded::<()>(1);
    let mut seed = [0u8; 16];
    let _ = getrandom::fill(&mut seed);
    let driver = Driver {
        server: Server::new(config.core.clone(), seed),
        inputs: driver_rx,
        executor: executor.clone(),
        meta: meta_worker,
        cache,
        metrics: metrics.clone(),
        fatal: fatal_tx,
        started: Instant::now(),
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        driver: driver_tx.clone(),
        executor: executor.clone(),
        metrics,
        ready: AtomicBool::new(false),
        duckdb_version,
        next_conn: AtomicU64::new(1),
    });

    let addr = listen_address(&config.host, config.port);
    let mut meta_worker = smol::block_on(crate::EXECUTOR.run(async {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: addr.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen {
            addr: addr.clone(),
            source,
        })?;
        let driver_task = crate::spawn(driver.run());
        shared.ready.store(true, Relaxed);
        on_listening(local);

        let accept_loop = async {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        // Replies are whole frames written at once: send them without
                        // waiting for the peer's ack of the previous one (Nagle).
                        let _ = stream.set_nodelay(true);
                        let shared = shared.clone();
                        crate::spawn(handle_connection(stream, peer, shared)).detach();
                    }
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        smol::Timer::after(ACCEPT_BACKOFF).await;
                    }
                }
            }
        };
        let stop = async {
            smol::future::or(
                async {
                    let _ = shutdown.recv().await;
                },
                async {
                    let _ = fatal_rx.recv().await;
                },
            )
            .await;
        };
        smol::future::or(accept_loop, stop).await;
        drop(listener);

        tracing::info!("shutting down: closing connections and saving rooms");
        shared.ready.store(false, Relaxed);
        let (done_tx, done_rx) = async_channel::bounded(1);
        let _ = driver_tx
            .send(DriverInput::Shutdown { done: done_tx })
            .await;
        let saved = smol::future::or(async { done_rx.recv().await.is_ok() }, async {
            smol::Timer::after(SHUTDOWN_GRACE).await;
            false
        })
        .await;
        if !saved {
            tracing::error!("shutdown: some CRDT rooms were not saved in time");
        }
        driver_tx.close();
        Ok::<_, StartError>(driver_task.await)
    }))?;
    // The driver stopped: no more work arrives. Stop queries, finish saves, checkpoint.
    executor.shutdown();
    meta_worker.stop();
    let base = base.lock().unwrap_or_else(|e| e.into_inner());
    if !config.is_in_memory() {
        if let Err(e) = base.execute_batch("FORCE CHECKPOINT") {
            tracing::warn!("checkpoint at shutdown failed: {e}");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn handle_connection(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let head = smol::future::or(read_head(&mut stream), async {
        smol::Timer::after(HEAD_TIMEOUT).await;
        Err(HeadError::Malformed)
    })
    .await;
    let (head, rest) = match head {
        Ok(parsed) => parsed,
        Err(HeadError::Malformed) => {
            let _ = write_response(&mut stream, Response::text(400, "bad request")).await;
            return;
        }
        Err(HeadError::Io) => return,
    };
    if head.is_websocket_upgrade() {
        upgrade(stream, rest, peer, head, shared).await;
        return;
    }
    let response = route(&mut stream, &head, rest, &shared).await;
    let _ = write_response(&mut stream, response).await;
}

/// `None` when the request carries no `Origin` or an allowed one; else the 403 answer.
fn origin_refusal(head: &RequestHead, shared: &Shared) -> Option<Response> {
    let origin = head.header("origin")?;
    (!shared.config.core.origins.allows(origin)).then(|| Response::error(403, "origin not allowed"))
}

fn cors_headers(head: &RequestHead) -> Vec<(String, String)> {
    match head.header("origin") {
        Some(origin) => vec![
            ("Access-Control-Allow-Origin".into(), origin.to_string()),
            ("Vary".into(), "Origin".into()),
            (
                "Access-Control-Allow-Headers".into(),
                "authorization, content-type".into(),
            ),
            (
                "Access-Control-Allow-Methods".into(),
                "GET, POST, OPTIONS".into(),
            ),
        ],
        None => Vec::new(),
    }
}

fn authorized(head: &RequestHead, shared: &Shared) -> bool {
    match &shared.config.core.auth_token {
        None => true,
        Some(expected) => head
            .bearer_token()
            .is_some_and(|given| tokens_match(expected, &given)),
    }
}

async fn route(
    stream: &mut TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    shared: &Shared,
) -> Response {
    if let Some(refusal) = origin_refusal(head, shared) {
        return refusal;
    }
    let mut response = match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/healthz") => Response::text(200, "ok"),
        ("GET", "/readyz") if shared.ready.load(Relaxed) => Response::text(200, "ok"),
        ("GET", "/readyz") => Response::text(503, "not ready"),
        (_, "/version" | "/metrics" | "/")
            if !authorized(head, shared) && head.method != "OPTIONS" =>
        {
            Response::error(401, "unauthorized")
        }
        ("GET", "/version") => Response::json(
            200,
            &json!({"name": "duckwire", "version": env!("CARGO_PKG_VERSION"), "duckdb": shared.duckdb_version}),
        ),
        ("GET", "/metrics") => Response {
            content_type: "text/plain; version=0.0.4",
            ..Response::text(200, &shared.metrics.render())
        },
        ("OPTIONS", "/") => Response::text(204, ""),
        ("POST", "/") => rest_query(stream, head, rest, shared).await,
        _ => Response::text(404, "not found"),
    };
    response.headers.extend(cors_headers(head));
    response
}

/// Mosaic REST compatibility: `POST /` with `{"type":T,"sql":S}`.
async fn rest_query(
    stream: &mut TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    shared: &Shared,
) -> Response {
    let body = match read_body(
        stream,
        head,
        rest,
        shared.config.core.limits.max_frame_bytes,
    )
    .await
    {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => Value::Object(object),
        Ok(_) => return Response::error(400, "message must be a JSON object"),
        Err(e) => return Response::error(400, &format!("invalid JSON: {e}")),
    };
    let kind = match request.get("type").and_then(Value::as_str) {
        Some("arrow") => QueryKind::Arrow,
        Some("json") => QueryKind::Json,
        Some("exec") => QueryKind::Exec,
        Some(other) => return Response::error(400, &format!("unknown message type: {other}")),
        None => return Response::error(400, "missing or non-string field `type`"),
    };
    let Some(sql) = request.get("sql").and_then(Value::as_str) else {
        return Response::error(400, "missing field `sql`");
    };
    if sql.trim().is_empty() {
        return Response::error(400, "empty SQL");
    }
    let (reply, answer) = async_channel::bounded(1);
    shared.executor.submit(Job::Rest {
        kind,
        sql: sql.to_string(),
        reply,
    });
    match answer.recv().await {
        Ok(Ok(QueryOutcome::Arrow(ipc))) => Response {
            status: 200,
            content_type: "application/vnd.apache.arrow.stream",
            body: Vec::from(ipc.as_ref()),
            headers: Vec::new(),
        },
        Ok(Ok(QueryOutcome::Json(rows))) => Response {
            status: 200,
            content_type: "application/json",
            body: rows.into_bytes(),
            headers: Vec::new(),
        },
        Ok(Ok(_)) => Response::json(200, &json!({})),
        Ok(Err(message)) => Response::error(500, &message),
        Err(_) => Response::error(503, "server is shutting down"),
    }
}

async fn upgrade(
    mut stream: TcpStream,
    rest: Vec<u8>,
    peer: SocketAddr,
    head: RequestHead,
    shared: Arc<Shared>,
) {
    if let Some(refusal) = origin_refusal(&head, &shared) {
        tracing::warn!(%peer, origin = head.header("origin"), "WebSocket upgrade refused: origin not allowed");
        let _ = write_response(&mut stream, refusal).await;
        return;
    }
    let Some(key) = head.header("sec-websocket-key") else {
        let _ = write_response(
            &mut stream,
            Response::text(400, "missing Sec-WebSocket-Key"),
        )
        .await;
        return;
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.trim().as_bytes())
    );
    // Clients that offer subprotocols fail unless one is selected; take their first.
    if let Some(protocol) = head
        .header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
    {
        response.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", protocol.trim()));
    }
    response.push_str("\r\n");
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let conn = ConnId(shared.next_conn.fetch_add(1, Relaxed));
    let info = ConnectionInfo {
        peer: peer.to_string(),
        bearer_token: head.bearer_token(),
        url_token: head.query_param("token"),
        origin: head.header("origin").map(str::to_string),
    };
    tracing::debug!(%peer, conn = conn.0, path = head.path, "WebSocket connection opened");
    crate::ws::serve(
        stream,
        rest,
        conn,
        info,
        shared.config.core.limits.clone(),
        shared.driver.clone(),
    )
    .await;
    tracing::debug!(%peer, conn = conn.0, "WebSocket connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(listen_address("127.0.0.1", 4000), "127.0.0.1:4000");
        assert_eq!(listen_address("::1", 4000), "[::1]:4000");
        assert_eq!(listen_address("[::1]", 4000), "[::1]:4000");
        assert_eq!(listen_address("localhost", 0), "localhost:0");
    }
}
