#!/usr/bin/env bash
# The benchmark (BENCHMARKS.md): duckwire with its in-process floor, the Python reference
# sqlrooms-server (from PyPI, in a venv; needs Debian's libuv1) and Mosaic's Rust
# duckdb-server (built by mosaic-server.sh against the same libduckdb), same scenarios where
# they share a protocol, same machine, same Rust client; prints the tables, the three-way
# comparison and the targets.
#   scripts/bench/run.sh [--quick] [--only SUBSTRING]
# The Python server binds every interface and has no host flag, so when run as root with
# `ip` available both servers and the client run in a network namespace with only loopback.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES
venv="$(scripts/bench/pyref.sh)"
mosaic="$(scripts/bench/mosaic-server.sh)"
data="$root/tests/data"
inner="$root/scripts/bench/inner.sh"
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  ip netns list | grep -q '^duckwire-bench' || ip netns add duckwire-bench
  ip netns exec duckwire-bench ip link set lo up
  ip netns exec duckwire-bench env HOME="$HOME" PATH="$PATH" LD_LIBRARY_PATH="$LD_LIBRARY_PATH" \
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR" DUCKWIRE_BENCH_VENV="$venv" \
    DUCKWIRE_BENCH_DATA="$data" DUCKWIRE_BENCH_MOSAIC="$mosaic" DUCKWIRE_BENCH_ARGS="$*" bash "$inner"
else
  echo "bench: not root; the reference server will listen on all interfaces during the run" >&2
  DUCKWIRE_BENCH_VENV="$venv" DUCKWIRE_BENCH_DATA="$data" DUCKWIRE_BENCH_MOSAIC="$mosaic" \
    DUCKWIRE_BENCH_ARGS="$*" bash "$inner"
fi
