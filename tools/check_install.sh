#!/usr/bin/env bash
# embstore as a user installs and consumes it, from a built tree:
#   tools/check_install.sh [BUILD_DIR]      (default build/release, built)
#
#  1. `cmake --install` into a temporary prefix, out of tree;
#  2. the installed headers: each compiles on its own, and none includes
#     anything of TBB, RocksDB, Boost, nlohmann_json or CUDA;
#  3. `nm -D`: libembstore.so exports only embstore:: symbols;
#  4. examples/consumer built by find_package and again by pkg-config, each
#     run against a store the installed CLI writes while the CLI, another
#     process, publishes two new versions that the consumer follows;
#  5. rival_dependency: a program carrying its own copy of nlohmann_json and
#     TBB works beside libembstore;
#  6. `cpack -G DEB`: the runtime, -dev and tools packages with their Debian
#     dependencies, unpacked (dpkg -x) into a temporary root, and the
#     consumer built against that root both ways and run with its CLI;
#  7. a static libembstore (BUILD_SHARED_LIBS=OFF, its own build directory):
#     installed, the consumer built by find_package and run.
# Set EMBSTORE_SKIP_STATIC=1 to skip step 7 (it builds the library again).
# Every step is bounded; every temporary file is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
build=$(realpath "${1:-build/release}")
jobs="${EMBSTORE_JOBS:-2}"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "check_install: FAIL: $*" >&2; exit 1; }
step() { echo "== check_install: $*"; }

step "1. cmake --install $build --prefix <tmp>"
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libembstore.so' -print -quit)")
[ -f "$libdir/libembstore.so" ] || fail "no libembstore.so installed"
for f in include/embstore/engine.h include/embstore/gpu_engine.h include/embstore/version.h \
         bin/embstore; do
  [ -e "$prefix/$f" ] || fail "$f was not installed"
done
for f in cmake/embstore/embstoreConfig.cmake cmake/embstore/embstoreConfigVersion.cmake \
         pkgconfig/embstore.pc; do
  [ -e "$libdir/$f" ] || fail "$libdir/$f was not installed"
