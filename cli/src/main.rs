//! `duckwire`: flags → config → run. Nothing else lives here.

use std::path::PathBuf;

use argh::FromArgs;
use duckwire_core::{HostPolicy, Limits, OriginPolicy};
use duckwire_smol::config::TlsFiles;
use duckwire_smol::ServerConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// A flag left out takes its value from `ServerConfig::default()` (and the core's
// `Config::default()` and `Limits::default()`): defaults are written there once; the
// "(default …)" texts below are checked against them by a test.
/// A DuckDB server speaking the SQLRooms WebSocket protocol (drop-in for sqlrooms-server).
#[derive(FromArgs, Debug)]
struct Args {
    /// path to the DuckDB database file (default: :memory:)
    #[argh(option)]
    db_path: Option<String>,
    /// port to listen on (default: 4000)
    #[argh(option)]
    port: Option<u16>,
    /// host to bind (default: 127.0.0.1)
    #[argh(option)]
    host: Option<String>,
    /// comma-separated extensions to install and load: name or name@repository
    #[argh(option)]
    extensions: Option<String>,
    /// bearer token clients must present (or env DUCKWIRE_AUTH_TOKEN)
    #[argh(option)]
    auth_token: Option<String>,
    /// a second token whose holders may only read: what DuckDB classifies as reads,
    /// subscriptions, joining rooms (or env DUCKWIRE_READ_TOKEN); needs --auth-token
    #[argh(option)]
    read_token: Option<String>,
    /// close connections not authenticated within this many ms (default 30000; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    auth_timeout_ms: Option<Option<usize>>,
    /// enable CRDT sync rooms
    #[argh(switch)]
    sync: bool,
    /// schema (or ATTACH alias with --meta-db) for meta tables (default: __sqlrooms)
    #[argh(option)]
    meta_namespace: Option<String>,
    /// a DuckDB file to attach for meta tables
    #[argh(option)]
    meta_db: Option<PathBuf>,
    /// quiet time before a changed room is saved, in ms (default: 500)
    #[argh(option)]
    save_debounce_ms: Option<u64>,
    /// unload a room (its document leaves memory) this many ms after its last member left and it was saved (default: 30000)
    #[argh(option)]
    room_idle_evict_ms: Option<u64>,
    /// let clients seed empty rooms with crdt-snapshot (always on for :memory:)
    #[argh(switch)]
    allow_client_snapshots: bool,
    /// comma-separated browser origins allowed besides loopback ones; * allows all
    #[argh(option)]
    allowed_origins: Option<String>,
    /// comma-separated Host names answered besides loopback ones and the address a client
    /// reached (DNS rebinding protection); * answers any
    #[argh(option)]
    allowed_hosts: Option<String>,
    /// result cache budget in bytes; 0 or none disables it (default: 268435456)
    #[argh(option, from_str_fn(parse_cap))]
    cache_bytes: Option<Option<usize>>,
    /// directory for the on-disk result cache tier
    #[argh(option)]
    cache_dir: Option<PathBuf>,
    /// number of DuckDB worker threads (default: number of cores)
    #[argh(option)]
    threads: Option<usize>,
    /// cap: bytes of one incoming message (default 134217728; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_frame_bytes: Option<Option<usize>>,
    /// cap: bytes of a framed binary header (default 65536; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_header_bytes: Option<Option<usize>>,
    /// cap: bytes of a queryId (default 256; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_query_id_len: Option<Option<usize>>,
    /// cap: bytes of a channel name (default 256; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_channel_len: Option<Option<usize>>,
    /// cap: bytes of a room id (default 256; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_room_id_len: Option<Option<usize>>,
    /// cap: queries in flight per connection (default 1024; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_inflight_per_conn: Option<Option<usize>>,
    /// cap: subscriptions per connection (default 1024; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_subscriptions_per_conn: Option<Option<usize>>,
    /// cap: open WebSocket connections (default 4096; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_connections: Option<Option<usize>>,
    /// cap: unsent reply bytes per connection (default 268435456; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_outbound_bytes_per_conn: Option<Option<usize>>,
    /// cap: bytes of received, unfinished work per connection; at it the socket is not read (default 67108864; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_inbound_bytes_per_conn: Option<Option<usize>>,
    /// cap: bytes of received, unfinished work over all connections (default 1073741824; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_inbound_bytes: Option<Option<usize>>,
    /// cap: CRDT changes a room acknowledged and has not imported yet; at it, its senders are not read (default 64; 0/none disables)
    #[argh(option, from_str_fn(parse_cap))]
    max_unimported_changes_per_room: Option<Option<usize>>,
    /// bytes of a CRDT change checked on the protocol thread; larger ones are checked on the blocking pool, their connection paused meanwhile (default 65536; 0/none: every change on the thread)
    #[argh(option, from_str_fn(parse_cap))]
    max_change_bytes_checked_inline: Option<Option<usize>>,
    /// close a kept-alive HTTP connection idle this many ms (default 30000; 0/none: never)
    #[argh(option, from_str_fn(parse_cap))]
    http_idle_timeout_ms: Option<Option<usize>>,
    /// ping WebSocket peers every this many ms (default 30000; 0/none: never)
    #[argh(option, from_str_fn(parse_cap))]
    ping_interval_ms: Option<Option<usize>>,
    /// close (1001) a WebSocket peer silent — no frame, no pong — this long (default 90000; 0/none: never)
    #[argh(option, from_str_fn(parse_cap))]
    idle_timeout_ms: Option<Option<usize>>,
    /// answer 408 to a new connection whose request head takes longer (default 10000; 0/none: never)
    #[argh(option, from_str_fn(parse_cap))]
    http_head_timeout_ms: Option<Option<usize>>,
    /// send an arrow or json result as DuckDB produces it once its encoding passes this many bytes (default 4194304; 0/none: hold every result whole)
    #[argh(option, from_str_fn(parse_cap))]
    stream_results_above: Option<Option<usize>>,
    /// bytes of a streamed result produced ahead of its socket before its DuckDB worker waits (default 4194304)
    #[argh(option)]
    stream_window_bytes: Option<usize>,
    /// compress large HTTP answers (gzip, br, zstd as the client accepts): auto (only for non-loopback peers), on, off (default: auto)
    #[argh(option)]
    http_compression: Option<duckwire_smol::compress::Compression>,
    /// negotiate permessage-deflate on WebSocket connections (replies over 4 KiB compressed): auto (only for non-loopback peers), on, off (default: auto)
    #[argh(option)]
    ws_compression: Option<duckwire_smol::compress::Compression>,
    /// open the database read-only: exec, uploads and writes are refused (rooms need --meta-db)
    #[argh(switch)]
    read_only: bool,
    /// comma-separated directories queries may read files from (all other file, URL and ATTACH access is refused)
    #[argh(option)]
    allowed_dirs: Option<String>,
    /// refuse every file, URL and ATTACH access from queries
    #[argh(switch)]
    no_external_access: bool,
    /// stop a query running longer than this many ms (default: no limit)
    #[argh(option)]
    query_timeout_ms: Option<u64>,
    /// memory limit passed to DuckDB, e.g. 4GB or 75%
    #[argh(option)]
    memory_limit: Option<String>,
    /// lambda syntax, DuckDB's lambda_syntax: enable_single_arrow (default: SQL written for DuckDB 1.x, with
    /// x -> x + 1 lambdas, keeps working), default (DuckDB 2.0's: only lambda x: x + 1), or
    /// disable_single_arrow
    #[argh(option)]
    lambda_syntax: Option<String>,
    /// a SQL file run once at start, before listening (attach databases, create views, load data)
    #[argh(option)]
    init_sql: Option<PathBuf>,
    /// PEM certificate chain: serve https:// and wss:// on the port (needs --tls-key)
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[argh(option)]
    tls_key: Option<PathBuf>,
    /// cluster mode: share channels and CRDT rooms with other replicas through this Redis (redis://HOST:PORT/N, rediss://…, redis+unix:///path)
    #[argh(option)]
    redis_url: Option<String>,
    /// namespace of the Redis channels and streams (default: duckwire)
    #[argh(option)]
    redis_prefix: Option<String>,
    /// PEM CA certificate to trust for a rediss:// Redis (default: the system's roots)
    #[argh(option)]
    redis_ca: Option<PathBuf>,
    /// print name, version, DuckDB version and build, then exit
    #[argh(switch)]
    version: bool,
    /// log level: error, warn, info, debug, trace (default: info; RUST_LOG overrides)
    #[argh(option, default = "String::from(\"info\")")]
    log_level: String,
}

