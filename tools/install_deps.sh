#!/usr/bin/env bash
# Installs the Debian packages embstore builds with, where they are missing.
# Safe to run repeatedly; needs root or sudo only when something is missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config dpkg-dev file
      libboost-dev libtbb-dev librocksdb-dev libcxxopts-dev
      libgtest-dev libgmock-dev libbenchmark-dev
      libxxhash-dev nlohmann-json3-dev libzip-dev zlib1g-dev
      clang
      python3-dev python3-venv python3-pip python3-setuptools python3-wheel python3-build
      pybind11-dev python3-numpy python3-pytest python3-hypothesis python3-torch
      protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf openssl
      libgrpc++-dev libprotobuf-dev etcd-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "embstore: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
