#!/usr/bin/env bash
# CI's check of the Python wheel: build it, install it into a fresh virtualenv, start
# `duckwire --port 0` from that venv with nothing else on the library path, and run a query
# and the official @sqlrooms/duckdb connector (scripts/js-compat, built by its run.sh) on it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rm -f target/wheels/duckwire-*.whl
scripts/wheel.sh >/dev/null
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q target/wheels/duckwire-*.whl
env -u LD_LIBRARY_PATH -u DUCKDB_LIB_DIR "$work/venv/bin/duckwire" --version
env -u LD_LIBRARY_PATH -u DUCKDB_LIB_DIR "$work/venv/bin/duckwire" --port 0 --log-level warn \
  >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/server.log" && break; sleep 0.1; done
url=$(grep -o 'ws://[0-9.:]*' "$work/server.log" | head -n 1)
answer=$(python3 - "http://${url#ws://}/" <<'PY'
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], data=b'{"type":"json","sql":"select 42 as answer"}',
                                 headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=20).read().decode())
PY
)
[ "$answer" = '[{"answer":42}]' ] || { echo "wheel-check: unexpected answer $answer" >&2; exit 1; }
(cd scripts/js-compat && node dist/compat.mjs "$url")
echo "wheel-check: the wheel installs and serves ($(ls target/wheels/duckwire-*.whl))"
