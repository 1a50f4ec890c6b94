#!/bin/bash
# Coverage-guided fuzzing (libFuzzer + AddressSanitizer + UndefinedBehavior-
# Sanitizer, clang) of the parsers of untrusted bytes: the IPC decoder, tensor
# files, LoRA adapters, mms.toml, unit strings and Triton config.pbtxt files (tests/fuzz/). Not part of the
# test suite: run it by hand after changing a parser.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default: 120 s each, every target)
#
# Builds from lib/'s sources into build-fuzz/ (nothing of the main build; no
# libtorch), seeds corpora from build/testdata (run scripts/build.sh first),
# runs one fuzzer process at a time, and exits 1 naming any crash, leak, UB or
# broken property, whose input is kept in build-fuzz/crashes/TARGET/.
# Needs Debian's clang and libclang-rt-14-dev (apt-get install clang libclang-rt-14-dev).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-120}
shift || true
targets=${*:-"codec tensor_file adapter config units pbtxt"}
out=$root/build-fuzz
testdata=${MMS_TESTDATA:-$root/build/testdata}
CXX=${CXX:-clang++-14}
command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
[ -d "$testdata/adapters" ] || { echo "fuzz: no $testdata (run scripts/build.sh first, or set MMS_TESTDATA)" >&2; exit 2; }
mkdir -p "$out/obj" "$out/gen/core"
sed -e 's/@PROJECT_VERSION@/0.0.0-fuzz/' -e 's/@MMS_WITH_CUDA_NUM@/0/' "$root/lib/core/version.h.in" > "$out/gen/core/version.h"
# toml++ header-only, so that its parser is instrumented too (the same source
# as Debian's library); -DNDEBUG as the release build, where its asserts are off.
FLAGS="-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
       -I$root/lib -I$root -I$out/gen -DTOML_HEADER_ONLY=1 -DNDEBUG"
obj() {  # the object of a lib/ source, rebuilt when the source is newer
  local o="$out/obj/$(echo "$1" | tr / _).o"
  if [ ! -f "$o" ] || [ "$root/$1" -nt "$o" ]; then
    echo "fuzz: CXX $1" >&2
    $CXX $FLAGS -fsanitize=fuzzer-no-link -c "$root/$1" -o "$o"
  fi
  echo "$o"
}
core=""
for f in lib/core/status.cpp lib/core/clock.cpp lib/core/log.cpp lib/core/paths.cpp lib/core/units.cpp \
         lib/core/hash.cpp lib/core/json.cpp lib/protocol/tensor.cpp lib/protocol/messages.cpp lib/protocol/codec.cpp \
         lib/protocol/input_spec.cpp; do
  core="$core $(obj "$f")"
done
libs="-lxxhash -lcrypto -lre2 -lpthread"
python3 "$root/tests/fuzz/gen_seeds.py" "$testdata" "$out/seeds" >/dev/null
failed=""
for t in $targets; do
  # tensor_file and config #include their .cpp (to reach functions in its anonymous namespace).
  case $t in
    codec) extra="$(obj lib/protocol/tensor_file.cpp)"; dict=codec ;;
    tensor_file) extra=""; dict=json ;;
    adapter) extra="$(obj lib/protocol/tensor_file.cpp) $(obj lib/lora/adapter.cpp)"; dict=json ;;
    config) extra="$(obj registry/names.cpp)"; dict=toml ;;
    units) extra=""; dict="" ;;
    pbtxt) extra="$(obj lib/protocol/tensor_file.cpp) $(obj lib/config/pbtxt.cpp) $(obj lib/config/triton_config.cpp)"; dict=pbtxt ;;
    *) echo "fuzz: unknown target $t (codec tensor_file adapter config units pbtxt)" >&2; exit 2 ;;
  esac
  echo "fuzz: LINK fuzz_$t" >&2
  # shellcheck disable=SC2086
  $CXX $FLAGS -fsanitize=fuzzer "$root/tests/fuzz/fuzz_$t.cpp" $core $extra $libs -o "$out/fuzz_$t"
  mkdir -p "$out/corpus/$t" "$out/crashes/$t"
  [ -d "$out/seeds/$t" ] && cp -n "$out/seeds/$t"/* "$out/corpus/$t/" 2>/dev/null || true
  echo "fuzz: running fuzz_$t for ${secs}s" >&2
  if ! FUZZ_TMP=${TMPDIR:-/tmp} FUZZ_ADAPTER_A1=$testdata/adapters/a1/adapter_model.safetensors \
      "$out/fuzz_$t" "$out/corpus/$t" ${dict:+-dict=$root/tests/fuzz/$dict.dict} -max_total_time="$secs" \
      -timeout=10 -rss_limit_mb=2560 -max_len=16384 -print_final_stats=1 -artifact_prefix="$out/crashes/$t/" \
      > "$out/fuzz_$t.log" 2>&1; then
    failed="$failed $t"
    echo "fuzz: fuzz_$t FAILED; see $out/fuzz_$t.log and $out/crashes/$t/" >&2
  else
    grep -E '^stat::number_of_executed_units' "$out/fuzz_$t.log" | sed "s/^/fuzz: $t /" >&2 || true
  fi
done
[ -z "$failed" ] || { echo "fuzz: failures in:$failed" >&2; exit 1; }
echo "fuzz: no findings in: $targets" >&2
