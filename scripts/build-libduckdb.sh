#!/usr/bin/env bash
# Builds DuckDB's shared library (libduckdb.so) from the official source the `duckdb` crate
# carries (libduckdb-sys's duckdb.tar.gz), once per machine, into the persistent cache:
#   $DUCKWIRE_CACHE/libduckdb-<crate version>/libduckdb.so
# No registry reachable from here ships a prebuilt libduckdb 2.0 (the npm node-bindings stop
# at 1.5.6-r.1), so this is how the tests, scripts/serve.sh, the wheel and CI get one.
# About 20 minutes on 2 idle cores (54 while other builds ran); a second run finds the library
# and returns at once.
#
# Usage: scripts/build-libduckdb.sh [crate-version]   (default: the version Cargo.lock pins)
# Environment: DUCKWIRE_CACHE (default ~/.cache/duckwire), JOBS (default: nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

version="${1:-$(awk '/^name = "libduckdb-sys"$/{getline; gsub(/"/, "", $3); print $3}' Cargo.lock)}"
cache="${DUCKWIRE_CACHE:-$HOME/.cache/duckwire}"
out="$cache/libduckdb-$version"
if [ -f "$out/libduckdb.so" ]; then
  echo "build-libduckdb: $out/libduckdb.so is built"
  exit 0
fi

# The crate's sources: cargo already fetched them for this workspace, or fetches them now.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
find_tarball() { ls "$cargo_home"/registry/src/*/"libduckdb-sys-$version"/duckdb.tar.gz 2>/dev/null | head -n 1 || true; }
tarball=$(find_tarball)
if [ -z "$tarball" ]; then
  probe=$(mktemp -d)
  (cd "$probe" && cargo init -q --name fetch_libduckdb_sys \
    && cargo add -q "libduckdb-sys@=$version" --no-default-features && cargo fetch -q)
  rm -rf "$probe"
  tarball=$(find_tarball)
fi
[ -n "$tarball" ] || { echo "build-libduckdb: libduckdb-sys $version not found" >&2; exit 1; }

work="$cache/libduckdb-$version.build"
mkdir -p "$work"
tar xzf "$tarball" -C "$work"
# The extensions the `duckdb` crate links with its default `bundled` build plus json and
# parquet (Mosaic reads Parquet; SQLRooms' clients use JSON functions), as the 1.5.6 library.
python3 - "$work" <<'PY'
import json, sys, os
work = sys.argv[1]
manifest = json.load(open(os.path.join(work, "duckdb/manifest.json")))
files, includes = set(manifest["base"]["cpp_files"]), set(manifest["base"]["include_dirs"])
defines = ["-DNDEBUG", "-DDUCKDB_EXTENSION_AUTOINSTALL_DEFAULT=1", "-DDUCKDB_EXTENSION_AUTOLOAD_DEFAULT=1"]
for name in ("core_functions", "json", "parquet"):
    ext = manifest["extensions"][name]
    files |= set(ext["cpp_files"])
    includes |= set(ext["include_dirs"])
    defines.append(f"-DDUCKDB_EXTENSION_{name.upper()}_LINKED=1")
flags = " ".join(defines + ["-I" + os.path.join(work, "duckdb")] +
                 ["-I" + os.path.join(work, "duckdb", d) for d in sorted(includes)])
objects = []
rules = []
for i, src in enumerate(sorted(files)):
    obj = f"obj/{i}.o"
    objects.append(obj)
    rules.append(f"{obj}: {os.path.join(work, src)}\n\t@mkdir -p obj\n\t@echo '  CXX {src}'\n\t@$(CXX) $(CXXFLAGS) -c $< -o $@\n")
with open(os.path.join(work, "Makefile"), "w") as f:
    f.write("CXX ?= g++\n")
    f.write(f"CXXFLAGS = -O3 -fPIC -std=c++17 -w -pthread {flags}\n")
    f.write("libduckdb.so: " + " ".join(objects) + "\n")
    f.write("\t@echo '  LD libduckdb.so'\n\t@$(CXX) -shared -pthread -o $@ $^ -ldl\n")
    f.write("\n".join(rules))
PY
start=$(date +%s)
make -C "$work" -j"${JOBS:-$(nproc)}" libduckdb.so
mkdir -p "$out"
cp "$work/libduckdb.so" "$out/libduckdb.so.tmp"
mv "$out/libduckdb.so.tmp" "$out/libduckdb.so"
rm -rf "$work"
echo "build-libduckdb: built $out/libduckdb.so in $(( $(date +%s) - start ))s"
