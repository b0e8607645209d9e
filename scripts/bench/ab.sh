#!/usr/bin/env bash
# Before/after: two duckwire builds, driven by the same client (this tree's duckwire-bench),
# interleaved, every scenario of the SQLRooms socket, Mosaic's socket and REST; prints each
# run's table. Build the "before" tree with its own target dir first, for example:
#   git worktree add /tmp/before <rev>
#   (cd /tmp/before && . scripts/dev-env.sh && CARGO_TARGET_DIR=/tmp/before-target \
#      cargo build --release -p duckwire-cli $DUCKWIRE_CARGO_FEATURES)
#   scripts/bench/ab.sh /tmp/before-target/release/duckwire [rounds] [extra duckwire-bench args]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES >&2
before="$1"; rounds="${2:-2}"; shift $(( $# >= 2 ? 2 : 1 ))
extra=("$@")
after="$CARGO_TARGET_DIR/release/duckwire"
client="$CARGO_TARGET_DIR/release/duckwire-bench"
out="${TMPDIR:-/tmp}/duckwire-ab"
mkdir -p "$out"
run() { # label binary port
  : >"$out/$1.log"  # emptied first: waiting for its line must not see the last run's
  "$2" --port "$3" --threads "$(nproc)" --sync --log-level warn >"$out/$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$out/$1.log" && break; sleep 0.2; done
  "$client" --data tests/data --url "ws://127.0.0.1:$3/" --mosaic-url "ws://127.0.0.1:$3/mosaic" \
    --http "http://127.0.0.1:$3/" --pid "$pid" --label "$1" --json "$out/$1.json" ${extra[@]+"${extra[@]}"}
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for round in $(seq 1 "$rounds"); do
  run "after-$round" "$after" 4811
  run "before-$round" "$before" 4812
done
