#!/usr/bin/env bash
# The main job, from a fresh Debian machine: install missing packages, build
# the `embstore` CLI, import the sample checkpoints committed in examples/,
# inspect, verify and query them, score a factorization machine, serve the
# store over gRPC and query it through the server; then
# install the Python package (offline, into the venv build/venv) and query
# the same store from Python and through embstore.torch.EmbeddingBag.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"${EMBSTORE_JOBS:-2}" --target embstore_cli
bin=build/release/tools/embstore
work=$(mktemp -d)
db=$work/demo-store
trap 'rm -rf "$work"' EXIT
set -x
# A torch.save training checkpoint: list its tensors, import three tables in one go.
$bin inspect examples/model.pt
$bin import --db "$db" --from examples/model.pt \
  --tensor model.items.weight=items --tensor model.vectors.weight=fm_vectors --tensor model.biases.weight=fm_biases
# A NumPy array, stored as int8 row-wise.
$bin import --db "$db" --table items_int8 --from examples/items.npy --dtype int8
$bin list --db "$db"
$bin info --db "$db" --table items
$bin verify --db "$db"
# Two bags, {1, 2, 3} and {40, 41}, pooled as torch's embedding_bag would.
$bin query --db "$db" --table items --indices 1,2,3,40,41 --offsets 0,3 --mode sum
$bin query --db "$db" --table items --indices 1,2,3,40,41 --offsets 0,3 --mode mean --max-norm 1.0
$bin query --db "$db" --table items_int8 --indices 1,2,3,40,41 --offsets 0,3 --mode max --padding-idx -1
# Extensions: weighted max, and batched bags with inclusive end offsets.
$bin query --db "$db" --table items --indices 1,2,3,40,41 --offsets 0,3 --weights 1,0.5,2,1,-1 --mode max
$bin query --db "$db" --table items --indices 1,2,3,5 --weights 2,-2,0.3,0.6 --bag-ends 1,2,3 --mode sum
# A weighted FM score of one sample with three multi-value fields; the global
# bias comes from the checkpoint.
$bin score --db "$db" --model fm --vectors fm_vectors --biases fm_biases --bias-from examples/model.pt:model.bias \
  --indices 3,17,17,42,99,150 --weights 1,0.5,0.5,1,0.7,0.3 --bag-ends 0,3,5
# A new version beside the old one, both listed, then the old one published again.
$bin import --db "$db" --table items --from examples/items.npy --replace
$bin list --db "$db" --versions
$bin rollback --db "$db" --table items
$bin info --db "$db" --table items
# The same store over gRPC: `embstore serve` on a free loopback port, the
# same query through it, the metrics scraped, a version swapped underneath,
# then SIGTERM (drains, exits 0).
$bin serve --db "$db" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 >"$work/serve.out" &
serve_pid=$!
for _ in $(seq 300); do grep -q "metrics on" "$work/serve.out" && break; sleep 0.1; done
cat "$work/serve.out"
addr=$(sed -n 's/^embstore serve: listening on //p' "$work/serve.out")
metrics=$(sed -n 's/^embstore serve: metrics on //p' "$work/serve.out")
$bin query --server "$addr" --table items --indices 1,2,3,40,41 --offsets 0,3 --mode sum --stats
$bin import --db "$db" --table items --from examples/items.npy --replace
sleep 0.3
$bin query --server "$addr" --table items --indices 1,2,3,40,41 --offsets 0,3 --mode sum --stats
/usr/bin/python3 -c "import sys, urllib.request; print(''.join(l for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines(True) if l.startswith(('embstore_requests_total', 'embstore_table_version'))), end='')" "$metrics"
kill -TERM "$serve_pid"
wait "$serve_pid"
# Python: the package, built and installed offline (Debian's numpy and torch
# through --system-site-packages), over the same store.
[ -x build/venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages build/venv
build/venv/bin/python -m pip install --no-build-isolation --no-index -q .
build/venv/bin/python examples/python_demo.py "$db"
