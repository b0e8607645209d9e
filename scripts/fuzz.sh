#!/usr/bin/env bash
# Fuzzes the core: each target for SECONDS (default 60), seeded from fuzz/seeds, growing
# fuzz/corpus/<target>. Prints libFuzzer's final stats line per target.
#   scripts/fuzz.sh 1800 state_machine crdt decode upload
set -uo pipefail
cd "$(dirname "$0")/.."
# The `upload` target links the driver's upload decoder, hence libduckdb (never called); the
# fuzz crate keeps its own target dir (nightly, sanitizer flags).
. scripts/dev-env.sh >/dev/null
unset CARGO_TARGET_DIR
cd fuzz
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode state_machine crdt ordered upload websocket)
status=0
# New inputs go to corpus/<target>, or under $DUCKWIRE_FUZZ_OUT (CI: a scratch dir, so a
# smoke run leaves the committed corpus alone).
out_root=${DUCKWIRE_FUZZ_OUT:-corpus}
for target in "${targets[@]}"; do
  mkdir -p "$out_root/$target" "corpus/$target"
  log="/tmp/duckwire-fuzz-$target.log"
  inputs=("$out_root/$target")
  [ "$out_root" != corpus ] && inputs+=("corpus/$target")
  cargo +nightly fuzz run -O -s none "$target" "${inputs[@]}" "seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  echo "== $target ($seconds s): $(grep -E '^Done|stat::number_of_executed_units' "$log" | tr '\n' ' ')"
  grep -E 'cov: [0-9]+' "$log" | tail -n 1
  grep -E 'panicked|SUMMARY|Test unit written' "$log" | head -n 5
done
exit $status