/// `0` or `none` disables a cap (as `None` does in dqlite-wire).
fn parse_cap(value: &str) -> Result<Option<usize>, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "0" | "none" => Ok(None),
        v => v
            .parse::<usize>()
            .map(Some)
            .map_err(|_| format!("expected a number, 0 or none, got {value:?}")),
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "::1" | "[::1]") || host.starts_with("127.")
}

/// `--tls-cert` and `--tls-key` go together.
fn tls_files(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<TlsFiles>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err("--tls-cert needs --tls-key".into()),
        (None, Some(_)) => Err("--tls-key needs --tls-cert".into()),
    }
}

fn config_from(args: Args) -> Result<ServerConfig, String> {
    let tls = tls_files(args.tls_cert.clone(), args.tls_key.clone())?;
    let base = ServerConfig::default();
    let core = &base.core;
    let limits = limits_from(&args, &core.limits);
    let auth_token = args
        .auth_token
        .or_else(|| std::env::var("DUCKWIRE_AUTH_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let read_token = args
        .read_token
        .or_else(|| std::env::var("DUCKWIRE_READ_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let host = args.host.unwrap_or_else(|| base.host.clone());
    let mut hosts = args
        .allowed_hosts
        .as_deref()
        .map(HostPolicy::from_list)
        .unwrap_or_default();
    // A server bound to a name answers that name.
    if host.parse::<std::net::IpAddr>().is_err() {
        hosts.allowed.push(host.to_ascii_lowercase());
    }
    let db_path = args.db_path.unwrap_or_else(|| base.db_path.clone());
    let in_memory = db_path == ":memory:";
    let millis = |flag: Option<Option<usize>>, default: Option<u64>| {
        flag.map_or(default, |ms| ms.map(|ms| ms as u64))
    };
    let core = duckwire_core::Config {
        limits,
        auth_token,
        read_token,
        hosts,
        sync_enabled: args.sync,
        allow_client_snapshots: args.allow_client_snapshots || in_memory,
        save_debounce_ms: args.save_debounce_ms.unwrap_or(core.save_debounce_ms),
        room_idle_evict_ms: args.room_idle_evict_ms.unwrap_or(core.room_idle_evict_ms),
        auth_timeout_ms: millis(args.auth_timeout_ms, core.auth_timeout_ms),
        http_idle_timeout_ms: millis(args.http_idle_timeout_ms, core.http_idle_timeout_ms),
        ping_interval_ms: millis(args.ping_interval_ms, core.ping_interval_ms),
        query_timeout_ms: args.query_timeout_ms.filter(|ms| *ms > 0),
        idle_timeout_ms: millis(args.idle_timeout_ms, core.idle_timeout_ms),
        stream_results_above: args
            .stream_results_above
            .unwrap_or(core.stream_results_above),
        stream_window_bytes: args
            .stream_window_bytes
            .unwrap_or(core.stream_window_bytes)
            .max(1),
        origins: args
            .allowed_origins
            .as_deref()
            .map(OriginPolicy::from_list)
            .unwrap_or_default(),
        ..duckwire_core::Config::default()
    };
    let head_timeout = base.http_head_timeout.map(|t| t.as_millis() as u64);
    let config = ServerConfig {
        port: args.port.unwrap_or(base.port),
        extensions: comma_list(args.extensions.as_deref()),
        core,
        meta_namespace: args.meta_namespace.unwrap_or(base.meta_namespace),
        meta_db: args.meta_db,
        cache_bytes: args.cache_bytes.unwrap_or(base.cache_bytes),
        cache_dir: args.cache_dir,
        http_compression: args.http_compression.unwrap_or(base.http_compression),
        ws_compression: args.ws_compression.unwrap_or(base.ws_compression),
        read_only: args.read_only,
        allowed_dirs: comma_list(args.allowed_dirs.as_deref())
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        no_external_access: args.no_external_access,
        memory_limit: args.memory_limit,
        lambda_syntax: args
            .lambda_syntax
            .map_or(base.lambda_syntax, |syntax| syntax.to_ascii_uppercase()),
        init_sql: args.init_sql,
        tls,
        redis_url: args.redis_url,
        redis_prefix: args.redis_prefix.unwrap_or(base.redis_prefix),
        redis_ca: args.redis_ca,
        http_head_timeout: millis(args.http_head_timeout_ms, head_timeout)
            .map(std::time::Duration::from_millis),
        threads: args.threads.map_or(base.threads, |threads| threads.max(1)),
        host,
        db_path,
    };
    Ok(config)
}

/// The caps: each flag given, or its default.
fn limits_from(args: &Args, defaults: &Limits) -> Limits {
    let pick = |flag: Option<Option<usize>>, default: Option<usize>| flag.unwrap_or(default);
    Limits {
        max_frame_bytes: pick(args.max_frame_bytes, defaults.max_frame_bytes),
        max_header_bytes: pick(args.max_header_bytes, defaults.max_header_bytes),
        max_query_id_len: pick(args.max_query_id_len, defaults.max_query_id_len),
        max_channel_len: pick(args.max_channel_len, defaults.max_channel_len),
        max_room_id_len: pick(args.max_room_id_len, defaults.max_room_id_len),
        max_inflight_per_conn: pick(args.max_inflight_per_conn, defaults.max_inflight_per_conn),
        max_subscriptions_per_conn: pick(
            args.max_subscriptions_per_conn,
            defaults.max_subscriptions_per_conn,
        ),
        max_connections: pick(args.max_connections, defaults.max_connections),
        max_outbound_bytes_per_conn: pick(
            args.max_outbound_bytes_per_conn,
            defaults.max_outbound_bytes_per_conn,
        ),
        max_inbound_bytes_per_conn: pick(
            args.max_inbound_bytes_per_conn,
            defaults.max_inbound_bytes_per_conn,
        ),
        max_inbound_bytes: pick(args.max_inbound_bytes, defaults.max_inbound_bytes),
        max_unimported_changes_per_room: pick(
            args.max_unimported_changes_per_room,
            defaults.max_unimported_changes_per_room,
        ),
        max_change_bytes_checked_inline: pick(
            args.max_change_bytes_checked_inline,
            defaults.max_change_bytes_checked_inline,
        ),
    }
}

/// `a, b,,c` → `["a", "b", "c"]`.
fn comma_list(list: Option<&str>) -> Vec<String> {
    list.map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// How DuckDB got into this binary.
const DUCKDB_BUILD: &str = if cfg!(feature = "bundled") {
    "bundled (compiled from source, linked statically)"
} else {
    "prebuilt (a shared libduckdb, scripts/dev-env.sh)"
};

fn main() {
    let args: Args = argh::from_env();
    if args.version {
        println!(
            "duckwire {}\nDuckDB {}\nbuild: {DUCKDB_BUILD}",
            env!("CARGO_PKG_VERSION"),
            duckwire_smol::duckdb_library_version()
        );
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level))
        // The handshake library traces requests at debug level, auth headers included;
        // tokens are never logged (PROTOCOL §4), whatever the level asked for.
        .add_directive("tungstenite=info".parse().expect("a valid directive"));

    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // One log line per panic instead of a backtrace on stderr: the executor contains panics
    // raised by hostile input (the Arrow IPC reader panics on some malformed streams), and
    // those must not flood the log.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "panic: {info}");
    }));

    // One file descriptor per connection: the soft limit (often 1024) would refuse clients
    // long before --max-connections. Go to the hard limit, as Go's runtime and nginx do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-files limit"),
        Err(e) => tracing::warn!("could not raise the open-files limit: {e}"),
    }

    let config = match config_from(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("duckwire: {e}");
            std::process::exit(2);
        }
    };
    if !is_loopback(&config.host) {
        if config.core.auth_token.is_none() {
            tracing::warn!(
                host = config.host,
                "binding a non-loopback address without --auth-token: anyone who can reach this port can run SQL"
            );
        } else if config.tls.is_none() {
            tracing::warn!(
                host = config.host,
                "--auth-token on a non-loopback address without --tls-cert/--tls-key: the token crosses the network in clear text (terminate TLS here or in a proxy)"
            );
        }
    }

    let (stop, shutdown) = async_channel::bounded::<()>(1);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .expect("install signal handlers");
    std::thread::spawn(move || {
        let mut received = 0;
        for signal in signals.forever() {
            received += 1;
            if received == 1 {
                tracing::info!(signal, "signal received; shutting down gracefully");
                let _ = stop.try_send(());
            } else {
                tracing::warn!("second signal; exiting immediately");
                std::process::exit(130);
            }
        }
    });

    let sync = config.core.sync_enabled;
    let db = config.db_path.clone();
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let result = duckwire_smol::run(
        config,
        |addr| {
            println!(
                "duckwire listening on {scheme}://{addr}/ (database {db}, sync {})",
                if sync { "on" } else { "off" }
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
        },
        shutdown,
    );
    if let Err(e) = result {
        tracing::error!("{e}");
        eprintln!("duckwire: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_accept_numbers_zero_and_none() {
        assert_eq!(parse_cap("10"), Ok(Some(10)));
        assert_eq!(parse_cap("0"), Ok(None));
        assert_eq!(parse_cap("None"), Ok(None));
        assert!(parse_cap("ten").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["0.0.0.0", "192.168.1.2", "::", "example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn flags_map_to_config() {
        let args = Args::from_args(
            &["duckwire"],
            &[
                "--port",
                "0",
                "--sync",
                "--max-frame-bytes",
                "none",
                "--max-connections",
                "7",
                "--extensions",
                "httpfs, h3@community",
            ],
        )
        .unwrap();
        let config = config_from(args).unwrap();
        assert_eq!(config.port, 0);
        assert!(config.core.sync_enabled);
        assert!(
            config.core.allow_client_snapshots,
            ":memory: allows client snapshots"
        );
        assert_eq!(config.core.limits.max_frame_bytes, None);
        assert_eq!(config.core.limits.max_connections, Some(7));
        assert_eq!(
            config.core.limits.max_header_bytes,
            Limits::default().max_header_bytes
        );
        assert_eq!(config.extensions, vec!["httpfs", "h3@community"]);
    }

    /// The CLI holds no default of its own: no flags give exactly `ServerConfig::default()`
    /// (with what `:memory:` implies).
    #[test]
    fn no_flags_give_the_library_defaults() {
        let config = config_from(Args::from_args(&["duckwire"], &[]).unwrap()).unwrap();
        let mut expected = ServerConfig::default();
        expected.core.allow_client_snapshots = true; // :memory:
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
    }

    /// `--help` states the defaults it takes from the library, and they are the real ones.
    #[test]
    fn help_states_the_real_defaults() {
        let help = match Args::from_args(&["duckwire"], &["--help"]) {
            Err(exit) => exit.output,
            Ok(_) => panic!("--help exits"),
        };
        let base = ServerConfig::default();
        let (core, limits) = (&base.core, &base.core.limits);
        let ms = |value: Option<u64>| value.map_or("none".to_string(), |ms| ms.to_string());
        let cap = |value: Option<usize>| value.map_or("none".to_string(), |n| n.to_string());
        let head_timeout = base.http_head_timeout.map(|t| t.as_millis() as u64);
        let stated = [
            ("--db-path", format!("default: {}", base.db_path)),
            ("--port", format!("default: {}", base.port)),
            ("--host", format!("default: {}", base.host)),
            (
                "--auth-timeout-ms",
                format!("default {}", ms(core.auth_timeout_ms)),
            ),
            (
                "--meta-namespace",
                format!("default: {}", base.meta_namespace),
            ),
            (
                "--save-debounce-ms",
                format!("default: {}", core.save_debounce_ms),
            ),
            (
                "--room-idle-evict-ms",
                format!("default: {}", core.room_idle_evict_ms),
            ),
            (
                "--cache-bytes",
                format!("default: {}", cap(base.cache_bytes)),
            ),
            (
                "--max-frame-bytes",
                format!("default {}", cap(limits.max_frame_bytes)),
            ),
            (
                "--max-header-bytes",
                format!("default {}", cap(limits.max_header_bytes)),
            ),
            (
                "--max-query-id-len",
                format!("default {}", cap(limits.max_query_id_len)),
            ),
            (
                "--max-channel-len",
                format!("default {}", cap(limits.max_channel_len)),
            ),
            (
                "--max-room-id-len",
                format!("default {}", cap(limits.max_room_id_len)),
            ),
            (
                "--max-inflight-per-conn",
                format!("default {}", cap(limits.max_inflight_per_conn)),
            ),
            (
                "--max-subscriptions-per-conn",
                format!("default {}", cap(limits.max_subscriptions_per_conn)),
            ),
            (
                "--max-connections",
                format!("default {}", cap(limits.max_connections)),
            ),
            (
                "--max-outbound-bytes-per-conn",
                format!("default {}", cap(limits.max_outbound_bytes_per_conn)),
            ),
            (
                "--max-inbound-bytes-per-conn",
                format!("default {}", cap(limits.max_inbound_bytes_per_conn)),
            ),
            (
                "--max-inbound-bytes ",
                format!("default {}", cap(limits.max_inbound_bytes)),
            ),
            (
                "--max-unimported-changes-per-room",
                format!("default {}", cap(limits.max_unimported_changes_per_room)),
            ),
            (
                "--max-change-bytes-checked-inline",
                format!("default {}", cap(limits.max_change_bytes_checked_inline)),
            ),
            (
                "--stream-results-above",
                format!("default {}", cap(core.stream_results_above)),
            ),
            (
                "--stream-window-bytes",
                format!("default {}", core.stream_window_bytes),
            ),
            (
                "--http-idle-timeout-ms",
                format!("default {}", ms(core.http_idle_timeout_ms)),
            ),
            (
                "--ping-interval-ms",
                format!("default {}", ms(core.ping_interval_ms)),
            ),
            (
                "--idle-timeout-ms",
                format!("default {}", ms(core.idle_timeout_ms)),
            ),
            (
                "--http-head-timeout-ms",
                format!("default {}", ms(head_timeout)),
            ),
            ("--redis-prefix", format!("default: {}", base.redis_prefix)),
        ];
        // argh lists each flag at the start of a line and wraps its text onto indented
        // lines below it.
        let options = &help[help.find("Options:").expect("an options list")..];
        let mut texts: Vec<(String, String)> = Vec::new();
        for line in options.lines().skip(1) {
            let trimmed = line.trim_start();
            match texts.last_mut() {
                Some((_, text)) if !trimmed.starts_with("--") => {
                    text.push(' ');
                    text.push_str(trimmed);
                }
                _ => {
                    let (flag, text) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
                    texts.push((flag.to_string(), text.trim().to_string()));
                }
            }
        }
        let text_of = |flag: &str| {
            texts
                .iter()
                .find(|(name, _)| name == flag)
                .map(|(_, text)| text.clone())
                .unwrap_or_else(|| panic!("{flag} is in --help"))
        };
        for (flag, default) in stated {
            let text = text_of(flag.trim());
            assert!(
                text.contains(&default),
                "{flag}: {text:?} does not say {default:?}"
            );
        }
        let flat = text_of("--lambda-syntax");
        assert!(flat.contains(&format!(
            "lambda_syntax: {} (default",
            base.lambda_syntax.to_ascii_lowercase()
        )));
    }
}
