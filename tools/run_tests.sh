#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine:
#   1. installs missing Debian packages,
#   2. builds Release (CUDA module where nvcc exists) and runs every test,
#   3. builds the tests with ASan+UBSan (CPU only) and runs them again,
#      including the fuzz-corpus replays.
# Set EMBSTORE_SKIP_SANITIZERS=1 to run only step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
jobs="${EMBSTORE_JOBS:-2}"

cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$jobs"
ctest --test-dir build/release --output-on-failure -j"$jobs"

if [ "${EMBSTORE_SKIP_SANITIZERS:-0}" != "1" ]; then
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DEMBSTORE_SANITIZE=address,undefined -DEMBSTORE_CUDA=OFF -DEMBSTORE_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan --output-on-failure -j"$jobs" -LE slow
fi
