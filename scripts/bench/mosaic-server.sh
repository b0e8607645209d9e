#!/usr/bin/env bash
# Builds Mosaic's Rust server (`duckdb-server`, uwdata/mosaic packages/server/duckdb-server-rust)
# against the same shared libduckdb as duckwire (scripts/dev-env.sh), for the three-way benchmark, and prints
# the path of the binary. About 11 minutes on 2 cores the first time; the binary is cached
# per commit in ~/.cache/duckwire/bin.
#
# Source: $MOSAIC_SRC (a checkout of uwdata/mosaic, or of just that package), else a clone of
# https://github.com/uwdata/mosaic at $MOSAIC_COMMIT. The only change made to it: its duckdb
# dependency drops `bundled`, `json` and `parquet` (they compile DuckDB from source) and is
# pinned to the duckdb crate duckwire uses (Cargo.lock), so both servers run the same libduckdb;
# its `arrow` is pinned to the version that duckdb crate uses. Nothing of it is copied into this repository.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
. "$root/scripts/dev-env.sh"
commit="${MOSAIC_COMMIT:-e128d1114456bf48c150d2a9630f4eeeb7cef034}"
cache="${DUCKWIRE_CACHE:-$HOME/.cache/duckwire}"
binary="$cache/bin/mosaic-duckdb-server-${commit:0:12}-duckdb-$DUCKDB_CRATE_VERSION"
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
src="${MOSAIC_SRC:-$cache/mosaic-src-${commit:0:12}}"
if [ ! -d "$src" ]; then
  git clone -q --filter=blob:none https://github.com/uwdata/mosaic "$src" >&2
  git -C "$src" checkout -q "$commit" >&2
fi
package="$src/packages/server/duckdb-server-rust"
[ -f "$package/Cargo.toml" ] || package="$src"
build="$cache/mosaic-build-${commit:0:12}"
rm -rf "$build"
mkdir -p "$build"
cp -r "$package/Cargo.toml" "$package/Cargo.lock" "$package/src" "$build/"
[ -d "$package/benches" ] && cp -r "$package/benches" "$build/"
sed -i -E "s/^duckdb = \{.*\$/duckdb = { version = \"=$DUCKDB_CRATE_VERSION\", features = [\"url\", \"r2d2\"] }/" "$build/Cargo.toml"
grep -q "\"=$DUCKDB_CRATE_VERSION\"" "$build/Cargo.toml" || { echo "mosaic-server: could not pin its duckdb dependency" >&2; exit 1; }
# Its own `arrow` must be the one that duckdb crate re-exports (their types meet in its code).
arrow_version="$(awk '/^name = "arrow"$/{getline; gsub(/"/, "", $3); print $3}' "$root/Cargo.lock")"
sed -i -E "s/^arrow = \{ version = \"[^\"]*\"/arrow = { version = \"=$arrow_version\"/" "$build/Cargo.toml"
grep -q "^arrow = { version = \"=$arrow_version\"" "$build/Cargo.toml" || { echo "mosaic-server: could not pin its arrow dependency" >&2; exit 1; }
# The library path is baked in (rpath) so the binary runs without LD_LIBRARY_PATH.
(cd "$build" && RUSTFLAGS="-C link-arg=-Wl,-rpath,$DUCKDB_LIB_DIR" \
  CARGO_TARGET_DIR="$cache/mosaic-target" cargo build --release --bin duckdb-server >&2)
mkdir -p "$cache/bin"
cp "$cache/mosaic-target/release/duckdb-server" "$binary"
echo "$binary"
