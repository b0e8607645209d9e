#!/usr/bin/env bash
# The one test command (README, CI): builds against the shared libduckdb (scripts/dev-env.sh) and runs every test
# in the release profile (one profile for tests and runs, so nothing compiles twice).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/dev-env.sh
# The end-to-end tests start the real binary, so build it first.
cargo build --release --workspace $DUCKWIRE_CARGO_FEATURES
cargo test --release --workspace $DUCKWIRE_CARGO_FEATURES "$@"
