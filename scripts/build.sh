#!/bin/sh
# Configures (once) and builds mms into build/ with ccache.
#   scripts/build.sh [extra cmake args...]
# Set MMS_BUILD_DIR to build elsewhere; CMAKE_PREFIX_PATH to use another
# libtorch (a CUDA build turns the GPU code on).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MMS_BUILD_DIR:-$root/build}
jobs=${MMS_JOBS:-$(nproc)}
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
fi
cmake --build "$build" -j "$jobs"
