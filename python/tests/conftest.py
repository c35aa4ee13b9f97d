"""Shared fixtures of the embstore Python tests (pytest, run by tools/run_python_tests.sh
against the package as pip installed it)."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

import embstore

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"


# The suite tests the package as installed, not the source tree's python/embstore.
if REPO / "python" in pathlib.Path(embstore.__file__).resolve().parents:
    raise RuntimeError(f"embstore was imported from the source tree ({embstore.__file__}); "
                       "install it (tools/run_python_tests.sh) and run pytest from its venv")


def pytest_report_header(config):
    return f"embstore {embstore.__version__} from {pathlib.Path(embstore.__file__).parent}"


def load_golden(name):
    with open(GOLDEN / name) as f:
        return json.load(f)


def put_table(store, tmp_path, name, values, dtype=None, replace=False):
    """Imports `values` (a 2-D array) as table `name` through a .npy file."""
    path = tmp_path / f"{name}-{np.random.randint(1 << 30)}.npy"
    np.save(path, np.ascontiguousarray(values))
    store.import_file(name, str(path), dtype=dtype, replace=replace)
    os.remove(path)
    return store.table(name)


@pytest.fixture
def store(tmp_path):
    return embstore.Store(str(tmp_path / "db"))


@pytest.fixture(scope="session")
def cli():
    """The embstore CLI the multi-process tests drive (EMBSTORE_CLI, else the Release build)."""
    path = os.environ.get("EMBSTORE_CLI") or str(REPO / "build" / "release" / "tools" / "embstore")
    if not os.access(path, os.X_OK):
        found = shutil.which("embstore")
        if not found:
            pytest.fail(f"no embstore CLI at {path} or on PATH (set EMBSTORE_CLI)")
        path = found
    return path
