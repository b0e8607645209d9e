//! Counters behind `GET /metrics`, kept and rendered by `prometheus-client` (OpenMetrics
//! text, which Prometheus scrapes).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the query latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    /// arrow, json, exec, upload.
    r#type: &'static str,
    /// ok, error, cancelled.
    outcome: &'static str,
}

type UGauge = Gauge<u64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub connections_open: UGauge,
    pub connections_total: Counter,
    queries: Family<QueryLabels, Counter>,
    latency: Histogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_bytes: UGauge,
    pub crdt_rooms: UGauge,
    pub crdt_updates: Counter,
    pub crdt_refused_on_import: Counter,
    pub queries_shared: Counter,
    pub inbound_bytes: UGauge,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Cluster mode: shared room snapshot saves this replica made, or skipped because
    /// another replica holds the room's save lease (or its own was taken over).
    pub shared_snapshots_saved: Counter,
    pub shared_snapshots_skipped: Counter,
    /// Cluster mode: changes appended to rooms' Redis Streams, and the round trips that
    /// carried them (appends waiting together share one).
    pub shared_log_appends: Counter,
    pub shared_log_round_trips: Counter,
    /// Cluster mode: notifies published to Redis, and the round trips that carried them.
    pub publications: Counter,
    pub notifies_dropped: Counter,
    pub publish_round_trips: Counter,
    /// WebSocket connections that negotiated permessage-deflate.
    pub ws_deflate_connections: Counter,
    /// WebSocket reply bytes compressed, before and after.
    pub ws_deflated_bytes: Counter,
    pub ws_deflated_wire_bytes: Counter,
    /// Results sent as they were produced (PROTOCOL §3b), and their bytes (also in
    /// `bytes_out`).
    pub results_streamed: Counter,
    pub streamed_bytes: Counter,
}

