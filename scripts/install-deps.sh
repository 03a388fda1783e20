#!/usr/bin/env bash
# Installs what kvtier needs to build, test and benchmark on Debian 12.
# Idempotent: packages already present are not touched, and apt is only
# called when something is missing. Run as root (or with sudo available).
set -euo pipefail

packages=(
  build-essential cmake pkg-config git
  libabsl-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libucx-dev ucx-utils
  liburing-dev
  libxxhash-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  fio
  python3-matplotlib
  libyaml-cpp-dev prometheus-cpp-dev libhiredis-dev redis-server redis-tools openssl
  python3-dev pybind11-dev python3-pybind11 python3-pytest python3-numpy python3-torch
  libcurl4-openssl-dev libssl-dev curl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Node tools of the tests (package.json pins them; installed into
# <repo>/node_modules): the Azure Blob emulator, azurite-blob.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v npm >/dev/null 2>&1; then
  echo "install-deps: installing nodejs and npm"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
if [ -x "$repo/node_modules/.bin/azurite-blob" ] &&
   grep -q '"version": "3.37.0"' "$repo/node_modules/azurite/package.json" 2>/dev/null; then
  echo "install-deps: azurite present in $repo/node_modules"
else
  echo "install-deps: npm ci (azurite) into $repo/node_modules"
  (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error)
fi
