#!/bin/sh
# The main job on built-in defaults: installs what is missing, builds, starts
# mmsd on a temporary socket and data dir, and shows what it serves.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >/dev/null
bin=${MMS_BUILD_DIR:-$root/build}/bin
work=$(mktemp -d /tmp/mms-demo.XXXXXX)
mms() { "$bin/mms" --socket "$work/mms.sock" --data-dir "$work/data" "$@"; }
cleanup() {
  if [ -f "$work/pid" ]; then kill "$(cat "$work/pid")" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== mms serve --detach"
mms --json serve --detach | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' > "$work/pid"
echo "mmsd running, pid $(cat "$work/pid")"
echo
echo "== mms status"
mms status
echo
echo "== mms ping --count 100"
mms ping --count 100
