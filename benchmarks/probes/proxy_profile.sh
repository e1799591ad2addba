#!/usr/bin/env bash
# Where a proxy's CPU goes under proxy_compare.py's bulk load (4 connections x 4 x 1 MiB
# echoed through it; LOAD="100 64 9 1 1" for its echo-64): utime/stime over 3 s, perf
# (kernel and native frames) over the same 3 s, then py-spy (Python frames) for 3 s more.
# The proxy on core 0, the C backend and load generator on core 1, as in the benchmark.
# Run it under the bench lock:
#
#   flock /work/notes/bench.lock benchmarks/probes/proxy_profile.sh OUTDIR NAME -- ARGV...
#
# ARGV is the proxy's command line; PORT and UPSTREAM in it are replaced by the port to
# listen on and the backend's HOST:PORT, e.g.
#   ... OUT millpond -- python examples/proxy.py --port PORT --upstream UPSTREAM
# Needs benchmarks/build/{echo_ref,loadgen} (proxy_compare.py builds them), perf, py-spy.
set -u
OUT=$1; NAME=$2; shift 3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$ROOT/benchmarks/build
mkdir -p "$OUT"
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
BPORT=$(free_port); PPORT=$(free_port)
taskset -c 1 "$BUILD/echo_ref" --host 127.0.0.1 --port "$BPORT" > /dev/null 2>&1 & BACKEND=$!
ARGV=("${@//PORT/$PPORT}"); ARGV=("${ARGV[@]//UPSTREAM/127.0.0.1:$BPORT}")
PYTHONPATH=$ROOT/src taskset -c 0 "${ARGV[@]}" > "$OUT/$NAME.proxy.log" 2>&1 & PROXY=$!
sleep 1.5
# shellcheck disable=SC2086  # LOAD is the load generator's CONNS SIZE DURATION WARMUP INFLIGHT
taskset -c 1 "$BUILD/loadgen" echo 127.0.0.1 "$PPORT" ${LOAD:-4 1048576 9 1 4} > "$OUT/$NAME.loadgen.json" 2>&1 & LOADGEN=$!
sleep 2
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$PROXY/stat")
perf record -F 499 -g -p "$PROXY" -o "$OUT/$NAME.perf.data" -- sleep 3 > /dev/null 2>&1
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$PROXY/stat")
echo "$NAME: utime $((u1 - u0)) stime $((s1 - s0)) clock ticks in perf's 3 s" > "$OUT/$NAME.cpu.txt"
py-spy record -d 3 -r 199 -p "$PROXY" -f raw -o "$OUT/$NAME.pyspy.txt" > /dev/null 2>&1 || true
wait "$LOADGEN"
kill "$PROXY" "$BACKEND"; wait "$PROXY" "$BACKEND" 2> /dev/null
perf report -i "$OUT/$NAME.perf.data" --no-children --sort dso --stdio -g none 2> /dev/null \
    | grep '%' > "$OUT/$NAME.perf-dso.txt"
cat "$OUT/$NAME.cpu.txt" "$OUT/$NAME.perf-dso.txt"
