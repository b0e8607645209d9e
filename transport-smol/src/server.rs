//! Startup, the accept loop on one port (HTTP routes and WebSocket upgrades), and graceful
//! shutdown (PROTOCOL §1, §8).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::handshake::server::{
    create_response, write_response as write_handshake,
};
use async_tungstenite::tungstenite::http::{self, HeaderValue};
use bytes::Bytes;
use duckdb::Connection;
use duckwire_core::{
    close_code, ConnId, ConnectionInfo, Dialect, HttpRequest, HttpResponse, Server,
    HOST_NOT_ALLOWED, ORIGIN_NOT_ALLOWED,
};
use serde_json::json;
use smol::io::AsyncWriteExt;
use smol::net::{TcpListener, TcpStream};

use crate::tls::Stream;

use crate::cache::ResultCache;
use crate::compress::{Encoding, COMPRESS_ABOVE};
use crate::config::ServerConfig;
use crate::driver::{
    ConnectionWriter, Driver, DriverInput, Outbound, ReadGate, SentCounter, SentReports,
};
use crate::executor::connection::WriteEpoch;
use crate::executor::database::Database;
use crate::executor::{Completion, Executor, SharedDatabase};
use crate::http::{read_body, read_head, write_response, HeadError, RequestHead, Response};
use crate::meta::{self, MetaWorker};
use crate::metrics::Metrics;

/// How long shutdown waits for room saves and running queries.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open database {path}: {message}")]
    Database { path: String, message: String },
    #[error("{0}")]
    Flags(String),
    #[error("--memory-limit {value}: {message}")]
    MemoryLimit { value: String, message: String },
    #[error("--init-sql {file}, line {line}: {message}")]
    InitSql {
        file: String,
        line: usize,
        message: String,
    },
    #[error("cannot lock down file access (--allowed-dirs / --no-external-access): {0}")]
    Sandbox(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot initialise meta storage: {0}")]
    Meta(String),
    #[error("cannot prepare the cache directory: {0}")]
    Cache(std::io::Error),
    #[error("stopped after an internal error in the protocol core (see the log above)")]
    CorePoisoned,
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
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    duckdb_version: String,
    next_conn: AtomicU64,
    /// `--tls-cert`/`--tls-key`: every connection on the port speaks TLS.
    tls: Option<futures_rustls::TlsAcceptor>,
    /// What the connections' writers sent, for the driver.
    sent_reports: Arc<SentReports>,
}

/// Opens (or creates) the database as PROTOCOL §8 says: its C API handle (which the workers
/// connect and classify statements through) and a first connection.
pub fn open_database(config: &ServerConfig) -> Result<(Arc<Database>, Connection), StartError> {
    let fail = |message: String| StartError::Database {
        path: config.db_path.clone(),
        message,
    };
    let mut settings = vec![("lambda_syntax", config.lambda_syntax.as_str())];
    if config.read_only {
        // Several read-only processes may serve one file.
        settings.push(("access_mode", "READ_ONLY"));
    }
    let database = if config.is_in_memory() {
        Database::open(":memory:", &settings).map_err(fail)?
    } else {
        let path = std::path::Path::new(&config.db_path);
        if path.metadata().is_ok_and(|m| m.is_file() && m.len() == 0) {
            // An empty file is not a DuckDB database; DuckDB refuses it.
            std::fs::remove_file(path).map_err(|e| fail(e.to_string()))?;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        }
        Database::open(&config.db_path, &settings).map_err(fail)?
    };
    let conn = database.connect().map_err(fail)?;
    conn.execute_batch(&format!("SET threads = {}", config.threads.max(1)))
        .map_err(|e| fail(e.to_string()))?;
    Ok((database, conn))
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

/// The version of the DuckDB library this binary runs (`v2.0.0`), asked of DuckDB itself.
pub fn duckdb_library_version() -> String {
    Connection::open_in_memory()
        .and_then(|conn| conn.query_row("SELECT version()", [], |row| row.get(0)))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Flag combinations that cannot work, refused before anything starts.
fn check_flags(config: &ServerConfig) -> Result<(), StartError> {
    match (&config.core.auth_token, &config.core.read_token) {
        (None, Some(_)) => {
            return Err(StartError::Flags(
                "--read-token needs --auth-token: without a full token every client may write"
                    .into(),
            ))
        }
        (Some(full), Some(read)) if full == read => {
            return Err(StartError::Flags(
                "--read-token must differ from --auth-token".into(),
            ))
        }
        _ => {}
    }
    if config.read_only && config.is_in_memory() {
        return Err(StartError::Flags(
            "--read-only needs a database file (--db-path)".into(),
        ));
    }
    if config.read_only && config.core.sync_enabled && config.meta_db.is_none() {
        return Err(StartError::Flags(
            "--sync with --read-only needs --meta-db on a writable file: rooms are saved there"
                .into(),
        ));
    }
    Ok(())
}

/// Runs `--init-sql`: each statement in order; the first failure stops the start with the
/// line it begins on.
fn run_init_sql(conn: &Connection, file: &std::path::Path) -> Result<(), StartError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| StartError::InitSql {
        file: name.clone(),
        line: 0,
        message: e.to_string(),
    })?;
    for statement in duckwire_core::sql::split_statements(&text) {
        let offset = statement.as_ptr() as usize - text.as_ptr() as usize;
        let leading = statement.len() - statement.trim_start().len();
        let line = text[..offset + leading].matches('\n').count() + 1;
        conn.execute_batch(statement)
            .map_err(|e| StartError::InitSql {
                file: name.clone(),
                line,
                message: e.to_string(),
            })?;
    }
    tracing::info!(file = name, "init SQL ran");
    Ok(())
}