impl Default for Metrics {
    /// Over 100 lines for a reason: one registration (name, help text, metric) per line of the
    /// `/metrics` output, in the order operators read them; splitting it would only scatter
    /// the list.
    fn default() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            connections_open: UGauge::default(),
            connections_total: Counter::default(),
            queries: Family::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_bytes: UGauge::default(),
            crdt_rooms: UGauge::default(),
            crdt_updates: Counter::default(),
            crdt_refused_on_import: Counter::default(),
            queries_shared: Counter::default(),
            inbound_bytes: UGauge::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            shared_snapshots_saved: Counter::default(),
            shared_snapshots_skipped: Counter::default(),
            shared_log_appends: Counter::default(),
            shared_log_round_trips: Counter::default(),
            publications: Counter::default(),
            notifies_dropped: Counter::default(),
            publish_round_trips: Counter::default(),
            ws_deflate_connections: Counter::default(),
            ws_deflated_bytes: Counter::default(),
            ws_deflated_wire_bytes: Counter::default(),
            results_streamed: Counter::default(),
            streamed_bytes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "duckwire_connections_open",
            "Open WebSocket and HTTP connections",
            metrics.connections_open.clone(),
        );
        registry.register(
            "duckwire_connections",
            "WebSocket and HTTP connections accepted",
            metrics.connections_total.clone(),
        );
        registry.register(
            "duckwire_queries",
            "Queries by type and outcome, through every door",
            metrics.queries.clone(),
        );
        registry.register(
            "duckwire_query_seconds",
            "Query latency",
            metrics.latency.clone(),
        );
        registry.register(
            "duckwire_cache_hits",
            "Result cache hits",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "duckwire_cache_misses",
            "Result cache misses",
            metrics.cache_misses.clone(),
        );
        registry.register(
            "duckwire_cache_bytes",
            "Bytes held by the in-memory result cache",
            metrics.cache_bytes.clone(),
        );
        registry.register(
            "duckwire_crdt_rooms",
            "CRDT rooms loaded",
            metrics.crdt_rooms.clone(),
        );
        registry.register(
            "duckwire_crdt_updates",
            "CRDT updates received",
            metrics.crdt_updates.clone(),
        );
        registry.register(
            "duckwire_crdt_changes_refused_on_import",
            "CRDT changes acknowledged after a check on their own that their room refused on import (crafted bytes; see rooms/doc.rs)",
            metrics.crdt_refused_on_import.clone(),
        );
        registry.register(
            "duckwire_queries_shared",
            "Persisted reads answered from an identical query already running (single flight)",
            metrics.queries_shared.clone(),
        );
        registry.register(
            "duckwire_inbound_bytes",
            "Bytes of received work not finished yet (the inbound budget in use)",
            metrics.inbound_bytes.clone(),
        );
        registry.register(
            "duckwire_bytes_in",
            "Payload bytes received (WebSocket messages, HTTP bodies)",
            metrics.bytes_in.clone(),
        );
        registry.register(
            "duckwire_bytes_out",
            "Payload bytes sent (WebSocket messages, HTTP bodies)",
            metrics.bytes_out.clone(),
        );
        registry.register(
            "duckwire_shared_snapshots_saved",
            "Cluster mode: room snapshots saved beside the room's Redis Stream by this replica",
            metrics.shared_snapshots_saved.clone(),
        );
        registry.register(
            "duckwire_shared_snapshots_skipped",
            "Cluster mode: room snapshot saves left to the replica holding the room's save lease",
            metrics.shared_snapshots_skipped.clone(),
        );
        registry.register(
            "duckwire_shared_log_appends",
            "Cluster mode: changes appended to rooms' Redis Streams by this replica",
            metrics.shared_log_appends.clone(),
        );
        registry.register(
            "duckwire_shared_log_round_trips",
            "Cluster mode: Redis round trips that carried those appends (appends waiting together share one)",
            metrics.shared_log_round_trips.clone(),
        );
        registry.register(
            "duckwire_publications",
            "Cluster mode: notifies published to Redis by this replica",
            metrics.publications.clone(),
        );
        registry.register(
            "duckwire_notifies_dropped",
            "Cross-replica notifies lost because Redis was down (local subscribers got them)",
            metrics.notifies_dropped.clone(),
        );
        registry.register(
            "duckwire_publish_round_trips",
            "Cluster mode: Redis round trips that carried those publications (publications waiting together share one)",
            metrics.publish_round_trips.clone(),
        );
        registry.register(
            "duckwire_ws_deflate_connections",
            "WebSocket connections that negotiated permessage-deflate (--ws-compression)",
            metrics.ws_deflate_connections.clone(),
        );
        registry.register(
            "duckwire_ws_deflated_bytes",
            "WebSocket reply bytes compressed with permessage-deflate, before compression",
            metrics.ws_deflated_bytes.clone(),
        );
        registry.register(
            "duckwire_ws_deflated_wire_bytes",
            "What those bytes took on the wire after compression",
            metrics.ws_deflated_wire_bytes.clone(),
        );
        registry.register(
            "duckwire_results_streamed",
            "Arrow results sent as DuckDB produced them, past --stream-results-above",
            metrics.results_streamed.clone(),
        );
        registry.register(
            "duckwire_streamed_bytes",
            "Bytes of those results written (before compression; also in duckwire_bytes_out)",
            metrics.streamed_bytes.clone(),
        );
        // Every query label pair shows from the start, at zero.
        for kind in ["arrow", "json", "exec", "upload"] {
            for outcome in ["ok", "error", "cancelled"] {
                let _ = metrics.queries.get_or_create(&QueryLabels {
                    r#type: kind,
                    outcome,
                });
            }
        }
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// `kind`: arrow/json/exec/upload; `outcome`: ok/error/cancelled.
    pub fn record_query(&self, kind: &'static str, outcome: &'static str, seconds: f64) {
        self.queries
            .get_or_create(&QueryLabels {
                r#type: kind,
                outcome,
            })
            .inc();
        self.latency.observe(seconds);
    }

    /// A counter whose total the core keeps (CRDT updates accepted).
    pub fn set_counter(counter: &Counter, total: u64) {
        counter.inner().store(total, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
