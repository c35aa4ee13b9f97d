#!/usr/bin/env bash
# The Python package, offline, as a user installs it (Debian's interpreter,
# /usr/bin/python3, with Debian's numpy, torch, pytest and hypothesis):
#   1. a venv with --system-site-packages, and `python -m pip install
#      --no-build-isolation .` into it (setup.py builds the extension with
#      CMake in build/python);
#   2. a wheel with `python3 -m build --no-isolation --wheel`, installed into
#      a second venv and imported there;
#   3. the pytest suite (python/tests) against the installed package, with
#      the CLI of build/release for the multi-process tests and for
#      test_serve.py's `embstore serve` (EMBSTORE_CLI).
# Both installs carry the gRPC stubs (embstore/v1/embstore_pb2*.py) that
# setup.py generates with protoc and grpc_python_plugin.
# Run by tools/run_tests.sh after the Release build; alone it needs
# build/release/tools/embstore (or EMBSTORE_CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
py=/usr/bin/python3
export EMBSTORE_CLI="${EMBSTORE_CLI:-$PWD/build/release/tools/embstore}"
[ -x "$EMBSTORE_CLI" ] || { echo "run_python_tests: no CLI at $EMBSTORE_CLI" >&2; exit 1; }

echo "== python: pip install --no-build-isolation . (venv build/venv)"
[ -x build/venv/bin/python ] || "$py" -m venv --system-site-packages build/venv
build/venv/bin/python -m pip install --no-build-isolation --no-index --no-deps \
  --force-reinstall -q .
build/venv/bin/python -c "import embstore, sys; print('   embstore', embstore.__version__, 'at', embstore.__file__)"
build/venv/bin/python -c "import embstore; embstore.Client('127.0.0.1:1').close(); from embstore.v1 import embstore_pb2_grpc" ||
  { echo "run_python_tests: embstore.Client or its stubs do not import from build/venv" >&2; exit 1; }
# The module exports its entry point only (python/module.map): nothing of the
# static libembstore inside it, or of TBB/nlohmann/..., is visible to torch or
# other extensions in the process.
module=$(ls build/venv/lib/python3*/site-packages/embstore/_embstore*.so)
exported=$(nm -D --defined-only "$module" | awk '{print $NF}')
[ "$exported" = "PyInit__embstore" ] ||
  { echo "run_python_tests: $module exports more than PyInit__embstore:" >&2; echo "$exported" | head >&2; exit 1; }
echo "   $(basename "$module") exports PyInit__embstore only"

echo "== python: python3 -m build --no-isolation --wheel"
rm -rf build/dist
"$py" -m build --no-isolation --wheel --outdir build/dist . >/dev/null
wheel=$(ls build/dist/embstore-*.whl)
contents=$("$py" -m zipfile -l "$wheel")
for f in embstore/__init__.py embstore/torch.py embstore/_embstore.pyi embstore/py.typed \
         "embstore/_embstore.cpython" embstore/client.py embstore/cluster.py embstore/v1/__init__.py \
         embstore/v1/embstore_pb2.py embstore/v1/embstore_pb2_grpc.py; do
  grep -q "$f" <<<"$contents" || { echo "run_python_tests: $wheel lacks $f" >&2; exit 1; }
done
rm -rf build/venv-wheel
"$py" -m venv --system-site-packages build/venv-wheel
build/venv-wheel/bin/python -m pip install --no-index --no-deps -q "$wheel"
(cd build && venv-wheel/bin/python -c "
import embstore, numpy as np, tempfile
d = tempfile.mkdtemp(); np.save(d + '/w.npy', np.eye(4, dtype=np.float32))
s = embstore.Store(d + '/db'); s.import_file('w', d + '/w.npy')
assert (s.table('w').embedding_bag([1, 2], [0], mode='sum') == [[0, 1, 1, 0]]).all()
from embstore.v1 import embstore_pb2, embstore_pb2_grpc
embstore.Client('127.0.0.1:1').close()
print('   wheel', '$(basename "$wheel")', 'installs and queries')")

echo "== python: pytest python/tests"
build/venv/bin/python -m pytest -q -p no:cacheprovider python/tests
