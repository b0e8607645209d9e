#!/usr/bin/env bash
# The WAN benchmark (BENCHMARKS.md, "Over a real network"): time to result over a shaped
# link for the servers duckwire is compared with, same Rust client, same machine. Server and
# client run in a network namespace whose loopback is shaped with a token bucket
# (`tc … tbf`; plus `netem` delay where the kernel has it, DUCKWIRE_WAN_DELAY, e.g. 20ms) and
# an MTU of 1500 as on a real link.
#   scripts/bench/wan.sh [runs] [rate …]     (default: 3 runs at 50mbit and 10mbit)
# Configurations: duckwire with compression on (permessage-deflate on both WebSocket doors,
# gzip on REST) and off; sqlrooms-server from PyPI (its own permessage-deflate); Mosaic's Rust
# duckdb-server (REST with gzip, its WebSocket as it is). `auto` would not compress here: the
# namespace's peers are loopback, so the runs say `on` explicitly.
# Needs root, `ip` and `tc` (Debian's iproute2). Results: $TMPDIR/duckwire-wan/<rate>/<run>/;
# DUCKWIRE_WAN_CONFIGS="duckwire-on" reruns one configuration into them,
# DUCKWIRE_WAN_FIRST_RUN=3 starts at run 3 (to complete an interrupted series).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES >&2
runs="${1:-3}"
shift || true
rates=("$@")
[ ${#rates[@]} -eq 0 ] && rates=(50mbit 10mbit)
[ "$(id -u)" = 0 ] || { echo "wan: needs root (network namespace, tc)" >&2; exit 1; }
command -v tc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 >/dev/null
venv="$(scripts/bench/pyref.sh)"
mosaic="$(scripts/bench/mosaic-server.sh)"
out="${TMPDIR:-/tmp}/duckwire-wan"
ns=duckwire-wan
ip netns list | grep -q "^$ns" || ip netns add "$ns"
ip netns exec "$ns" ip link set lo up mtu 1500
for rate in "${rates[@]}"; do
  ip netns exec "$ns" tc qdisc del dev lo root 2>/dev/null || true
  shaping="tbf rate $rate"
  if [ -n "${DUCKWIRE_WAN_DELAY:-}" ] \
    && ip netns exec "$ns" tc qdisc add dev lo root handle 1: netem delay "$DUCKWIRE_WAN_DELAY" 2>/dev/null; then
    ip netns exec "$ns" tc qdisc add dev lo parent 1: handle 2: tbf rate "$rate" burst 64kb latency 200ms
    shaping="netem delay $DUCKWIRE_WAN_DELAY + $shaping"
  else
    ip netns exec "$ns" tc qdisc add dev lo root tbf rate "$rate" burst 64kb latency 200ms
  fi
  echo "wan: $rate ($shaping)" >&2
  for run in $(seq "${DUCKWIRE_WAN_FIRST_RUN:-1}" "$runs"); do
    dir="$out/$rate/$run"
    mkdir -p "$dir"
    ip netns exec "$ns" env HOME="$HOME" PATH="$PATH" LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}" \
      CARGO_TARGET_DIR="$CARGO_TARGET_DIR" DUCKWIRE_BENCH_VENV="$venv" DUCKWIRE_BENCH_MOSAIC="$mosaic" \
      DUCKWIRE_BENCH_DATA="$root/tests/data" DUCKWIRE_WAN_OUT="$dir" \
      DUCKWIRE_WAN_CONFIGS="${DUCKWIRE_WAN_CONFIGS:-}" bash scripts/bench/wan-inner.sh
  done
done
ip netns exec "$ns" tc qdisc del dev lo root 2>/dev/null || true
python3 scripts/bench/wan_table.py "$out" "${rates[@]}"
