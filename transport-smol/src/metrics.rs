//! Counters behind `GET /metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the query latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];
const KINDS: [&str; 4] = ["arrow", "json", "exec", "upload"];
const OUTCOMES: [&str; 3] = ["ok", "error", "cancelled"];

#[derive(Default)]
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    queries: [[AtomicU64; 3]; 4],
    latency_buckets: [AtomicU64; 10],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_bytes: AtomicU64,
    pub crdt_rooms: AtomicU64,
    pub crdt_updates: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Metrics {
    /// `kind`: arrow/json/exec/upload; `outcome`: ok/error/cancelled.
    pub fn record_query(&self, kind: &str, outcome: &str, seconds: f64) {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        let o = OUTCOMES.iter().position(|x| *x == outcome).unwrap_or(1);
        self.queries[k][o].fetch_add(1, Relaxed);
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            &mut out,
            "duckwire_connections_open",
            "Open WebSocket connections.",
            "gauge",
            self.connections_open.load(Relaxed),
        );
        gauge(
            &mut out,
            "duckwire_connections_total",
            "WebSocket connections accepted.",
            "counter",
            self.connections_total.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP duckwire_queries_total Queries by type and outcome.\n# TYPE duckwire_queries_total counter");
        for (k, kind) in KINDS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "duckwire_queries_total{{type=\"{kind}\",outcome=\"{outcome}\"}} {}",
                    self.queries[k][o].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP duckwire_query_seconds Query latency.\n# TYPE duckwire_query_seconds histogram"
        );
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "duckwire_query_seconds_bucket{{le=\"{bound}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "duckwire_query_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "duckwire_query_seconds_sum {}",
            self.latency_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "duckwire_query_seconds_count {count}");
        gauge(
            &mut out,
            "duckwire_cache_hits_total",
            "Result cache hits.",
            "counter",
            self.cache_hits.load(Relaxed),
        );
        gauge(
            &mut out,
            "duckwire_cache_misses_total",
            "Result cache misses.",
            "counter",
            self.cache_misses.load(Relaxed),
        );
        gauge(
            &mut out,
            "duckwire_cache_bytes",
            "Bytes held by the in-memory result cache.",
            "gauge",
            self.cache_bytes.load(Relaxed),
        );
        gauge(
            &mut out,
            "duckwire_crdt_rooms",
            "CRDT rooms loaded.",
            "gauge",
            self.crdt_rooms.load(Relaxed),
        );
        gauge(
            &mut out,
            "duckwire_crdt_updates_total",
            "CRDT updates received.",
            "counter",
            self.crdt_updates.load(Relaxed),
        );
        gauge(
            &mut out,
            "duckwire_bytes_in_total",
            "WebSocket payload bytes received.",
            "counter",
            self.bytes_in.load(Relaxed),
        );
        gauge(
            &mut out,
            "duckwire_bytes_out_total",
            "WebSocket payload bytes sent.",
            "counter",
            self.bytes_out.load(Relaxed),
        );
        out
    }
}
