"""Bad arguments and inputs raise Python exceptions carrying the library's message; none
crashes the interpreter."""

import os
import subprocess
import sys

import numpy as np
import pytest

import embstore

from conftest import put_table


@pytest.fixture
def table(store, tmp_path):
    return put_table(store, tmp_path, "t", np.ones((10, 4), dtype=np.float32))


def test_value_errors(table):
    cases = [
        (dict(input=[1, 2], offsets=[0], mode="median"), "mode must be 'sum', 'mean' or 'max'"),
        (dict(input=[1.5, 2.0], offsets=[0]), "integer ids"),
        (dict(input=np.zeros((2, 2, 2), np.int64)), "1-D"),
        (dict(input=[1, 2], offsets=[[0]]), "offsets must be 1-D"),
        (dict(input=[1, 2], offsets=[1, 0]), "offsets"),
        (dict(input=[1, 2], offsets=[0], per_sample_weights=[1.0]), "shape of input"),
        (dict(input=[1, 2], offsets=[0], per_sample_weights=[1, 2]), "float32"),
        (dict(input=[1, 2], offsets=[0], max_norm=-1.0), "max_norm"),
        (dict(input=[1, 2], offsets=[0], max_norm="big"), "max_norm must be a number"),
        (dict(input=[1, 2], offsets=[0], max_norm=1.0, norm_type=float("nan")), "norm_type"),
        (dict(input=[1, 2], offsets=[0], padding_idx=10), "padding_idx"),
        (dict(input=[1, 2], offsets=[0], padding_idx=1.5), "padding_idx must be an int"),
        (dict(input="12", offsets=[0]), "integer ids"),
        (dict(input={"a": 1}, offsets=[0]), "input"),
        (dict(input=None), "input is required"),
        (dict(input=object(), offsets=[0]), "input"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            table.embedding_bag(**kwargs)


def test_ids_out_of_range_are_index_errors(table):
    with pytest.raises(IndexError, match=r"indices\[1\] = 10 is out of range for table 't'"):
        table.embedding_bag([1, 10], offsets=[0])
    with pytest.raises(IndexError, match="out of range"):
        table.embedding_bag([-1], offsets=[0])
    with pytest.raises(IndexError):
        table.batched_embedding_bag([[1, 99]], [[1]])


def test_batched_shape_errors(table):
    with pytest.raises(ValueError, match="2-D"):
        table.batched_embedding_bag([1, 2], [[1]])
    with pytest.raises(ValueError, match="samples"):
        table.batched_embedding_bag([[1, 2]], [[1], [1]])
    with pytest.raises(ValueError):
        table.batched_embedding_bag([[1, 2]], [[5]])   # an end past the items


def test_key_errors(store, table):
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        store.table("nope")
    with pytest.raises(KeyError):
        store.info("nope")
    with pytest.raises(KeyError):
        store.drop("nope")
    with pytest.raises(KeyError):
        store.verify("nope")


def test_import_errors(store, tmp_path):
    with pytest.raises(FileNotFoundError):
        store.import_file("a", str(tmp_path / "missing.npy"))
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError):
        store.import_file("a", str(bad))
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="int"):
        store.import_file("a", str(tmp_path / "ints.npy"))
    np.save(tmp_path / "ok.npy", np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="dtype must be"):
        store.import_file("a", str(tmp_path / "ok.npy"), dtype="f8")
    with pytest.raises(ValueError, match="name"):
        store.import_file("../evil", str(tmp_path / "ok.npy"))
    store.import_file("a", str(tmp_path / "ok.npy"))
    with pytest.raises(ValueError, match="exists"):
        store.import_file("a", str(tmp_path / "ok.npy"))
    assert store.tables() == ["a"]


def test_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        embstore.Store(str(tmp_path / "absent"), create=False)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OSError):
        embstore.Store(str(f / "db"))


def test_corruption_error(store, tmp_path):
    put_table(store, tmp_path, "c", np.ones((1000, 16), dtype=np.float32))
    store.verify()
    store.verify("c")
    path = os.path.join(str(tmp_path / "db"), "tables", store.info("c").file)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 100)
        f.write(b"\xff" * 8)
    with pytest.raises(embstore.CorruptionError, match="c") as e:
        store.verify()
    assert isinstance(e.value, OSError)
    with pytest.raises(embstore.CorruptionError):
        store.verify("c")


def test_hostile_inputs_do_not_crash():
    # In a child interpreter: whatever happens, the parent sees an exit code, not a crash.
    code = r"""
import numpy as np, embstore, tempfile, os
d = tempfile.mkdtemp()
np.save(d + '/w.npy', np.ones((5, 3), np.float32))
s = embstore.Store(d + '/db'); s.import_file('w', d + '/w.npy'); t = s.table('w')
class Evil:
    def __array__(self, *a, **k): raise RuntimeError('boom')
bad = [Evil(), [[1, 2], [3]], [2**70], np.array([1, 2], dtype='>i8'), np.array([], np.float64),
       b'\x00\x01', bytearray(16), np.ones((2, 0), np.int64), float('nan'), -1, [None]]
n = 0
for x in bad:
    for kw in ({'offsets': [0]}, {}, {'offsets': x}, {'per_sample_weights': x, 'offsets': [0]}):
        try:
            t.embedding_bag(x if 'offsets' not in kw or kw['offsets'] is not x else [0], **kw)
        except (ValueError, IndexError, TypeError, RuntimeError, OverflowError):
            pass
        n += 1
    for args in ((x, [[0]]), ([[0]], x)):
        try: t.batched_embedding_bag(*args)
        except (ValueError, IndexError, TypeError, RuntimeError, OverflowError): pass
        n += 1
print('survived', n)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "survived 66" in r.stdout
