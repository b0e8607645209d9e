#!/usr/bin/env bash
# Runs the official SQLRooms JS client (unchanged) against a freshly started duckwire.
# Needs node/npm and the registry; used by .ci/run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
cd "$here"
. "$root/scripts/dev-env.sh"
npm install --no-audit --no-fund --silent >/dev/null
for script in compat crdt-compat; do
  npx esbuild "$script.mjs" --bundle --platform=node --format=esm --outfile="dist/$script.mjs" \
    --external:loro-crdt --banner:js="import{createRequire}from'module';const require=createRequire(import.meta.url);" \
    --log-level=warning
done
binary="$CARGO_TARGET_DIR/release/duckwire"

# Starts duckwire with the given flags, runs both clients against it (with TOKEN if given).
run_against() {
  local token=$1
  shift
  local log
  log=$(mktemp)
  "$binary" --port 0 --sync --log-level warn "$@" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  local url
  url=$(grep -o 'ws://[0-9.:]*' "$log" | head -n 1)
  local status=0
  node dist/compat.mjs "$url" $token && node dist/crdt-compat.mjs "$url" $token || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
  return $status
}

run_against ""
run_against compat-secret --auth-token compat-secret
