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
  libnats-dev nats-server libzmq3-dev libmsgpack-cxx-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
