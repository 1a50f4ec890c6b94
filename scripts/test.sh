#!/bin/sh
# The whole test suite on a fresh Debian 12 machine: installs what is
# missing, builds, runs every test not labelled bench (gpu tests skip
# themselves without a GPU).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
build=${MMS_BUILD_DIR:-$root/build}
cd "$build"
ctest --output-on-failure -j "$(nproc)" -LE bench --timeout 600 "$@"
