#!/usr/bin/env bash
# The long-room benchmark (BENCHMARKS.md, "Rooms that live for months"): page loads into one
# room (each a new Loro peer: join, import the snapshot, one edit, wait for its ack) against
# duckwire and the reference sqlrooms-server, the time to load the room again once unloaded
# (and the memory it then takes), and the fan-out of one edit to 10, 100 and 1000 members;
# writes the per-page-load CSVs and draws ack latency against past peers as an SVG.
# duckwire runs with allocators told to return freed pages at once, so its resident memory
# shows what it holds, and unloads idle rooms after 1 s.
#   scripts/bench/rooms.sh [PEERS (default 10200)] [OUT_DIR (default /tmp/duckwire-rooms)]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES >&2
peers="${1:-10200}"
out="${2:-${TMPDIR:-/tmp}/duckwire-rooms}"
mkdir -p "$out"
bench="$CARGO_TARGET_DIR/release/duckwire-rooms-bench"
venv="$(scripts/bench/pyref.sh)"
. "$root/scripts/bench/wait.sh"

run() { # label port command...
  local label=$1 port=$2; shift 2
  : >"$out/$label.log"  # emptied first: waiting for its line must not see the last run's
  "$@" >"$out/$label.log" 2>&1 &
  local pid=$!
  wait_port "$port"
  echo "## $label"
  "$bench" page-loads --url "ws://127.0.0.1:$port/" --peers "$peers" --pid "$pid" --csv "$out/$label.csv" \
    --reload-after-ms 3000
  for members in 11 101 1001; do
    "$bench" fan-out --url "ws://127.0.0.1:$port/" --members "$members" --edits 50
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
run duckwire 4701 env MIMALLOC_PURGE_DELAY=0 MALLOC_TRIM_THRESHOLD_=131072 MALLOC_MMAP_THRESHOLD_=131072 \
  "$CARGO_TARGET_DIR/release/duckwire" --port 4701 --sync --log-level warn --room-idle-evict-ms 1000
run sqlrooms-server 4702 "$venv/bin/sqlrooms-server" --port 4702 --sync
python3 scripts/bench/rooms_chart.py "$out/rooms.svg" "$out/duckwire.csv" "$out/sqlrooms-server.csv"
echo "chart: $out/rooms.svg"
