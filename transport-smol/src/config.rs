//! Everything the server needs to start, as the CLI resolved it.

use std::path::PathBuf;

/// Keeps SQL written for DuckDB 1.x working: DuckDB 2.0 refuses single-arrow lambdas
/// (`x -> x + 1`) by default; with this both they and `lambda x: x + 1` work.
pub const DEFAULT_LAMBDA_SYNTAX: &str = "ENABLE_SINGLE_ARROW";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// `:memory:` or a file path.
    pub db_path: String,
    /// `name` or `name@repository`.
    pub extensions: Vec<String>,
    /// Protocol settings: caps, token, origins, sync, snapshot policy, save timing.
    pub core: duckwire_core::Config,
    pub meta_namespace: String,
    pub meta_db: Option<PathBuf>,
    /// Result cache byte budget; `None` disables the in-memory tier.
    pub cache_bytes: Option<usize>,
    pub cache_dir: Option<PathBuf>,
    /// DuckDB worker threads (and `SET threads`).
    pub threads: usize,
    /// How long a new connection may take to send its first request head (`None`: forever).
    pub http_head_timeout: Option<std::time::Duration>,
    /// `--http-compression`.
    pub http_compression: crate::compress::Compression,
    /// `--ws-compression`: whether WebSocket upgrades negotiate `permessage-deflate`.
    pub ws_compression: crate::compress::Compression,
    /// `--read-only`: the database opens read-only (the core refuses writes by name).
    pub read_only: bool,
    /// `--allowed-dirs`: queries may read files only under these directories.
    pub allowed_dirs: Vec<PathBuf>,
    /// `--no-external-access`: no files, URLs or `ATTACH` at all.
    pub no_external_access: bool,
    /// `--memory-limit` (`4GB`, `75%`), passed to DuckDB.
    pub memory_limit: Option<String>,
    /// `--lambda-syntax`: DuckDB's `lambda_syntax`, set when the database opens.
    pub lambda_syntax: String,
    /// `--init-sql`: statements run once at start, before listening.
    pub init_sql: Option<PathBuf>,
    /// `--tls-cert` and `--tls-key` (PEM): serve `https://` and `wss://` on the port.
    pub tls: Option<TlsFiles>,
    /// `--redis-url`: cluster mode, channels shared with the other replicas through Redis.
    pub redis_url: Option<String>,
    /// `--redis-prefix`: namespace of every Redis key and channel duckwire uses.
    pub redis_prefix: String,
    /// `--redis-ca`: PEM CA certificate trusted for `rediss://` (else the system's roots).
    pub redis_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    pub fn is_in_memory(&self) -> bool {
        self.db_path == ":memory:" || self.db_path.is_empty()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 4000,
            db_path: ":memory:".into(),
            extensions: Vec::new(),
            core: duckwire_core::Config::default(),
            meta_namespace: "__sqlrooms".into(),
            meta_db: None,
            cache_bytes: Some(256 * 1024 * 1024),
            cache_dir: None,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            http_head_timeout: Some(std::time::Duration::from_secs(10)),
            http_compression: crate::compress::Compression::Auto,
            ws_compression: crate::compress::Compression::Auto,
            read_only: false,
            allowed_dirs: Vec::new(),
            no_external_access: false,
            memory_limit: None,
            lambda_syntax: DEFAULT_LAMBDA_SYNTAX.into(),
            init_sql: None,
            tls: None,
            redis_url: None,
            redis_prefix: "duckwire".into(),
            redis_ca: None,
        }
    }
}