/// `--allowed-dirs` / `--no-external-access`: DuckDB's own sandbox, locked so no client can
/// undo it. Meta storage is attached before, and the result cache's files are written by
/// the server itself, so both keep working.
fn lock_down_file_access(conn: &Connection, config: &ServerConfig) -> Result<(), StartError> {
    if config.allowed_dirs.is_empty() && !config.no_external_access {
        return Ok(());
    }
    let mut statements = Vec::new();
    if !config.no_external_access {
        let dirs: Vec<String> = config
            .allowed_dirs
            .iter()
            .map(|dir| {
                // DuckDB compares canonical paths; a directory must end with a separator so a
                // sibling with the same prefix is not inside it.
                let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                let mut text = dir.display().to_string();
                if !text.ends_with('/') {
                    text.push('/');
                }
                format!("'{}'", text.replace('\'', "''"))
            })
            .collect();
        statements.push(format!("SET allowed_directories = [{}]", dirs.join(", ")));
    }
    statements.push("SET enable_external_access = false".into());
    statements.push("SET lock_configuration = true".into());
    for statement in statements {
        conn.execute_batch(&statement)
            .map_err(|e| StartError::Sandbox(format!("{statement}: {e}")))?;
    }
    Ok(())
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
    check_flags(&config)?;
    // Bad certificate files stop the start before anything else is opened.
    let tls = match &config.tls {
        Some(files) => {
            Some(crate::tls::acceptor(&files.cert, &files.key).map_err(StartError::Tls)?)
        }
        None => None,
    };
    let (database, base) = open_database(&config)?;
    if let Some(limit) = &config.memory_limit {
        base.execute_batch(&format!(
            "SET memory_limit = '{}'",
            limit.replace('\'', "''")
        ))
        .map_err(|e| StartError::MemoryLimit {
            value: limit.clone(),
            message: e.to_string(),
        })?;
    }
    load_extensions(&base, &config.extensions);
    let ns = if config.read_only && config.meta_db.is_none() {
        // Nothing can be created in a read-only database; meta storage needs --meta-db.
        meta::quoted_namespace(&config.meta_namespace)
    } else {
        meta::init(&base, &config.meta_namespace, config.meta_db.as_deref())
            .map_err(StartError::Meta)?
    };
    if let Some(file) = &config.init_sql {
        run_init_sql(&base, file)?;
    }
    lock_down_file_access(&base, &config)?;
    let duckdb_version: String = base
        .query_row("SELECT version()", [], |row| row.get(0))
        .unwrap_or_else(|_| "unknown".into());
    let meta_conn = base
        .try_clone()
        .map_err(|e| StartError::Meta(e.to_string()))?;
    let base = SharedDatabase::new(base, database);

    let metrics = Arc::new(Metrics::default());
    // One "a write happened" epoch for the result cache and the workers' plans.
    let write_epoch = Arc::new(WriteEpoch::default());
    let cache = Arc::new(
        ResultCache::new(
            config.cache_bytes,
            config.cache_dir.clone(),
            metrics.clone(),
            write_epoch.clone(),
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
        write_epoch,
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
    let mut core_config = config.core.clone();
    core_config.read_only = config.read_only;
    let broker = match &config.redis_url {
        Some(url) => {
            if core_config.replica_id.is_none() {
                // Unique among replicas: it lets each drop its own publications' echo.
                let mut id = [0u8; 8];
                let _ = getrandom::fill(&mut id);
                core_config.replica_id = Some(hex::encode(id));
            }
            let replica_id = core_config.replica_id.clone().unwrap_or_default();
            Some(
                crate::broker::Broker::start(
                    url,
                    &config.redis_prefix,
                    config.redis_ca.as_deref(),
                    &replica_id,
                    driver_tx.clone(),
                    metrics.clone(),
                )
                .map_err(StartError::Flags)?,
            )
        }
        None => None,
    };
    // Acknowledged CRDT changes must survive a crash when rooms are stored in a file.
    // In cluster mode the room's Redis Stream is the log: appended before the ack always,
    // since that append is also how the other replicas get the change.
    core_config.durable_room_log =
        !config.is_in_memory() || config.meta_db.is_some() || broker.is_some();
    let sent_reports = Arc::new(SentReports::default());
    let driver = Driver {
        server: Server::new(core_config, seed),
        inputs: driver_rx,
        executor: executor.clone(),
        meta: meta_worker,
        cache,
        broker,
        metrics: metrics.clone(),
        sent_reports: sent_reports.clone(),
        fatal: fatal_tx,
        started: Instant::now(),
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        driver: driver_tx.clone(),
        metrics,
        ready: AtomicBool::new(false),
        duckdb_version,
        next_conn: AtomicU64::new(1),
        tls,
        sent_reports,
    });

    let addr = listen_address(&config.host, config.port);
    let meta_worker = smol::block_on(crate::EXECUTOR.run(async {
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

        // Its own task: as part of the future `run` drives, it would be polled (one failed
        // accept4 and an epoll re-arm) each time any task on the executor woke.
        let accept_shared = shared.clone();
        let accept_task = crate::spawn(async move {
            let shared = accept_shared;
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
        });
        // `true` when the core was poisoned.
        let stop = async {
            smol::future::or(
                async {
                    let _ = shutdown.recv().await;
                    false
                },
                async { fatal_rx.recv().await.is_ok() },
            )
            .await
        };
        let poisoned = stop.await;
        // Cancelling the task drops the listener: no new connections.
        let _ = accept_task.cancel().await;

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
        Ok::<_, StartError>((driver_task.await, poisoned))
    }))?;
    let (mut meta_worker, poisoned) = meta_worker;
    // The driver stopped: no more work arrives. Stop queries, finish saves, checkpoint.
    executor.shutdown();
    meta_worker.stop();
    let base = base.base.lock().unwrap_or_else(|e| e.into_inner());
    if !config.is_in_memory() {
        if let Err(e) = base.execute_batch("FORCE CHECKPOINT") {
            tracing::warn!("checkpoint at shutdown failed: {e}");
        }
    }
    tracing::info!("stopped");
    if poisoned {
        return Err(StartError::CorePoisoned);
    }
    Ok(())
}

/// Waits until `deadline`, or forever without one.
async fn until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => {
            smol::Timer::at(at).await;
        }
        None => std::future::pending().await,
    }
}

