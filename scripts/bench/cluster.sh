#!/usr/bin/env bash
# Cross-replica figures (BENCHMARKS.md "Across replicas"): three duckwire replicas sharing one
# Redis (Debian's redis-server, on a Unix socket in a temporary directory): a CRDT update to
# 7 members spread over them and a notify to a subscriber on another replica, each beside its
# one-replica baseline from the same run.
#   scripts/bench/cluster.sh [--quick]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES
command -v redis-server >/dev/null || { echo "cluster bench: redis-server is required" >&2; exit 1; }
bin="$CARGO_TARGET_DIR/release"
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
redis-server --port 0 --unixsocket "$dir/redis.sock" --save "" --appendonly no --dir "$dir" >/dev/null &
for _ in $(seq 1 100); do [ -S "$dir/redis.sock" ] && break; sleep 0.1; done
urls=()
for replica in a b c; do
  : >"$dir/$replica.log"  # emptied first: waiting for its line must not see the last run's
  "$bin/duckwire" --port 0 --threads 2 --sync --log-level warn \
    --redis-url "redis+unix://$dir/redis.sock" >"$dir/$replica.log" 2>&1 &
  for _ in $(seq 1 100); do grep -q "listening on" "$dir/$replica.log" && break; sleep 0.1; done
  urls+=("$(grep -o 'ws://[0-9.:]*' "$dir/$replica.log" | head -n 1)")
done
"$bin/duckwire-bench" --replicas "$(IFS=,; echo "${urls[*]}")" --label "duckwire, 3 replicas, one Redis" "$@"