done
soname=$(readelf -d "$libdir/libembstore.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[[ "$soname" =~ ^libembstore\.so\.[0-9]+$ ]] || fail "soname '$soname' is not libembstore.so.MAJOR"
major=${soname##*.}
echo "   installed: $(cd "$prefix" && find . -type f | wc -l) files; soname $soname"

step "2. public headers: self-contained, nothing of the dependencies"
headers=("$prefix"/include/embstore/*.h)
[ "${#headers[@]}" -ge 10 ] || fail "only ${#headers[@]} public headers"
for h in "${headers[@]}"; do
  name=embstore/$(basename "$h")
  echo "#include <$name>" | g++ -std=c++20 -fsyntax-only -Wall -x c++ -I"$prefix/include" - ||
    fail "$name does not compile on its own"
  deps=$(echo "#include <$name>" | g++ -std=c++20 -M -MF /dev/stdout -x c++ -I"$prefix/include" -)
  ndeps=$(tr ' ' '\n' <<<"$deps" | grep -c '\.h' || true)
  [ "$ndeps" -ge 1 ] || fail "no dependency list for $name"
  if tr ' ' '\n' <<<"$deps" | grep -E '(tbb|rocksdb|boost|nlohmann|cuda|xxhash|zip\.h)'; then
    fail "$name includes a dependency's header (above)"
  fi
done
echo "   ${#headers[@]} headers compile alone, including only the standard library and embstore"

step "3. nm -D: only embstore:: symbols"
bash "$src/tests/library/check_symbols.sh" "$libdir/libembstore.so"

# run_scenario LABEL CLI CONSUMER MAKE_NPY: a store written by CLI, served by
# CONSUMER while CLI publishes versions 2 and 3 from another process.
run_scenario() {
  local label=$1 cli=$2 consumer=$3 mk=$4
  local d; d=$(mktemp -d -p "$work")
  for v in 1 2 3; do "$mk" "$d/v$v.npy" 512 16 "$v"; done
  "$cli" init --db "$d/db" >/dev/null
  "$cli" import --db "$d/db" --table items --from "$d/v1.npy" >/dev/null
  "$consumer" --db "$d/db" --table items --threads 4 --until-version 3 --seconds 60 \
              --check-pattern >"$d/out" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local i=0
  until grep -q 'serving items version 1' "$d/out"; do
    i=$((i + 1)); [ $i -le 200 ] || { cat "$d/out"; fail "$label: the consumer did not start"; }
    kill -0 "$pid" 2>/dev/null || { cat "$d/out"; fail "$label: the consumer exited early"; }
    sleep 0.05
  done
  for v in 2 3; do
    sleep 0.3
    "$cli" import --db "$d/db" --table items --from "$d/v$v.npy" --replace >/dev/null
  done
  local rc=0
  wait "$pid" || rc=$?
  pids=("${pids[@]/$pid}")
  cat "$d/out" | sed 's/^/   /'
  [ "$rc" -eq 0 ] || fail "$label: the consumer exited with $rc"
  grep -q 'now serving version 3' "$d/out" || fail "$label: version 3 was not followed"
  grep -q ' 0 wrong, 0 errors' "$d/out" || fail "$label: wrong results"
  echo "   $label: ok"
}

# build_consumer PREFIX OUTDIR [PKG_CONFIG_SYSROOT]: the example by CMake's
# find_package in OUTDIR/cmake, and by pkg-config in OUTDIR/pc.
build_consumer() {
  local pfx=$1 out=$2
  cmake -S "$src/examples/consumer" -B "$out/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$pfx" >/dev/null
  cmake --build "$out/cmake" -j"$jobs" >/dev/null
  local pcdir; pcdir=$(dirname "$(find "$pfx" -name embstore.pc -print -quit)")
  mkdir -p "$out/pc"
  # shellcheck disable=SC2046
  g++ -std=c++20 -O2 "$src/examples/consumer/consumer.cc" \
      $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs embstore) -pthread -o "$out/pc/consumer"
}

step "4. examples/consumer against the prefix: find_package, then pkg-config"
build_consumer "$prefix" "$work/consumer"
run_scenario "find_package build" "$prefix/bin/embstore" "$work/consumer/cmake/consumer" \
             "$work/consumer/cmake/make_npy"
LD_LIBRARY_PATH="$libdir" run_scenario "pkg-config build" "$prefix/bin/embstore" \
             "$work/consumer/pc/consumer" "$work/consumer/cmake/make_npy"

step "5. a program with its own copy of embstore's dependencies"
pcdir=$libdir/pkgconfig
# shellcheck disable=SC2046
g++ -std=c++20 -O1 -rdynamic "$src/tests/library/rival_dependency.cc" \
    $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs embstore) -ltbb -pthread \
    -o "$work/rival_dependency"
LD_LIBRARY_PATH="$libdir" "$work/rival_dependency" "$work/rival-store"
# Negative control: the same objects linked without the version script
# (tests/CMakeLists.txt: embstore_unversioned) export the dependencies'
# instantiations too, and there the rival's json::dump must break the store.
unversioned=$build/tests/unversioned/libembstore.so.$major
[ -f "$unversioned" ] || fail "no $unversioned (it is built with the tests)"
if LD_LIBRARY_PATH="$(dirname "$unversioned")" "$work/rival_dependency" "$work/rival-store-2" \
     >"$work/rival-2.out" 2>&1; then
  fail "rival_dependency passed against a library exporting everything: it would check nothing"
fi
echo "   negative control: against the same objects exporting everything it fails: $(tail -n 1 "$work/rival-2.out")"

step "6. cpack -G DEB, dpkg -x, and the consumer against the unpacked root"
(cd "$build" && cpack -G DEB -B "$work/debs" >/dev/null)
debs=("$work"/debs/*.deb)
[ "${#debs[@]}" -eq 3 ] || fail "expected 3 packages, got ${#debs[@]}: ${debs[*]}"
for p in "libembstore$major" libembstore-dev embstore-tools; do
  f=$(ls "$work"/debs/"${p}"_*.deb 2>/dev/null || true)
  [ -n "$f" ] || fail "no package $p"
  echo "   $(basename "$f"): Depends: $(dpkg-deb -f "$f" Depends)"
done
dep() { dpkg-deb -f "$(ls "$work"/debs/"$1"_*.deb)" Depends; }
# (Each output is read whole before grep looks at it: `cmd | grep -q` would
# end the pipe early and fail the pipeline with SIGPIPE under pipefail.)
runtime_deps=$(dep "libembstore$major")
for d in librocksdb libtbb libzip libxxhash libstdc++6; do
  grep -q "$d" <<<"$runtime_deps" || fail "libembstore$major does not depend on $d"
done
grep -q "libembstore$major (= " <<<"$(dep libembstore-dev)" || fail "libembstore-dev: no runtime dependency"
grep -q "libembstore$major (= " <<<"$(dep embstore-tools)" || fail "embstore-tools: no runtime dependency"
dev_files=$(dpkg-deb -c "$(ls "$work"/debs/libembstore-dev_*.deb)")
grep -q 'include/embstore/engine.h' <<<"$dev_files" || fail "libembstore-dev lacks the headers"
root=$work/root
for f in "${debs[@]}"; do dpkg -x "$f" "$root"; done
rootlib=$(dirname "$(find "$root" -name 'libembstore.so.*' -type f -print -quit)")
build_consumer "$root/usr" "$work/consumer-deb"
LD_LIBRARY_PATH="$rootlib" run_scenario "packages, find_package build" "$root/usr/bin/embstore" \
             "$work/consumer-deb/cmake/consumer" "$work/consumer-deb/cmake/make_npy"
LD_LIBRARY_PATH="$rootlib" run_scenario "packages, pkg-config build" "$root/usr/bin/embstore" \
             "$work/consumer-deb/pc/consumer" "$work/consumer-deb/cmake/make_npy"

if [ "${EMBSTORE_SKIP_STATIC:-0}" != "1" ]; then
  step "7. a static libembstore (BUILD_SHARED_LIBS=OFF)"
  # The directory and configuration setup.py builds the Python extension in
  # (a static libembstore, no CUDA, no tests), so the two share one build.
  sbuild=${EMBSTORE_STATIC_BUILD_DIR:-$src/build/python}
  gen=(-G Ninja)
  [ -f "$sbuild/CMakeCache.txt" ] && gen=()
  cmake -S "$src" -B "$sbuild" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DEMBSTORE_CUDA=OFF -DEMBSTORE_BUILD_TESTS=OFF -DEMBSTORE_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build "$sbuild" -j"$jobs" --target embstore embstore_cli
  sprefix=$work/static-prefix
  cmake --install "$sbuild" --prefix "$sprefix" >/dev/null
  [ -n "$(find "$sprefix" -name libembstore.a)" ] || fail "no libembstore.a installed"
  [ -z "$(find "$sprefix" -name 'libembstore.so*')" ] || fail "a static build installed a .so"
  grep -q libembstore <<<"$(ldd "$sprefix/bin/embstore")" && fail "the static CLI loads libembstore.so"
  cmake -S "$src/examples/consumer" -B "$work/consumer-static" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="$sprefix" >/dev/null
  cmake --build "$work/consumer-static" -j"$jobs" >/dev/null
  run_scenario "static library, find_package build" "$sprefix/bin/embstore" \
               "$work/consumer-static/consumer" "$work/consumer-static/make_npy"
fi
echo "check_install: all checks passed"
