#!/usr/bin/env bash
# Runs the official clients, unchanged, against freshly started duckwire servers:
# @sqlrooms/duckdb 0.29.0 (WebSocket connector), @sqlrooms/crdt 0.29.0 with loro-crdt,
# Mosaic's @uwdata/mosaic-core 0.32.0 (REST and socket connectors, Coordinator, flechette
# decoding), @sqlrooms/crdt across two replicas sharing a Redis (when redis-server is
# installed, as CI does), and (when Chromium is installed, as CI does) the connector in
# headless Chromium. Needs node/npm and the registry; used by .ci/run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
cd "$here"
. "$root/scripts/dev-env.sh"
npm install --no-audit --no-fund --silent >/dev/null
# @sqlrooms/duckdb@0.29.0 cannot be installed whole (its dependency
# @sqlrooms/room-config@0.29.0 is missing from the registry): take the published package
# as is and bundle its connector; package.json pins the dependencies it imports.
if [ ! -f vendor/duckdb/package/package.json ]; then
  mkdir -p vendor/duckdb
  (cd vendor/duckdb && npm pack --silent @sqlrooms/duckdb@0.29.0 >/dev/null && tar xzf sqlrooms-duckdb-0.29.0.tgz)
fi
# @uwdata/mosaic-core@0.32.0 cannot be installed whole either (@duckdb/duckdb-wasm, which
# only its wasm connector uses, depends on @uwdata/wk-geojson, missing from the registry):
# bundle the published mosaic-core and mosaic-sql as they are, with duckdb-wasm stubbed.
for pkg in mosaic-core mosaic-sql; do
  if [ ! -f "vendor/$pkg/package/package.json" ]; then
    mkdir -p "vendor/$pkg"
    (cd "vendor/$pkg" && npm pack --silent "@uwdata/$pkg@0.32.0" >/dev/null && tar xzf ./*.tgz)
  fi
done
node_bundle() {
  npx esbuild "$1.mjs" --bundle --platform=node --format=esm --outfile="dist/$1.mjs" \
    --external:loro-crdt --external:apache-arrow --external:ws \
    --alias:@uwdata/mosaic-core=./vendor/mosaic-core/package/dist/src/index.js \
    --alias:@uwdata/mosaic-sql=./vendor/mosaic-sql/package/dist/src/index.js \
    --alias:@duckdb/duckdb-wasm=./duckdb-wasm-stub.mjs --log-override:import-is-undefined=silent \
    --banner:js="import{createRequire}from'module';const require=createRequire(import.meta.url);" \
    --log-level=warning
}
for script in compat crdt-compat crdt-cluster-compat mosaic-compat; do node_bundle "$script"; done
npx esbuild browser-page.mjs --bundle --platform=browser --format=esm --outfile=dist/browser-page.js --log-level=warning
binary="$CARGO_TARGET_DIR/release/duckwire"

# Starts duckwire with the given flags and runs `check URL` against it.
with_server() {
  local check=$1
  shift
  local log
  log=$(mktemp)
  "$binary" --port 0 --log-level warn "$@" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
  local url
  url=$(grep -o 'ws://[0-9.:]*' "$log" | head -n 1)
  local status=0
  "$check" "$url" || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$log"
  return $status
}

sqlrooms_clients() { node dist/compat.mjs "$1" && DUCKWIRE_BIN="$binary" node dist/crdt-compat.mjs "$1"; }
sqlrooms_clients_with_token() {
  node dist/compat.mjs "$1" compat-secret && DUCKWIRE_BIN="$binary" node dist/crdt-compat.mjs "$1" compat-secret
}
mosaic_client() {
  node dist/mosaic-compat.mjs "http://${1#ws://}/" "$1/mosaic" "$root/tests/data/flights-200k.parquet"
}
browser() { node browser.mjs "$1"; }
# The same page with --ws-compression on: Chromium negotiates permessage-deflate (the server's
# metrics say so) and the connector still reads its results.
browser_deflate() {
  node browser.mjs "$1"
  node -e '
    fetch(process.argv[1]).then((r) => r.text()).then((metrics) => {
      const value = (name) => Number((metrics.match(new RegExp(`^${name} (\\S+)`, "m")) || [])[1] || 0);
      if (!(value("duckwire_ws_deflate_connections_total") >= 1 && value("duckwire_ws_deflated_bytes_total") > 0)) {
        console.error("js-compat: Chromium did not negotiate permessage-deflate");
        process.exit(1);
      }
      console.log("browser + permessage-deflate: ok");
    });' "http://${1#ws://}/metrics"
}

with_server sqlrooms_clients --sync
with_server sqlrooms_clients_with_token --sync --auth-token compat-secret
with_server mosaic_client

# Two replicas sharing one Redis (Debian's redis-server), clients on different replicas.
if command -v redis-server >/dev/null; then
  redis_dir=$(mktemp -d)
  redis-server --port 0 --unixsocket "$redis_dir/redis.sock" --save "" --appendonly no \
    --dir "$redis_dir" >/dev/null &
  redis_pid=$!
  for _ in $(seq 1 100); do [ -S "$redis_dir/redis.sock" ] && break; sleep 0.1; done
  replica_urls=()
  replica_pids=()
  for replica in a b; do
    log="$redis_dir/$replica.log"
    "$binary" --port 0 --log-level warn --sync --redis-url "redis+unix://$redis_dir/redis.sock" >"$log" 2>&1 &
    replica_pids+=($!)
    for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    replica_urls+=("$(grep -o 'ws://[0-9.:]*' "$log" | head -n 1)")
  done
  status=0
  node dist/crdt-cluster-compat.mjs "${replica_urls[@]}" || status=$?
  kill "${replica_pids[@]}" "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$redis_dir"
  [ $status -eq 0 ] || exit $status
else
  echo "js-compat: redis-server not installed; the two-replica CRDT check is skipped (.ci/run installs it)" >&2
fi
if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  with_server browser
  with_server browser_deflate --ws-compression on
elif [ -n "${DUCKWIRE_REQUIRE_BROWSER:-}" ]; then
  echo "js-compat: Chromium is required (DUCKWIRE_REQUIRE_BROWSER) but not installed" >&2
  exit 1
else
  echo "js-compat: Chromium not installed; browser check skipped (.ci/run installs it)" >&2
fi
