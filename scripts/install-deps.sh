#!/usr/bin/env bash
# Installs what kvtier needs to build, test and benchmark on Debian 12
# (with --fuzz, also what make fuzz needs).
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
  nlohmann-json3-dev chromium prometheus python3-yaml
  libnats-dev nats-server libzmq3-dev libmsgpack-cxx-dev
  libcurl4-openssl-dev libssl-dev curl
  iproute2
)
# make fuzz: clang and its libFuzzer runtime.
if [ "${1:-}" = "--fuzz" ]; then packages+=(clang libclang-rt-14-dev); fi
# Node.js and npm (the status page's uPlot bundle, the browser test's driver):
# Debian's packages unless a node with npm is installed already.
if ! command -v npm >/dev/null 2>&1; then packages+=(nodejs npm); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm packages pinned in package.json / package-lock.json, into the project's
# node_modules: uPlot (the build embeds node_modules/uplot/dist), playwright-core
# (the browser test) and azurite (the Blob tests and benchmark). Skipped when
# node_modules already matches the lock file.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! cmp -s "$root/package-lock.json" "$root/node_modules/.package-lock.json.installed"; then
  echo "install-deps: npm ci in $root"
  (cd "$root" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$root/package-lock.json" "$root/node_modules/.package-lock.json.installed"
else
  echo "install-deps: node_modules matches package-lock.json"
fi
