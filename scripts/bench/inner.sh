#!/usr/bin/env bash
# One benchmark run (see run.sh): duckwire, sqlrooms-server and Mosaic's Rust server one
# after another on the same machine with the same client, then the three-way table and the
# targets. Each server gets the scenarios of the protocols it speaks.
set -euo pipefail
bin="$CARGO_TARGET_DIR/release"
out="${TMPDIR:-/tmp}/duckwire-bench"
mkdir -p "$out"
. "$(dirname "$0")/wait.sh"
bench() { "$bin/duckwire-bench" --data "$DUCKWIRE_BENCH_DATA" "$@" $DUCKWIRE_BENCH_ARGS; }

: >"$out/duckwire.log"  # emptied first: waiting for its line must not see the last run's
"$bin/duckwire" --port 4601 --threads "$(nproc)" --sync --log-level warn >"$out/duckwire.log" 2>&1 &
pid=$!
wait_for "$out/duckwire.log" "listening on"
bench --url ws://127.0.0.1:4601/ --mosaic-url ws://127.0.0.1:4601/mosaic --http http://127.0.0.1:4601/ \
  --pid "$pid" --floor --label "duckwire $(git -C "$(dirname "$0")" rev-parse --short HEAD)" \
  --json "$out/duckwire.json"
kill "$pid"; wait "$pid" 2>/dev/null || true

: >"$out/sqlrooms-server.log"  # emptied first: waiting for its line must not see the last run's
"$DUCKWIRE_BENCH_VENV/bin/sqlrooms-server" --port 4602 --sync >"$out/sqlrooms-server.log" 2>&1 &
pid=$!
wait_for "$out/sqlrooms-server.log" "istening"
bench --url ws://127.0.0.1:4602 --pid "$pid" \
  --label "sqlrooms-server $("$DUCKWIRE_BENCH_VENV/bin/pip" show sqlrooms-server | awk '/^Version/{print $2}')" \
  --json "$out/sqlrooms-server.json"
kill "$pid"; wait "$pid" 2>/dev/null || true

# Mosaic's Rust server: in-memory database, its default pool of 10 connections, per-query
# logging off (duckwire runs at --log-level warn too).
: >"$out/mosaic-rust-server.log"  # emptied first: waiting for its line must not see the last run's
RUST_LOG=warn "$DUCKWIRE_BENCH_MOSAIC" --port 4603 :memory: >"$out/mosaic-rust-server.log" 2>&1 &
pid=$!
wait_port 4603
bench --mosaic-url ws://127.0.0.1:4603/ --http http://127.0.0.1:4603/ --pid "$pid" \
  --label "Mosaic duckdb-server (Rust) $(basename "$DUCKWIRE_BENCH_MOSAIC")" \
  --json "$out/mosaic-rust-server.json"
kill "$pid"; wait "$pid" 2>/dev/null || true

"$bin/duckwire-bench" --compare "$out/duckwire.json" "$out/sqlrooms-server.json" "$out/mosaic-rust-server.json"
