#!/bin/bash
# The GPU machine's whole check in one run (device time is scarce: ~15 min a
# session, the machine's start included). Here first, in the project root:
#   scripts/gpu-check.sh --prepare
# then one device call, carry [".gpu-deps"], timeout_s 570:
#   bash scripts/gpu-check.sh
# On the GPU machine it unpacks the carried Debian packages, configures
# against the machine's CUDA libtorch (C++20 for Torch >= 2.11; warnings not
# errors, so a newer compiler's warning cannot cost the run), builds only
# what the checks need, then, each step bounded and logged to $OUT:
#   1. the tests labelled gpu (tests/gpu: the pool on cuda:0, load/evict
#      cycles, mmsd serving from cuda:0 through evictions and a restart);
#   2. gpu_bench: promotion vs raw pinned cudaMemcpy, 1,000 load/evict
#      cycles, a pinned model's p99 while others swap;
#   3. unless GPU_ONLY=1, if time is left, the request-overhead and batching
#      benchmarks on the machine's 16 cores (devices = ["cpu"], as here), the
#      batching one with the work-conserving batcher and then without it.
# A failing gpu_bench is rerun small under cuda-gdb for a backtrace.
# Record the figures in docs/benchmarks.md. What the first runs found (and
# the device time they took) is in docs/benchmarks.md, "GPU".
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${1:-}" = "--prepare" ]; then  # here, not on the GPU machine
  ../shared/gpu/prepare.sh libssl-dev libssl3 libboost1.74-dev libmicrohttpd-dev libmicrohttpd12 \
    libxxhash-dev libxxhash0 libre2-dev libre2-9 libzip-dev libzip4
  # libmicrohttpd needs libgnutls.so.30; used there only if the image lacks it.
  mkdir -p .gpu-deps/fallback
  (cd .gpu-deps/fallback && apt-get download libgnutls30 libgmp10 libhogweed6 libidn2-0 libnettle8 \
    libp11-kit0 libtasn1-6 libunistring2 libffi8 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  du -sh .gpu-deps
  exit 0
fi

OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -d .gpu-deps/debs ] || { echo "run scripts/gpu-check.sh --prepare here first (carry .gpu-deps)"; exit 2; }
SECONDS=0
deps=/tmp/deps
mkdir -p $deps && for f in .gpu-deps/debs/*.deb; do dpkg -x "$f" $deps; done
export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
if ! ldconfig -p | grep -q 'libgnutls.so.30 '; then
  echo "no libgnutls.so.30 on this machine: using Debian's (.gpu-deps/fallback)"
  mkdir -p /tmp/fallback && for f in .gpu-deps/fallback/*.deb; do dpkg -x "$f" /tmp/fallback; done
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/tmp/fallback/usr/lib/x86_64-linux-gnu
fi
{
  uname -a; nproc; free -g | head -2
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  g++ --version | head -1; cmake --version | head -1
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
B=/tmp/build-gpu
# The image's g++ first in PATH (/opt/gcc/bin/g++) links libstdc++
# statically, while libtorch uses the system's shared one: two copies in one
# process abort ("free(): invalid pointer" in std::locale, inside
# TorchScript's compiler; seen 2026-11-30). Build with the system's g++
# (/usr/bin/g++, the same 13.3), which links the shared one. Without it,
# link the shared libstdc++ by hand; that build ran everything, but its
# programs crashed at their end (a call through a null pointer, in the
# gpu_bench's and a test's clean-up: a TempDir's std::filesystem::remove_all,
# as far as could be told).
if [ -x /usr/bin/g++ ]; then
  cxx=(-DCMAKE_CXX_COMPILER=/usr/bin/g++)
  ldflags=""
else
  cxx=(-DCMAKE_CXX_STANDARD_LIBRARIES="/lib/x86_64-linux-gnu/libstdc++.so.6 -lm")
  ldflags="-nostdlib++ "
fi
cmake -S . -B $B "${cxx[@]}" -DCMAKE_BUILD_TYPE=Release -DMMS_WERROR=OFF \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE;$deps/usr" \
  -DSQLite3_INCLUDE_DIR=$deps/usr/include -DSQLite3_LIBRARY=$deps/usr/lib/x86_64-linux-gnu/libsqlite3.so \
  -DCMAKE_CXX_FLAGS="-idirafter $deps/usr/include/x86_64-linux-gnu" \
  -DCMAKE_EXE_LINKER_FLAGS="$ldflags-Wl,--allow-shlib-undefined -Wl,-rpath-link,$deps/usr/lib/x86_64-linux-gnu" \
  -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1 \
  || { echo "configure failed at ${SECONDS}s"; tail -40 "$OUT/configure.log"; exit 1; }
grep 'mms:' "$OUT/configure.log"
targets="mms mmsd mms-gen-testdata testdata gpu_tests gpu_bench overhead_bench sched_bench"
cmake --build $B -j"$(nproc)" --target $targets > "$OUT/build.log" 2>&1 \
  || { echo "build failed at ${SECONDS}s"; grep -m12 -B2 -A10 'error' "$OUT/build.log"; exit 1; }
echo "configure+build: ${SECONDS}s; $(grep -c 'warning:' "$OUT/build.log") warnings (build.log)"
ldd $B/bin/mmsd | grep 'not found'
readelf -d $B/bin/mms-gen-testdata | grep -q 'libstdc++' || echo "WARNING: libstdc++ linked statically: expect aborts"

deadline=${GPU_CHECK_SECONDS:-545}  # the whole run ends by then (the device call's timeout_s is 570)
step() {  # step NAME SECONDS COMMAND...: bounded (also by the deadline), logged, never fatal
  local name=$1 limit=$2
  shift 2
  [ $((deadline - SECONDS)) -lt "$limit" ] && limit=$((deadline - SECONDS))
  [ "$limit" -lt 10 ] && { echo "== $name skipped: no time left"; return; }
  echo "== $name (at ${SECONDS}s, at most ${limit}s)"
  timeout -k 5 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  last_rc=$?
  echo "   exit $last_rc after ${SECONDS}s"
  tail -30 "$OUT/$name.txt"
}
step gpu_tests 120 $B/bin/gpu_tests --duration=true
tests=$(tail -3 "$OUT/gpu_tests.txt" | grep -q 'Status: SUCCESS' && echo 0 || echo 1)
step gpu_bench 200 $B/bin/gpu_bench --mb 850 --cycles 1000
if [ "${last_rc:-0}" -ne 0 ]; then  # a backtrace, on a smaller run
  step gpu_bench_gdb 90 cuda-gdb -batch -ex run -ex bt --args $B/bin/gpu_bench --mb 100 --cycles 60
fi
cpu='[pool]
devices = ["cpu"]'
[ -n "${GPU_ONLY:-}" ] && { echo "done in ${SECONDS}s; gpu tests exit $tests"; exit "$tests"; }
[ $SECONDS -lt 400 ] && step overhead 45 $B/bin/overhead_bench 3000 "$cpu"
[ $SECONDS -lt 450 ] && step sched_batching 45 env SCHED_CONFIG="$cpu" $B/bin/sched_bench batching --seconds 5
# The batcher before stop 28 (waiting out its delay with a worker idle), for
# the A/B on many cores: stop 27 measured 2.84x with it here.
[ $SECONDS -lt 490 ] && step sched_batching_waiting 40 env SCHED_CONFIG="$cpu
[scheduler]
batch_when_idle = false" $B/bin/sched_bench batching --seconds 5
echo "done in ${SECONDS}s; gpu tests exit $tests"
exit "$tests"
