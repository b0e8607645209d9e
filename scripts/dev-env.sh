#!/usr/bin/env bash
# Source this file (". scripts/dev-env.sh") to build duckwire against a shared DuckDB library
# instead of compiling DuckDB into every build from source. CI (.ci/run), the tests,
# scripts/serve.sh and the wheel use the same script, the same library and the same target dir.
#
# The library matches the `duckdb` crate Cargo.lock pins (1.20000.x = DuckDB 2.0.x). It comes
# from the first of:
#   1. the persistent cache, $DUCKWIRE_CACHE/libduckdb-<crate version>/libduckdb.so;
#   2. a registry-shipped build: the npm package @duckdb/node-bindings-linux-x64 of the same
#      DuckDB version, which carries DuckDB's own release build of libduckdb.so (none exists
#      for 2.0 yet; the day one does, it is taken and nothing is compiled);
#   3. scripts/build-libduckdb.sh, which compiles it once per machine from the official
#      source the `duckdb` crate carries (about 20 minutes on 2 cores).
# No `set -e` here: this file is sourced, and must not change the caller's shell options.

DUCKWIRE_CACHE="${DUCKWIRE_CACHE:-$HOME/.cache/duckwire}"
_dw_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DUCKDB_CRATE_VERSION="$(awk '/^name = "libduckdb-sys"$/{getline; gsub(/"/, "", $3); print $3}' "$_dw_root/Cargo.lock")"
export DUCKDB_LIB_DIR="$DUCKWIRE_CACHE/libduckdb-$DUCKDB_CRATE_VERSION"

# 1.20000.1 -> 2.0.0 (the crate's patch level is not DuckDB's: DuckDB's own version comes from
# the sources the crate carries).
_dw_duckdb_version() {
  local sys
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"libduckdb-sys-$DUCKDB_CRATE_VERSION" 2>/dev/null | head -n 1)
  if [ -n "$sys" ] && [ -f "$sys/.duckdb-release" ]; then
    sed -n 's/^DUCKDB_RELEASE_VERSION=v//p' "$sys/.duckdb-release"
  else
    local minor=${DUCKDB_CRATE_VERSION#1.}
    minor=${minor%%.*}
    echo "$((minor / 10000)).$(((minor / 100) % 100)).$((minor % 100))"
  fi
}

_dw_from_npm() {
  local version package tmp found
  version=$(_dw_duckdb_version)
  package=$(npm view @duckdb/node-bindings-linux-x64 versions --json 2>/dev/null \
    | tr -d '[]", ' | tr '\n' ' ' | tr ' ' '\n' | grep -E "^${version//./\\.}-r\.[0-9]+$" | tail -n 1)
  [ -n "$package" ] || return 1
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent "@duckdb/node-bindings-linux-x64@$package" >/dev/null && tar xzf ./*.tgz); then
    found=$(find "$tmp" -name 'libduckdb.so' | head -n 1)
  fi
  if [ -n "$found" ]; then
    mkdir -p "$DUCKDB_LIB_DIR"
    cp "$found" "$DUCKDB_LIB_DIR/libduckdb.so"
    echo "dev-env: libduckdb.so $version from npm (@duckdb/node-bindings-linux-x64@$package)" >&2
  fi
  rm -rf "$tmp"
  [ -n "$found" ]
}

if [ ! -f "$DUCKDB_LIB_DIR/libduckdb.so" ]; then
  if ! _dw_from_npm; then
    echo "dev-env: no registry ships libduckdb $(_dw_duckdb_version); building it from source once (scripts/build-libduckdb.sh)" >&2
    if ! "$_dw_root/scripts/build-libduckdb.sh" "$DUCKDB_CRATE_VERSION" >&2; then
      echo "dev-env: could not build libduckdb.so" >&2
      return 1 2>/dev/null || exit 1
    fi
  fi
fi

export LD_LIBRARY_PATH="$DUCKDB_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/duckwire-target}"
# Every cargo command in development passes this so the `bundled` default is off.
export DUCKWIRE_CARGO_FEATURES="--no-default-features --features duckwire-cli/prebuilt"
