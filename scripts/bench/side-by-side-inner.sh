#!/usr/bin/env bash
# Runs inside a loopback-only network namespace; see side-by-side.sh.
set -u
export LD_LIBRARY_PATH=$HOME/.cache/duckwire/libduckdb-1.5.6
LOAD=$HOME/.cache/duckwire-target/release/examples/loadgen
DW=$HOME/.cache/duckwire-target/release/duckwire
FLIGHTS=${DATA:-/work/shared/data}/flights-200k.parquet
run_suite() {
  local url=$1 name=$2
  echo "== $name"
  $LOAD $url json 8 2000 16 "select 1 as x" | sed 's/^/json select 1 (8 conns x 2000, window 16): /'
  $LOAD $url arrow 8 2000 16 "select 1 as x" | sed 's/^/arrow select 1 (8 conns x 2000, window 16): /'
  $LOAD $url arrow 4 20 2 "select * from flights" | sed 's/^/arrow 231k-row table (4 conns x 20, window 2): /'
  $LOAD $url json 4 5 1 "select * from flights limit 50000" | sed 's/^/json 50k rows (4 conns x 5): /'
  $LOAD $url arrow 4 200 4 "select distance // 100 as bucket, count(*) c, avg(delay) d from flights group by 1" | sed 's/^/arrow group-by (4 conns x 200, window 4): /'
}
init="create table flights as select * from read_parquet('$FLIGHTS')"
# duckwire
$DW --port 4601 --threads 2 --log-level warn > /tmp/dw-bench.log 2>&1 &
DWP=$!
sleep 1
$LOAD ws://127.0.0.1:4601 exec 1 1 1 "$init" > /dev/null
run_suite ws://127.0.0.1:4601 duckwire
kill $DWP; wait $DWP 2>/dev/null
# Python sqlrooms-server
/tmp/pyref/bin/sqlrooms-server --port 4602 > /tmp/py-bench.log 2>&1 &
PYP=$!
for i in $(seq 1 50); do grep -q "listening" /tmp/py-bench.log && break; sleep 0.2; done
$LOAD ws://127.0.0.1:4602 exec 1 1 1 "$init" > /dev/null
run_suite ws://127.0.0.1:4602 sqlrooms-server
kill $PYP; wait $PYP 2>/dev/null
