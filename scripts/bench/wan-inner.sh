#!/usr/bin/env bash
# One run of the WAN benchmark inside the shaped namespace (see wan.sh).
set -euo pipefail
bin="$CARGO_TARGET_DIR/release"
out="$DUCKWIRE_WAN_OUT"
. "$(dirname "$0")/wait.sh"
bench() { "$bin/duckwire-bench" --wan --data "$DUCKWIRE_BENCH_DATA" "$@" >/dev/null; }
# DUCKWIRE_WAN_CONFIGS: which configurations to run (default all), e.g. "duckwire-on" to
# measure a change to duckwire alone; the table takes the others from earlier runs.
wanted() { [ -z "${DUCKWIRE_WAN_CONFIGS:-}" ] || [[ " $DUCKWIRE_WAN_CONFIGS " == *" $1 "* ]]; }

duckwire() { # label json compression [client flags…]
  local label=$1 json=$2 compression=$3
  shift 3
  : >"$out/$json.log"  # emptied first: waiting for its line must not see the last run's
  "$bin/duckwire" --port 4701 --threads "$(nproc)" --log-level warn \
    --ws-compression "$compression" --http-compression "$compression" >"$out/$json.log" 2>&1 &
  local pid=$!
  wait_for "$out/$json.log" "listening on"
  bench --url ws://127.0.0.1:4701/ --mosaic-url ws://127.0.0.1:4701/mosaic \
    --http http://127.0.0.1:4701/ --pid "$pid" --label "$label" --json "$out/$json.json" "$@"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
if wanted duckwire-on; then
  duckwire "duckwire, compression on" duckwire-on on --ws-deflate --accept-encoding gzip
fi
if wanted duckwire-off; then
  duckwire "duckwire, compression off" duckwire-off off
fi

if wanted sqlrooms-server; then
  : >"$out/sqlrooms-server.log"  # emptied first: waiting for its line must not see the last run's
  "$DUCKWIRE_BENCH_VENV/bin/sqlrooms-server" --port 4702 >"$out/sqlrooms-server.log" 2>&1 &
  pid=$!
  wait_for "$out/sqlrooms-server.log" "istening"
  bench --url ws://127.0.0.1:4702 --pid "$pid" --ws-deflate --label "sqlrooms-server" \
    --json "$out/sqlrooms-server.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

if wanted mosaic; then
  : >"$out/mosaic.log"  # emptied first: waiting for its line must not see the last run's
  RUST_LOG=warn "$DUCKWIRE_BENCH_MOSAIC" --port 4703 :memory: >"$out/mosaic.log" 2>&1 &
  pid=$!
  wait_port 4703
  bench --mosaic-url ws://127.0.0.1:4703/ --http http://127.0.0.1:4703/ --pid "$pid" \
    --accept-encoding gzip --label "Mosaic duckdb-server (Rust)" --json "$out/mosaic.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi
