#!/bin/bash
# The GPU machine's whole check in one run (device time is scarce: ~15 min a
# session). Prepare here first, in the project root:
#   ../shared/gpu/prepare.sh libssl-dev libssl3 libboost1.74-dev libmicrohttpd-dev libmicrohttpd12 libxxhash-dev libxxhash0
# then one device call, carry [".gpu-deps"], timeout ~580 s:
#   bash scripts/gpu-check.sh
# It builds against the machine's CUDA libtorch (../shared/gpu/device-build.sh),
# runs the tests labelled gpu, then the GPU benchmark and, on the machine's
# 16 cores, the tail-latency benchmarks this project's 2-vCPU VM cannot
# settle. Every log lands in $OUT; record the figures in docs/benchmarks.md.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f .gpu-deps/device-build.sh ] || { echo "run ../shared/gpu/prepare.sh here first (carry .gpu-deps)"; exit 2; }
SECONDS=0
bash .gpu-deps/device-build.sh -L gpu
tests=$?
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
bin=/tmp/build-gpu/bin
step() {  # step NAME SECONDS COMMAND...: bounded, logged, never fatal
  local name=$1 limit=$2
  shift 2
  echo "== $name (at ${SECONDS}s)"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $?"
  tail -25 "$OUT/$name.txt"
}
[ -x "$bin/gpu_bench" ] && step gpu_bench 240 "$bin/gpu_bench" --mb 850 --cycles 1000
step sched_batching 60 "$bin/sched_bench" batching --seconds 5
step overhead 60 "$bin/overhead_bench" 3000
step shadow 120 "$bin/shadow_bench"
nproc > "$OUT/machine.txt"
nvidia-smi >> "$OUT/machine.txt" 2>&1
echo "done in ${SECONDS}s; gpu tests exit $tests"
exit "$tests"
