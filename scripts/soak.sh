#!/usr/bin/env bash
# The soak run: many clients mixing queries, cancels, uploads, pub/sub, CRDT edits, slow
# readers, connection churn and garbage frames for SECONDS, the server restarted once with
# SIGTERM and once with SIGKILL; then checks nothing acknowledged was lost, the last server's
# RSS after all its load is within 10 % of its RSS after two thirds of it (both read with no
# client connected; the first third warms it up), and no file descriptor leaked. Not part of `cargo test`
# (CI runs a 60 s smoke run).
#   scripts/soak.sh SECONDS
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/dev-env.sh
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES
exec "$CARGO_TARGET_DIR/release/duckwire-soak" "${1:-60}"
