#!/bin/bash
# The main job, on built-in defaults, in a temporary directory: installs what
# is missing, builds, then
#   1. generates 50 customers' fine-tuned recommendation models and registers them,
#   2. starts mmsd with a device budget that holds 12 of them, two pinned,
#   3. replays skewed traffic (the top 12 customers take ~80%) with live figures,
#   4. runs an A/B experiment with a simulated click-through, then reports it,
#   5. rolls a new version out as a canary to promotion,
#   6. serves LoRA adapters on shared bases (two mixed in one batch),
#   7. prints mms stats,
#   8. backs the data dir up while mmsd serves, and verifies the copy.
# Set MMS_DEMO_KEEP=1 to keep the directory (and the daemon) afterwards.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh" >/dev/null
echo "== building (scripts/build.sh)"
"$root/scripts/build.sh" >/dev/null
bin=${MMS_BUILD_DIR:-$root/build}/bin
work=$(mktemp -d /tmp/mms-demo.XXXXXX)
export MMS_ACTOR=demo
mms() { "$bin/mms" --socket "$work/mms.sock" --data-dir "$work/data" "$@"; }
cleanup() {
  if [ -z "${MMS_DEMO_KEEP:-}" ]; then
    if [ -f "$work/pid" ]; then
      pid=$(cat "$work/pid")
      kill "$pid" 2>/dev/null || true
      # A clean stop still writes (figures, feedback ids): wait for it, or rm races it.
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$work"
  else
    echo "kept $work (mmsd pid $(cat "$work/pid" 2>/dev/null))"
  fi
}
trap cleanup EXIT INT TERM
start=$SECONDS

echo "== 1. 50 customer models (~512 KiB each), generated and registered"
"$bin/mms-gen-testdata" "$work" --customers 50 --size-kb 512 --prefix customer
for i in $(seq -w 0 49); do
  half=$(( 10#$i % 2 ))
  mkdir -p "$work/repo$half/c$i/1"
  mv "$work/customer-$i.pt" "$work/repo$half/c$i/1/model.pt"
done
mms -q model list >/dev/null  # create the registry before two importers race to
mms -q model import "$work/repo0" >/dev/null & mms -q model import "$work/repo1" >/dev/null; wait
mms model list | head -4; echo "   ... ($(mms --json model list | grep -c '"ref"') versions)"
bytes=$(mms --json model show c00 | sed -n 's/.*"device_bytes": \([0-9]*\).*/\1/p')
budget=$(( (bytes + 1024) * 12 + bytes / 2 ))
cat > "$work/mms.toml" <<EOF
[pool]
devices = ["cpu"]
device_budget = $budget
pinned = ["c00", "c01"]
[experiments]
flush_interval = "1s"
EOF

echo
echo "== 2. mmsd, device budget $budget bytes (12 models), c00 and c01 pinned"
mms --config "$work/mms.toml" --json serve --detach | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' > "$work/pid"
mms status | head -5

echo
echo "== 3. skewed traffic over 50 customers (Zipf 1.26: the top 12 take ~80%)"
"$bin/mms-traffic" --socket "$work/mms.sock" --input "$work/customer_input.json" --models c --count 50 --requests 6000
mms pool | head -3

echo
echo "== 4. A/B experiment on c00: version 2 for 50% of users, clicks measured"
cp "$work/repo1/c01/1/model.pt" "$work/c00-v2.pt"
mms -q model register c00 --version 2 --path "$work/c00-v2.pt" --description "retrained on November data" \
  --sample-input "$work/customer_input.json"
mms -q model stage c00:1 production
mms -q experiment create exp-c00-v2 --model c00 --control 1 --treatment 2 --percent 50 --metric click
"$bin/mms-traffic" --socket "$work/mms.sock" --input "$work/customer_input.json" --models c00 --requests 3000 \
  --users 2000 --feedback click --control-rate 0.10 --treatment-rate 0.13
mms stats exp-c00-v2
mms -q experiment stop exp-c00-v2 --winner treatment
echo "   winner promoted: c00 now serves $(mms --json model show c00 | sed -n 's/.*"ref": "\([^"]*\)".*/\1/p')"

echo
echo "== 5. canary of c00 version 3: 10% → 50% → 100%, judged against production"
cp "$work/repo0/c02/1/model.pt" "$work/c00-v3.pt"
mms -q model register c00 --version 3 --path "$work/c00-v3.pt" --sample-input "$work/customer_input.json"
"$bin/mms-traffic" --socket "$work/mms.sock" --input "$work/customer_input.json" --models c00 --seconds 25 \
  --users 5000 --quiet & traffic=$!
mms canary start c00 --candidate 3 --stages 10,50,100 --stage-duration 2s --check-interval 250ms \
  --min-requests 200 --max-p99-ratio 10 --wait --timeout 60s && result=promoted || result="ended with exit $?"
kill $traffic 2>/dev/null || true; wait $traffic 2>/dev/null || true
echo "   canary $result; c00 now serves $(mms --json model show c00 | sed -n 's/.*"ref": "\([^"]*\)".*/\1/p')"

echo
echo "== 6. LoRA: customers' adapters on shared bases (mixed in one batch on a base taking stacked weights)"
td=${MMS_BUILD_DIR:-$root/build}/testdata
mms -q model register assistant --version 1 --path "$td/lora_multi.pt" --sample-input "$td/lora_input.json" \
  --max-batch-size 32 --max-queue-delay-us 2000
mms -q model register assistant-plain --version 1 --path "$td/lora_base.pt" --sample-input "$td/lora_input.json"
for a in a1 a2; do mms adapter register "tenant-$a" --base assistant --path "$td/adapters/$a"; done
mms adapter register tenant-a3 --base assistant-plain --path "$td/adapters/a3"
mms adapter list
for a in a1 a2 a3; do
  printf '   tenant-%s: ' "$a"
  mms --json predict "tenant-$a" --input "$td/lora_input.json" |
    tr -d ' \n' | sed -n 's/.*"data":\[\([^],]*\),\([^],]*\).*/output[0][0:2] = \1, \2/p'
  echo
done

echo
echo "== 7. mms stats"
mms stats | tail -n +1 | sed -n '/serving since/,$p' | head -20
mms model history c00 | tail -8

echo
echo "== 8. an online backup of the whole data dir, checked, as a data dir of its own"
mms backup "$work/backup"
"$bin/mms" --data-dir "$work/backup" --socket "$work/backup/none.sock" model verify | tail -1
echo
echo "demo finished in $(( SECONDS - start )) s"
