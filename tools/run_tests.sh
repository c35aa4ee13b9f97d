#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine:
#   1. installs missing Debian packages,
#   2. builds Release (CUDA module where nvcc exists) and runs every test,
#      then checks the library as a user installs it (tools/check_install.sh:
#      install, find_package and pkg-config consumers, exported symbols,
#      Debian packages, a static build), then the Python package
#      (tools/run_python_tests.sh: pip install into a venv, a wheel, pytest),
#   3. builds the tests with ASan+UBSan (CPU only) and runs them again,
#      including the fuzz-corpus replays,
#   4. builds the multi-threaded suites with ThreadSanitizer and runs them
#      (tools/tsan.supp says what TSan cannot see and is therefore left out).
#   5. builds the library and the CLI with clang's -Wthread-safety as an error,
#      so every GUARDED_BY / EXCLUSIVE_LOCKS_REQUIRED contract is compiler-checked.
# Set EMBSTORE_SKIP_SANITIZERS=1 to run only step 2, EMBSTORE_SKIP_TSAN=1 to
# skip step 4, EMBSTORE_SKIP_THREAD_SAFETY=1 to skip step 5.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
jobs="${EMBSTORE_JOBS:-2}"
# Sanitizer builds: -O1 with line tables only (-g1) compile in half the time
# of -O2 -g and still give symbolized reports with file:line.
sanitizer_flags=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG"
                 -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG")

cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$jobs"
ctest --test-dir build/release --output-on-failure -j"$jobs"
bash tools/check_install.sh build/release
bash tools/run_python_tests.sh

if [ "${EMBSTORE_SKIP_SANITIZERS:-0}" != "1" ]; then
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${sanitizer_flags[@]}" \
        -DEMBSTORE_SANITIZE=address,undefined -DEMBSTORE_CUDA=OFF -DEMBSTORE_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan --output-on-failure -j"$jobs"
fi

if [ "${EMBSTORE_SKIP_SANITIZERS:-0}" != "1" ] && [ "${EMBSTORE_SKIP_TSAN:-0}" != "1" ]; then
  # The suites where threads share state: caller threads on one view (with
  # and without TBB inside), snapshots and replaces from several threads,
  # FM scoring, the GPU engine's host-side batch pipeline and cache, and the
  # processes of one store (the CLI and the reader program they drive are
  # TSan builds too). The CLI is built too: fm_test and multiprocess_test
  # drive it.
  tsan_tests=(engine_concurrency_test store_test multiprocess_test fm_test cuda_pool_math_test
              cuda_batch_prep_test cuda_cache_policy_test cuda_cache_policy_model_test
              page_prefetch_test)
  cmake -S . -B build/tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${sanitizer_flags[@]}" \
        -DEMBSTORE_SANITIZE=thread -DEMBSTORE_CUDA=OFF -DEMBSTORE_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/tsan -j"$jobs" --target embstore_cli "${tsan_tests[@]}"
  export TSAN_OPTIONS="halt_on_error=1 history_size=7 suppressions=$PWD/tools/tsan.supp"
  for t in "${tsan_tests[@]}"; do
    echo "== ThreadSanitizer: $t"
    # The huge-page test maps and touches a large buffer: minutes under TSan,
    # and single-threaded.
    "build/tsan/tests/$t" --gtest_brief=1 --gtest_filter='-StoreTest.HugePageAdviceFollowsTheOption'
  done
fi

if [ "${EMBSTORE_SKIP_THREAD_SAFETY:-0}" != "1" ]; then
  # No tests to run: the build is the check. -O0 keeps it quick; CUDA where
  # nvcc exists, so the GPU engine's host code is analysed too.
  echo "== clang -Wthread-safety build"
  # The analysis sees only annotated locks: library code locks embstore::Mutex
  # (util/mutex.h), never a bare std::mutex it could not check.
  if grep -rnE 'std::(mutex|shared_mutex|condition_variable|lock_guard|unique_lock|scoped_lock)\b' \
       --include='*.cc' --include='*.h' util codec checkpoint storage engine cuda serve tools |
       grep -v '^util/mutex.h:' | grep -vE '^[^:]*:[0-9]+: *//'; then
    echo "use embstore::Mutex / MutexLock / CondVar (util/mutex.h) so that clang checks the locking" >&2
    exit 1
  fi
  CC=clang CXX=clang++ cmake -S . -B build/thread-safety -G Ninja -DCMAKE_BUILD_TYPE=Debug \
        -DEMBSTORE_THREAD_SAFETY_ANALYSIS=ON -DEMBSTORE_BUILD_TESTS=OFF -DEMBSTORE_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build/thread-safety -j"$jobs" --target embstore embstore_cli
fi