async fn handle_connection(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // The address the client reached us at: a `Host` naming it is answered (PROTOCOL §4).
    let local_ip = tcp.local_addr().ok().map(|addr| addr.ip());
    let mut buffer = Vec::with_capacity(1024);
    // A new connection must finish its TLS handshake and send its first request head in
    // time (later heads on a kept-alive connection are bounded by the core's HTTP idle
    // timeout).
    let deadline = shared
        .config
        .http_head_timeout
        .map(|timeout| std::time::Instant::now() + timeout);
    let mut stream = match &shared.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            let handshake = async { Some(acceptor.accept(tcp).await) };
            match smol::future::or(handshake, async {
                until(deadline).await;
                None
            })
            .await
            {
                Some(Ok(tls)) => Stream::Tls(Box::new(tls)),
                Some(Err(e)) => {
                    // A plain-HTTP client on a TLS port, a wrong certificate, a scanner.
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                None => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let head = smol::future::or(read_head(&mut stream, &mut buffer), async {
        until(deadline).await;
        Err(HeadError::TimedOut)
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(HeadError::TimedOut) => {
            let answer = Response::text(408, "request head timeout");
            let _ = write_response(&mut stream, &answer, false).await;
            return;
        }
        Err(HeadError::Malformed) => {
            let _ = write_response(&mut stream, &Response::text(400, "bad request"), false).await;
            return;
        }
        Err(HeadError::Io) => return,
    };
    let client = Client { peer, local_ip };
    if head.is_websocket_upgrade() {
        upgrade(stream, buffer, client, head, shared).await;
        return;
    }
    serve_http(stream, buffer, client, head, shared).await;
}

/// Who is on the other end of a connection, and where it reached us.
#[derive(Clone, Copy)]
struct Client {
    peer: SocketAddr,
    local_ip: Option<std::net::IpAddr>,
}

/// An HTTP connection: each request goes to the core, its answer comes back through the
/// connection's queue; kept alive until the client says `Connection: close`, the core closes
/// it (idle timeout, shutdown) or the peer goes away. Requests are taken one after another,
/// so pipelined requests are answered in order.
async fn serve_http(
    mut stream: Stream,
    mut buffer: Vec<u8>,
    client: Client,
    first: RequestHead,
    shared: Arc<Shared>,
) {
    let peer = client.peer;
    let conn = ConnId(shared.next_conn.fetch_add(1, Relaxed));
    let (queue_tx, answers) = async_channel::unbounded::<Outbound>();
    let (close_tx, closes) = async_channel::bounded::<(u16, String)>(1);
    let gate = Arc::new(ReadGate::default());
    let writer = ConnectionWriter {
        queue: queue_tx,
        close: close_tx,
        gate: gate.clone(),
        sent: SentCounter::new(conn, &shared.sent_reports),
    };
    let sent_counter = writer.sent.clone();
    let info = ConnectionInfo {
        dialect: Dialect::Http,
        peer: peer.to_string(),
        ..ConnectionInfo::default()
    };
    if shared
        .driver
        .send(DriverInput::Open { conn, info, writer })
        .await
        .is_err()
    {
        return;
    }
    let mut head = first;
    let mut upgrade_to_websocket = None;
    loop {
        let keep_alive = head.keep_alive();
        let body = match read_body(
            &mut stream,
            &head,
            &mut buffer,
            shared.config.core.limits.max_frame_bytes,
        )
        .await
        {
            Ok(body) => body,
            Err(refusal) => {
                // The framing is lost: answer and close.
                let _ = write_response(&mut stream, &refusal, false).await;
                break;
            }
        };
        let request = HttpRequest {
            method: head.method.clone(),
            path: head.path.clone(),
            bearer_token: head.bearer_token(),
            url_token: head.query_param("token"),
            origin: head.header("origin").map(str::to_string),
            host: head.header("host").map(str::to_string),
            local_ip: client.local_ip,
            params: head.query_params(),
            body,
        };
        if shared
            .driver
            .send(DriverInput::Http { conn, request })
            .await
            .is_err()
        {
            break;
        }
        let answer = smol::future::or(async { answers.recv().await.ok() }, async {
            closes
                .recv()
                .await
                .ok()
                .map(|(code, reason)| Outbound::Close(code, reason))
        })
        .await;
        let (response, sent) = match answer {
            Some(Outbound::Response(response)) => {
                let sent = response.len();
                let rendered = render(response, &head, &shared);
                (
                    compressed(rendered, &head, &peer, &shared).await,
                    Some(sent),
                )
            }
            Some(Outbound::Close(code, reason)) => (closed_by_core(code, &reason), None),
            Some(Outbound::Frame(_) | Outbound::Ping) | None => break,
        };
        let keep_alive = keep_alive && sent.is_some();
        if write_response(&mut stream, &response, keep_alive)
            .await
            .is_err()
        {
            break;
        }
        if let Some(bytes) = sent {
            sent_counter.sent(bytes);
        }
        if !keep_alive {
            break;
        }
        // The next request, unless the core closes the connection first (idle timeout,
        // shutdown): while it waits, only the core's idle timer bounds the wait.
        let next = smol::future::or(
            async {
                gate.wait_open().await;
                Some(read_head(&mut stream, &mut buffer).await)
            },
            async {
                let _ = closes.recv().await;
                None
            },
        )
        .await;
        match next {
            Some(Ok(next)) if next.is_websocket_upgrade() => {
                upgrade_to_websocket = Some(next);
                break;
            }
            Some(Ok(next)) => head = next,
            Some(Err(HeadError::Malformed)) => {
                let refusal = Response::text(400, "bad request");
                let _ = write_response(&mut stream, &refusal, false).await;
                break;
            }
            Some(Err(HeadError::Io | HeadError::TimedOut)) | None => break,
        }
    }
    let _ = shared.driver.send(DriverInput::Closed { conn }).await;
    if let Some(head) = upgrade_to_websocket {
        upgrade(stream, buffer, client, head, shared).await;
    }
}

/// Compresses a large answer when `--http-compression` applies to this peer and the request
/// accepts an encoding we speak. Compression runs on the blocking pool, off the I/O thread.
async fn compressed(
    mut response: Response,
    head: &RequestHead,
    peer: &SocketAddr,
    shared: &Shared,
) -> Response {
    if response.body.len() <= COMPRESS_ABOVE || !shared.config.http_compression.applies_to(peer) {
        return response;
    }
    let Some(encoding) = head.header("accept-encoding").and_then(Encoding::negotiate) else {
        return response;
    };
    let body = response.body.clone();
    match smol::unblock(move || encoding.compress(&body)).await {
        Ok(smaller) => {
            response.body = Bytes::from(smaller);
            response
                .headers
                .push(("Content-Encoding".into(), encoding.header_value().into()));
            response
                .headers
                .push(("Vary".into(), "Accept-Encoding".into()));
            response
        }
        Err(e) => {
            tracing::warn!("compressing an answer failed (sent as is): {e}");
            response
        }
    }
}

enum HandshakeRefusal {
    /// No or another `Sec-WebSocket-Version` than 13: `426`.
    Version,
    Invalid(String),
}

/// The `101 Switching Protocols` answer for an upgrade request, from tungstenite.
fn handshake_response(head: &RequestHead) -> Result<http::Response<()>, HandshakeRefusal> {
    use async_tungstenite::tungstenite::error::{Error, ProtocolError};
    let target = match &head.query {
        Some(query) => format!("{}?{query}", head.path),
        None => head.path.clone(),
    };
    let mut request = http::Request::builder()
        .method(head.method.as_str())
        .uri(target)
        .version(if head.version_minor == 0 {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        });
    for (name, value) in &head.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(())
        .map_err(|e| HandshakeRefusal::Invalid(e.to_string()))?;
    create_response(&request).map_err(|e| match e {
        Error::Protocol(ProtocolError::MissingSecWebSocketVersionHeader) => {
            HandshakeRefusal::Version
        }
        other => HandshakeRefusal::Invalid(other.to_string()),
    })
}

/// What a request waiting for its answer gets when the core closes the connection.
fn closed_by_core(code: u16, reason: &str) -> Response {
    let status = match code {
        close_code::MESSAGE_TOO_BIG => 413,
        close_code::POLICY_VIOLATION => 429,
        _ => 503,
    };
    Response::error(status, reason)
}

/// The HTTP form of the core's answer: Mosaic's bodies for queries, and the small routes.
fn render(answer: HttpResponse, head: &RequestHead, shared: &Shared) -> Response {
    let cors = answer.allows_cors();
    let mut response = match answer {
        HttpResponse::Arrow(ipc) => Response {
            status: 200,
            content_type: "application/vnd.apache.arrow.stream",
            body: ipc,
            headers: Vec::new(),
        },
        HttpResponse::Json(rows) => Response {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(rows),
            headers: Vec::new(),
        },
        HttpResponse::Done => Response::json(200, &json!({})),
        HttpResponse::Health => Response::text(200, "ok"),
        HttpResponse::Ready if shared.ready.load(Relaxed) => Response::text(200, "ok"),
        HttpResponse::Ready => Response::text(503, "not ready"),
        HttpResponse::Version => Response::json(
            200,
            &json!({"name": "duckwire", "version": env!("CARGO_PKG_VERSION"), "duckdb": shared.duckdb_version}),
        ),
        HttpResponse::Metrics => Response {
            content_type: crate::metrics::CONTENT_TYPE,
            ..Response::text(200, &shared.metrics.render())
        },
        HttpResponse::Preflight => Response::text(204, ""),
        HttpResponse::Error { status, message } => Response::error(status, &message),
    };
    if cors {
        response.headers.extend(cors_headers(head));
    }
    response
}

/// `None` when the request carries no `Origin` or an allowed one; else the 403 answer.
fn origin_refusal(head: &RequestHead, shared: &Shared) -> Option<Response> {
    let origin = head.header("origin")?;
    (!shared.config.core.origins.allows(origin)).then(|| Response::error(403, ORIGIN_NOT_ALLOWED))
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

async fn upgrade(
    mut stream: Stream,
    rest: Vec<u8>,
    client: Client,
    head: RequestHead,
    shared: Arc<Shared>,
) {
    let peer = client.peer;
    if !shared
        .config
        .core
        .hosts
        .allows(head.header("host"), client.local_ip)
    {
        tracing::warn!(%peer, host = head.header("host"), "WebSocket upgrade refused: host not allowed");
        let _ = write_response(&mut stream, &Response::error(403, HOST_NOT_ALLOWED), false).await;
        return;
    }
    if let Some(refusal) = origin_refusal(&head, &shared) {
        tracing::warn!(%peer, origin = head.header("origin"), "WebSocket upgrade refused: origin not allowed");
        let _ = write_response(&mut stream, &refusal, false).await;
        return;
    }
    // tungstenite's own handshake: it checks the method, HTTP/1.1, the Connection and
    // Upgrade headers, Sec-WebSocket-Version 13 and the key, and derives the accept key.
    let mut response = match handshake_response(&head) {
        Ok(response) => response,
        Err(HandshakeRefusal::Version) => {
            // RFC 6455 §4.2.2: say which version we speak.
            let mut refusal = Response::text(426, "unsupported Sec-WebSocket-Version (13 needed)");
            refusal
                .headers
                .push(("Sec-WebSocket-Version".into(), "13".into()));
            let _ = write_response(&mut stream, &refusal, false).await;
            return;
        }
        Err(HandshakeRefusal::Invalid(reason)) => {
            let refusal = Response::text(400, &format!("invalid WebSocket upgrade: {reason}"));
            let _ = write_response(&mut stream, &refusal, false).await;
            return;
        }
    };
    // Clients that offer subprotocols fail unless one is selected; take their first.
    if let Some(protocol) = head
        .header("sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
        .and_then(|p| HeaderValue::from_str(p.trim()).ok())
    {
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol);
    }
    let mut bytes = Vec::with_capacity(256);
    if write_handshake(&mut bytes, &response).is_err()
        || stream.write_all(&bytes).await.is_err()
        || stream.flush().await.is_err()
    {
        return;
    }
    let conn = ConnId(shared.next_conn.fetch_add(1, Relaxed));
    // Every path speaks the SQLRooms protocol except `/mosaic`: Mosaic's socketConnector.
    let dialect = if head.path == "/mosaic" {
        Dialect::MosaicSocket
    } else {
        Dialect::SqlRooms
    };
    let info = ConnectionInfo {
        dialect,
        peer: peer.to_string(),
        bearer_token: head.bearer_token(),
        url_token: head.query_param("token"),
        origin: head.header("origin").map(str::to_string),
        host: head.header("host").map(str::to_string),
        local_ip: client.local_ip,
    };
    tracing::debug!(%peer, conn = conn.0, path = head.path, "WebSocket connection opened");
    crate::ws::serve(
        stream,
        rest,
        conn,
        info,
        shared.config.core.limits.clone(),
        shared.driver.clone(),
        &shared.sent_reports,
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
