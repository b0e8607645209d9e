#!/usr/bin/env bash
# How duckwire scales (BENCHMARKS.md "Scaling"): `select 1` latency and throughput for
# --threads 1, 2 and 4, with 16, 32 and 64 client connections (each on its own client thread,
# 16 queries in flight each), SQLRooms WebSocket protocol, same machine.
#   scripts/bench/scaling.sh [--quick]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES
bin="$CARGO_TARGET_DIR/release"
out="${TMPDIR:-/tmp}/duckwire-scaling"
mkdir -p "$out"
echo "| --threads | scenario | median | p99 | ops/s |"
echo "|---|---|---|---|---|"
for threads in 1 2 4; do
  : >"$out/server.log"  # emptied first: waiting for its line must not see the last run's
  "$bin/duckwire" --port 4621 --threads "$threads" --log-level warn >"$out/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$out/server.log" && break; sleep 0.1; done
  runs=("--only sequential --connections 16")
  for connections in 16 32 64; do runs+=("--only throughput --connections $connections"); done
  for run in "${runs[@]}"; do
    # shellcheck disable=SC2086
    "$bin/duckwire-bench" --url ws://127.0.0.1:4621/ --data tests/data $run "$@" 2>/dev/null |
      awk -F'|' -v t="$threads" '/^\| ws/ { printf "| %s |%s|%s|%s|%s|\n", t, $3, $4, $5, $6 }'
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
