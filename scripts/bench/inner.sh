#!/usr/bin/env bash
# One benchmark run (see run.sh): duckwire, then sqlrooms-server, then the ratios.
set -euo pipefail
bin="$CARGO_TARGET_DIR/release"
out="${TMPDIR:-/tmp}/duckwire-bench"
mkdir -p "$out"
wait_for() { for _ in $(seq 1 100); do grep -q "$2" "$1" && return 0; sleep 0.2; done; cat "$1"; return 1; }

"$bin/duckwire" --port 4601 --threads "$(nproc)" --sync --log-level warn >"$out/duckwire.log" 2>&1 &
pid=$!
wait_for "$out/duckwire.log" "listening on"
"$bin/duckwire-bench" --url ws://127.0.0.1:4601 --pid "$pid" --data "$DUCKWIRE_BENCH_DATA" \
  --floor --label "duckwire $(git -C "$(dirname "$0")" rev-parse --short HEAD)" --json "$out/duckwire.json" "$@"
kill "$pid"; wait "$pid" 2>/dev/null || true

"$DUCKWIRE_BENCH_VENV/bin/sqlrooms-server" --port 4602 --sync >"$out/reference.log" 2>&1 &
pid=$!
wait_for "$out/reference.log" "istening"
"$bin/duckwire-bench" --url ws://127.0.0.1:4602 --pid "$pid" --data "$DUCKWIRE_BENCH_DATA" \
  --label "sqlrooms-server $("$DUCKWIRE_BENCH_VENV/bin/pip" show sqlrooms-server | awk '/^Version/{print $2}')" \
  --json "$out/reference.json" "$@"
kill "$pid"; wait "$pid" 2>/dev/null || true

"$bin/duckwire-bench" --compare "$out/duckwire.json" "$out/reference.json"
