//! The server's life: wiring the executor, meta storage, cluster broker and driver together
//! at start (`startup.rs` opens the database), the accept loop on one port (each connection
//! is served by `connection.rs`), and graceful shutdown (PROTOCOL §1, §8).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duckwire_core::Server;
use smol::net::TcpListener;

use crate::cache::ResultCache;
use crate::config::ServerConfig;
use crate::connection::handle_connection;
use crate::driver::{Driver, DriverInput, SentReports};
use crate::executor::connection::WriteEpoch;
use crate::executor::{Completion, Executor, SharedDatabase};
use crate::meta::{self, MetaWorker};
use crate::metrics::Metrics;
use crate::startup::{
    check_flags, load_extensions, lock_down_file_access, open_database, run_init_sql,
};

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
/// What every connection task of this server reads (never writes, but for the counters).
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) driver: async_channel::Sender<DriverInput>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ready: AtomicBool,
    pub(crate) duckdb_version: String,
    pub(crate) next_conn: AtomicU64,
    /// `--tls-cert`/`--tls-key`: every connection on the port speaks TLS.
    pub(crate) tls: Option<futures_rustls::TlsAcceptor>,
    /// What the connections' writers sent, for the driver.
    pub(crate) sent_reports: Arc<SentReports>,
    /// WebSocket replies' deflaters, reused between messages.
    pub(crate) deflaters: Arc<crate::ws::DeflaterPool>,
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
    let prepared = prepare_database(&config)?;
    let (driver_tx, driver_rx) = async_channel::unbounded::<DriverInput>();
    let workers = start_workers(&config, &prepared.base, prepared.meta, &driver_tx)?;
    let (fatal_tx, fatal_rx) = async_channel::bounded::<()>(1);
    let (core_config, broker) = cluster_and_core_config(&config, &driver_tx, &workers.metrics)?;
    let mut seed = [0u8; 16];
    let _ = getrandom::fill(&mut seed);
    let sent_reports = Arc::new(SentReports::default());
    let driver = Driver {
        server: Server::new(core_config, seed),
        inputs: driver_rx,
        inputs_back: driver_tx.clone(),
        executor: workers.executor.clone(),
        meta: workers.meta,
        cache: workers.cache,
        broker,
        metrics: workers.metrics.clone(),
        sent_reports: sent_reports.clone(),
        fatal: fatal_tx,
        started: Instant::now(),
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        driver: driver_tx.clone(),
        metrics: workers.metrics,
        ready: AtomicBool::new(false),
        duckdb_version: prepared.duckdb_version,
        next_conn: AtomicU64::new(1),
        tls,
        sent_reports,
        // Two per core: replies are compressed on the writers' tasks and the blocking pool.
        deflaters: Arc::new(crate::ws::DeflaterPool::new(2 * config.threads.max(1))),
    });
    let stop = Stop {
        shutdown,
        fatal: fatal_rx,
    };
    let (mut meta_worker, poisoned) =
        smol::block_on(crate::EXECUTOR.run(serve(driver, shared, on_listening, stop)))?;
    // The driver stopped: no more work arrives. Stop queries, finish saves, checkpoint.
    workers.executor.shutdown();
    meta_worker.stop();
    let base = prepared.base.base.lock().unwrap_or_else(|e| e.into_inner());
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

/// The database opened and made ready: memory limit, extensions, meta storage, the init
/// SQL, file access locked down.
struct Prepared {
    base: Arc<SharedDatabase>,
    meta: (duckdb::Connection, String),
    duckdb_version: String,
}

/// What ends serving: a shutdown signal, or the driver reporting a poisoned core.
struct Stop {
    shutdown: async_channel::Receiver<()>,
    fatal: async_channel::Receiver<()>,
}

impl Stop {
    /// `true` when the core was poisoned.
    async fn wait(&self) -> bool {
        smol::future::or(
            async {
                let _ = self.shutdown.recv().await;
                false
            },
            async { self.fatal.recv().await.is_ok() },
        )
        .await
    }
}

/// The core's configuration for this deployment, and the cluster broker when there is one.
fn cluster_and_core_config(
    config: &ServerConfig,
    driver_tx: &async_channel::Sender<DriverInput>,
    metrics: &Arc<Metrics>,
) -> Result<(duckwire_core::Config, Option<crate::broker::Broker>), StartError> {
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
    Ok((core_config, broker))
}

/// Listens, runs the driver and the accept loop until `stop`, then shuts down gracefully:
/// no new connections, every connection closed, every changed room saved (within
/// `SHUTDOWN_GRACE`). Returns the meta worker (the driver gives it back) and whether the
/// core was poisoned.
async fn serve(
    driver: Driver,
    shared: Arc<Shared>,
    on_listening: impl FnOnce(SocketAddr),
    stop: Stop,
) -> Result<(MetaWorker, bool), StartError> {
    let addr = listen_address(&shared.config.host, shared.config.port);
    let listen_error = |source| StartError::Listen {
        addr: addr.clone(),
        source,
    };
    let listener = TcpListener::bind(&addr).await.map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    let driver_task = crate::spawn(driver.run());
    shared.ready.store(true, Relaxed);
    on_listening(local);
    // Its own task: as part of the future `run` drives, it would be polled (one failed
    // accept4 and an epoll re-arm) each time any task on the executor woke.
    let accept_task = crate::spawn(accept_loop(listener, shared.clone()));
    let poisoned = stop.wait().await;
    // Cancelling the task drops the listener: no new connections.
    let _ = accept_task.cancel().await;

    tracing::info!("shutting down: closing connections and saving rooms");
    shared.ready.store(false, Relaxed);
    let (done_tx, done_rx) = async_channel::bounded(1);
    let _ = shared
        .driver
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
    shared.driver.close();
    Ok((driver_task.await, poisoned))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Replies are whole frames written at once: send them without waiting for
                // the peer's ack of the previous one (Nagle).
                let _ = stream.set_nodelay(true);
                crate::spawn(handle_connection(stream, peer, shared.clone())).detach();
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                smol::Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn prepare_database(config: &ServerConfig) -> Result<Prepared, StartError> {
    let (database, base) = open_database(config)?;
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
    lock_down_file_access(&base, config)?;
    let duckdb_version: String = base
        .query_row("SELECT version()", [], |row| row.get(0))
        .unwrap_or_else(|_| "unknown".into());
    let meta_conn = base
        .try_clone()
        .map_err(|e| StartError::Meta(e.to_string()))?;
    Ok(Prepared {
        base: SharedDatabase::new(base, database),
        meta: (meta_conn, ns),
        duckdb_version,
    })
}

/// What runs beside the driver: the DuckDB worker pool, meta storage, the result cache.
struct Workers {
    executor: Arc<Executor>,
    meta: MetaWorker,
    cache: Arc<ResultCache>,
    metrics: Arc<Metrics>,
}

fn start_workers(
    config: &ServerConfig,
    base: &Arc<SharedDatabase>,
    (meta_conn, ns): (duckdb::Connection, String),
    driver_tx: &async_channel::Sender<DriverInput>,
) -> Result<Workers, StartError> {
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
    let meta = {
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
    Ok(Workers {
        executor,
        meta,
        cache,
        metrics,
    })
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
