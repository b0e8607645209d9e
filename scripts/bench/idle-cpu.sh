#!/usr/bin/env bash
# Idle CPU after a burst: starts duckwire (or the binary given as $1), sends more than 10 000
# queries with duckwire-bench (select 1 sequential, json and arrow; then 16 connections × 16
# in flight), waits 1 s, then reads the process's CPU time over 10 s from /proc.
#   scripts/bench/idle-cpu.sh [path/to/duckwire]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
bin="${1:-$CARGO_TARGET_DIR/release/duckwire}"
out="$(mktemp -d)"
port="${DUCKWIRE_IDLE_PORT:-4611}"
: >"$out/server.log"  # emptied first: waiting for its line must not see the last run's
"$bin" --port "$port" --threads "$(nproc)" --sync --log-level warn >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$out/server.log" && break; sleep 0.1; done
for only in "select 1" "throughput"; do
  "$CARGO_TARGET_DIR/release/duckwire-bench" --url "ws://127.0.0.1:$port" --pid "$pid" \
    --data tests/data --only "$only" >/dev/null
done
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
sleep 10
after=$(ticks)
threads=$(ls "/proc/$pid/task" | wc -l)
echo "idle CPU over 10 s after the burst: $(( (after - before) * 1000 / hz )) ms of CPU" \
  "($(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN{printf "%.2f", t * 100 / hz / 10}') % of one core), $threads threads"
