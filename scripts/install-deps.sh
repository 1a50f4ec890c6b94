#!/bin/sh
# Installs the Debian 12 packages mms builds and tests with: only those
# missing, nothing downloaded from elsewhere. Idempotent; runs as root or
# through sudo.
set -eu

PACKAGES="build-essential cmake ccache pkg-config
libtorch-dev libnng-dev libcli11-dev libtomlplusplus-dev doctest-dev
libsqlite3-dev nlohmann-json3-dev libssl-dev libboost-dev libmicrohttpd-dev libxxhash-dev libre2-dev libzip-dev
python3-torch curl bash-completion man-db"

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done

if [ -z "$missing" ]; then
  echo "install-deps: all packages present"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-deps: need root (or sudo) to install:$missing" >&2
  exit 1
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
