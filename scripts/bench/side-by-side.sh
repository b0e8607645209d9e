#!/usr/bin/env bash
# duckwire vs the Python sqlrooms-server (PyPI, same DuckDB 1.5.6), same workloads, same
# machine. The Python server binds every interface and has no host flag, so both servers and
# the load generator run in a private network namespace that has only loopback (needs root).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES --example loadgen
if [ ! -x /tmp/pyref/bin/sqlrooms-server ]; then
  command -v apt-get >/dev/null && apt-get install -y libuv1 >/dev/null
  python3 -m venv /tmp/pyref
  /tmp/pyref/bin/pip install -q sqlrooms-server
fi
ip netns list | grep -q '^duckwire-bench' || ip netns add duckwire-bench
ip netns exec duckwire-bench ip link set lo up
ip netns exec duckwire-bench env HOME="$HOME" DATA="$root/../shared/data" bash scripts/bench/side-by-side-inner.sh
