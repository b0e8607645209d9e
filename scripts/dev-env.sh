#!/usr/bin/env bash
# Source this file (". scripts/dev-env.sh") to build duckwire against the official prebuilt
# DuckDB 1.5.6 shared library instead of compiling DuckDB from source (~6 min instead of ~40
# on a 2-core machine). CI (.ci/run) and developers use the same script and the same target dir.
#
# The library comes from the npm package @duckdb/node-bindings-linux-x64@1.5.6-r.1, which ships
# DuckDB's own release build of libduckdb.so.
# No `set -e` here: this file is sourced, and must not change the caller's shell options.

DUCKDB_NPM_PACKAGE="@duckdb/node-bindings-linux-x64@1.5.6-r.1"
DUCKWIRE_CACHE="${DUCKWIRE_CACHE:-$HOME/.cache/duckwire}"
export DUCKDB_LIB_DIR="$DUCKWIRE_CACHE/libduckdb-1.5.6"

if [ ! -f "$DUCKDB_LIB_DIR/libduckdb.so" ]; then
  mkdir -p "$DUCKDB_LIB_DIR"
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && npm pack --silent "$DUCKDB_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz); then
    echo "dev-env: could not fetch $DUCKDB_NPM_PACKAGE from the npm registry" >&2
    rm -rf "$tmp"
    return 1 2>/dev/null || exit 1
  fi
  found=$(find "$tmp" -name 'libduckdb.so' | head -n 1)
  if [ -z "$found" ]; then
    echo "dev-env: libduckdb.so not found in $DUCKDB_NPM_PACKAGE" >&2
    rm -rf "$tmp"
    return 1 2>/dev/null || exit 1
  fi
  cp "$found" "$DUCKDB_LIB_DIR/libduckdb.so"
  rm -rf "$tmp"
fi

export LD_LIBRARY_PATH="$DUCKDB_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/duckwire-target}"
# Every cargo command in development passes this so the `bundled` default is off.
export DUCKWIRE_CARGO_FEATURES="--no-default-features --features duckwire-cli/prebuilt"
