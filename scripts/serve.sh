#!/usr/bin/env bash
# The fast way to run duckwire from a clone: builds against the shared DuckDB 2.0 library of
# scripts/dev-env.sh (compiled once per machine, ~50 minutes, until a registry ships it; every
# build after that takes minutes) and starts the server with your flags, e.g.
#   scripts/serve.sh --db-path app.db --port 4000 --sync
# The binary it builds ($CARGO_TARGET_DIR/release/duckwire, default
# ~/.cache/duckwire-target/release/duckwire) finds libduckdb through its rpath.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/dev-env.sh
cargo build --release -p duckwire-cli $DUCKWIRE_CARGO_FEATURES >&2
exec "$CARGO_TARGET_DIR/release/duckwire" "$@"
