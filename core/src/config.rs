//! What the core knows about the deployment: flags as the transport resolved them.

use crate::auth::{rights_of, HostPolicy, OriginPolicy, Rights};
use crate::limits::Limits;

/// How long a kept-alive HTTP connection may sit idle (nginx's default is 75 s; browsers
/// reopen connections cheaply, and an idle socket costs a file descriptor).
pub const DEFAULT_HTTP_IDLE_TIMEOUT_MS: u64 = 30_000;

/// Results larger than this are streamed: below it, holding a result whole costs little and
/// keeps errors as errors; above it, the network waits for DuckDB and memory grows with it.
pub const DEFAULT_STREAM_RESULTS_ABOVE: usize = 4 * 1024 * 1024;

/// What a streamed result may have produced ahead of its socket: enough to keep a gigabit
/// link busy while DuckDB makes the next batches, small beside a held result.
pub const DEFAULT_STREAM_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// Everything the core needs to know about the deployment.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    /// `--auth-token`; `None` means every connection is authenticated.
    pub auth_token: Option<String>,
    /// `--read-token`: a second token whose holders may only read (PROTOCOL §4a). Only
    /// meaningful beside `auth_token`.
    pub read_token: Option<String>,
    /// `--sync`: CRDT rooms are available.
    pub sync_enabled: bool,
    /// Clients may seed empty rooms with `crdt-snapshot`.
    pub allow_client_snapshots: bool,
    /// Quiet time after a room change before it is saved.
    pub save_debounce_ms: u64,
    /// Acknowledge CRDT updates and client snapshots only once the room's durable log holds
    /// them (`AppendRoomUpdate`), so SIGKILL loses nothing acknowledged. Off for
    /// `:memory:` databases, where nothing survives a restart anyway.
    pub durable_room_log: bool,
    /// Longest a changed room stays unsaved under continuous updates.
    pub max_save_latency_ms: u64,
    /// How long an idle, saved room with no members stays in memory.
    pub room_idle_evict_ms: u64,
    /// Browser origins allowed besides loopback ones (`--allowed-origins`).
    pub origins: OriginPolicy,
    /// `Host` names answered besides loopback ones and the connection's local address
    /// (`--allowed-hosts`).
    pub hosts: HostPolicy,
    /// With a token configured, a connection still unauthenticated this long after opening
    /// is closed (1008). `None` disables the deadline.
    pub auth_timeout_ms: Option<u64>,
    /// A kept-alive HTTP connection with nothing in flight is closed after this long.
    /// `None` keeps idle connections open.
    pub http_idle_timeout_ms: Option<u64>,
    /// A query running longer is interrupted and answered `query timeout (N ms) exceeded`.
    /// `None`: no limit.
    pub query_timeout_ms: Option<u64>,
    /// `--read-only`: `exec`, uploads and statements that are not reads are refused.
    pub read_only: bool,
    /// Ping every WebSocket peer this often (`Effect::Ping`). `None`: never.
    pub ping_interval_ms: Option<u64>,
    /// Close (1001) a WebSocket peer not heard from — no frame, no pong — for this long,
    /// unless the server itself stopped reading it (inbound budget). `None`: never.
    pub idle_timeout_ms: Option<u64>,
    /// An `arrow` or `json` result whose encoding passes this many bytes is sent as it is produced
    /// (PROTOCOL §3b: one fragmented WebSocket message, or a chunked HTTP body) instead of
    /// being held whole first; smaller results are held, so a failure still arrives as an
    /// error. `None`: every result is held whole.
    pub stream_results_above: Option<usize>,
    /// Bytes of a streamed result that may wait for its connection's socket (the producing
    /// DuckDB worker waits past it); counted as queued in the connection's outbound bytes
    /// while the stream lasts.
    pub stream_window_bytes: usize,
    /// Cluster mode (`--redis-url`): this replica's id, unique among the replicas (random,
    /// from the caller). Channels are shared through a broker (PROTOCOL §5a). `None`: one
    /// process, no broker effects.
    pub replica_id: Option<String>,
    /// Fault-injection builds only: a handler panics when a query's SQL is exactly this
    /// text, so the driver's poisoning path can be tested end to end.
    #[cfg(feature = "fault-injection")]
    pub panic_on_sql: Option<String>,
}

/// A client refused for where it comes from, before anything it asks is looked at (HTTP
/// `403`, WebSocket close 1008; the message is the same on every door).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `Host` names neither loopback, nor the address reached, nor a listed name.
    HostNotAllowed,
    /// The `Origin` is not allowed by the origin policy.
    OriginNotAllowed,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::HostNotAllowed => crate::http::HOST_NOT_ALLOWED,
            Refusal::OriginNotAllowed => crate::http::ORIGIN_NOT_ALLOWED,
        }
    }
}

impl Config {
    /// Where a client comes from, against the `Host` and `Origin` policies (PROTOCOL §4): the
    /// one check every door makes (WebSocket upgrades in the transport and again when the
    /// core opens them, every HTTP request). `host: None` is not checked (no header, or a
    /// health probe); `local_ip` is the address the client reached.
    pub fn check_where_from(
        &self,
        host: Option<&str>,
        local_ip: Option<core::net::IpAddr>,
        origin: Option<&str>,
    ) -> Result<(), Refusal> {
        if !self.hosts.allows(host, local_ip) {
            return Err(Refusal::HostNotAllowed);
        }
        if origin.is_some_and(|origin| !self.origins.allows(origin)) {
            return Err(Refusal::OriginNotAllowed);
        }
        Ok(())
    }

    /// The rights of a client presenting a bearer token and/or a `token=` URL parameter.
    pub fn rights_of_credentials(&self, bearer: Option<&str>, url: Option<&str>) -> Option<Rights> {
        self.rights_of([bearer, url].into_iter().flatten())
    }

    /// The rights of a client presenting `given` tokens; `None` when none is valid.
    pub fn rights_of<'a>(&self, given: impl IntoIterator<Item = &'a str>) -> Option<Rights> {
        rights_of(
            self.auth_token.as_deref(),
            self.read_token.as_deref(),
            given,
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            auth_token: None,
            read_token: None,
            sync_enabled: false,
            allow_client_snapshots: false,
            save_debounce_ms: 500,
            durable_room_log: false,
            max_save_latency_ms: 5_000,
            room_idle_evict_ms: 30_000,
            origins: OriginPolicy::default(),
            hosts: HostPolicy::default(),
            auth_timeout_ms: Some(30_000),
            http_idle_timeout_ms: Some(DEFAULT_HTTP_IDLE_TIMEOUT_MS),
            query_timeout_ms: None,
            read_only: false,
            ping_interval_ms: Some(30_000),
            idle_timeout_ms: Some(90_000),
            stream_results_above: Some(DEFAULT_STREAM_RESULTS_ABOVE),
            stream_window_bytes: DEFAULT_STREAM_WINDOW_BYTES,
            replica_id: None,
            #[cfg(feature = "fault-injection")]
            panic_on_sql: None,
        }
    }
}
