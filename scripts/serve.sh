#!/usr/bin/env bash
# The fast way to run duckwire from a clone: builds against the official prebuilt DuckDB 1.5.6
# library (scripts/dev-env.sh; minutes instead of DuckDB's ~50-minute compile from source) and
# starts the server with your flags, e.g.
#   scripts/serve.sh --db-path app.db --port 4000 --sync
# The binary it builds ($CARGO_TARGET_DIR/release/duckwire, default
# ~/.cache/duckwire-target/release/duckwire) finds libduckdb through its rpath.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/dev-env.sh
cargo build --release -p duckwire-cli $DUCKWIRE_CARGO_FEATURES >&2
exec "$CARGO_TARGET_DIR/release/duckwire" "$@"
