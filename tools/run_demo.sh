#!/usr/bin/env bash
# The main job, from a fresh Debian machine: install missing packages, build
# the `embstore` CLI, import the sample checkpoint committed in examples/,
# inspect it and query it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"${EMBSTORE_JOBS:-2}" --target embstore
bin=build/release/tools/embstore
db=$(mktemp -d)/demo-store
trap 'rm -rf "$(dirname "$db")"' EXIT
set -x
$bin inspect examples/items.npy
$bin import --db "$db" --table items --from examples/items.npy
$bin list --db "$db"
$bin info --db "$db" --table items
$bin verify --db "$db"
# Two bags, {1, 2, 3} and {40, 41}, pooled three ways.
$bin query --db "$db" --table items --indices 1,2,3,40,41 --offsets 0,3 --mode sum
$bin query --db "$db" --table items --indices 1,2,3,40,41 --offsets 0,3 --mode mean --max-norm 1.0
$bin query --db "$db" --table items --indices 1,2,3,40,41 --offsets 0,3 --mode max --padding-idx -1
