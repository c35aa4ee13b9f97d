"""What the pooling calls accept: numpy arrays, torch CPU tensors, lists, buffer-protocol
objects; int32/int64 ids; float32 weights (float64 converted); out=. Contiguous inputs are
not copied; Table.numpy() on a large table copies nothing."""

import array
import tracemalloc

import numpy as np
import pytest
import torch

from conftest import put_table


@pytest.fixture
def table(store, tmp_path):
    rng = np.random.default_rng(1)
    return put_table(store, tmp_path, "t", rng.standard_normal((100, 8)).astype(np.float32))


def expected(table, ids, offsets, mode="sum", weights=None):
    w = table.numpy()
    ids, offsets = np.asarray(ids), list(offsets) + [len(ids)]
    out = []
    for b in range(len(offsets) - 1):
        rows = w[ids[offsets[b]:offsets[b + 1]]].astype(np.float64)
        if weights is not None:
            rows = rows * np.asarray(weights, dtype=np.float64)[offsets[b]:offsets[b + 1], None]
        out.append(rows.sum(0) if mode == "sum" else rows.mean(0))
    return np.array(out, dtype=np.float32)


IDS, OFFS = [3, 1, 4, 1, 5, 9, 2, 6], [0, 3, 5]


@pytest.mark.parametrize("make", [
    lambda v: np.array(v, dtype=np.int64),
    lambda v: np.array(v, dtype=np.int32),
    lambda v: np.array(v, dtype=np.uint16),            # converted to int64 once
    lambda v: list(v),
    lambda v: tuple(v),
    lambda v: torch.tensor(v),
    lambda v: torch.tensor(v, dtype=torch.int32),
    lambda v: array.array("q", v),                     # buffer protocol
    lambda v: memoryview(array.array("i", v)),
    lambda v: np.repeat(np.array(v, dtype=np.int64), 2)[::2],  # non-contiguous: copied once
], ids=["int64", "int32", "uint16", "list", "tuple", "torch64", "torch32", "array", "memoryview",
        "strided"])
def test_id_inputs(table, make):
    got = table.embedding_bag(make(IDS), make(OFFS), mode="sum")
    assert np.allclose(got, expected(table, IDS, OFFS), atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda v: np.array(v, dtype=np.float32),
    lambda v: np.array(v, dtype=np.float64),
    lambda v: list(v),
    lambda v: torch.tensor(v),
    lambda v: torch.tensor(v, dtype=torch.float64),
    lambda v: array.array("f", v),
], ids=["f32", "f64", "list", "torch32", "torch64", "array"])
def test_weight_inputs(table, make):
    w = [0.5, -1.0, 2.0, 0.25, 1.5, -0.5, 3.0, 1.0]
    got = table.embedding_bag(IDS, OFFS, mode="sum", per_sample_weights=make(w))
    assert np.allclose(got, expected(table, IDS, OFFS, weights=w), atol=1e-5)


def test_two_d_input_and_weighted_mean(table):
    ids = np.array([[1, 2], [3, 4]])
    got = table.embedding_bag(ids, mode="mean", per_sample_weights=np.ones((2, 2), np.float32))
    assert np.allclose(got, expected(table, [1, 2, 3, 4], [0, 2], mode="mean"), atol=1e-5)


def test_out(table):
    out = np.full((3, 8), np.nan, dtype=np.float32)
    got = table.embedding_bag(IDS, OFFS, mode="sum", out=out)
    assert got is out
    assert np.allclose(out, expected(table, IDS, OFFS), atol=1e-5)
    t = torch.zeros(3, 8)
    table.embedding_bag(IDS, OFFS, mode="sum", out=t)   # a float32 CPU tensor works too
    assert np.allclose(t.numpy(), out)
    for bad, why in [(np.zeros((3, 9), np.float32), "shape"), (np.zeros((3, 8)), "float32"),
                     (np.zeros((8, 3), np.float32).T, "C-contiguous"), ([0.0] * 24, "float32")]:
        with pytest.raises(ValueError, match=why):
            table.embedding_bag(IDS, OFFS, mode="sum", out=bad)
    ro = np.zeros((3, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        table.embedding_bag(IDS, OFFS, mode="sum", out=ro)


def test_out_must_not_overlap_the_inputs(table):
    buf = np.zeros(64, dtype=np.float32)
    ids = buf[:8].view(np.int32)        # the ids live in the first 32 bytes
    ids[:] = [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="share memory"):
        table.embedding_bag(ids, [0, 4], mode="sum", out=buf[:16].reshape(2, 8))
    # Disjoint parts of one buffer are fine.
    got = table.embedding_bag(ids, [0, 4], mode="sum", out=buf[32:48].reshape(2, 8))
    assert np.allclose(got, expected(table, [1, 2, 3, 4, 5, 6, 7, 8], [0, 4]), atol=1e-5)


def test_numpy_scalars_as_options(table):
    got = table.embedding_bag([1, 2, 3], [0], mode="sum", padding_idx=np.int64(2),
                              max_norm=np.float32(100.0))
    assert np.allclose(got, expected(table, [1, 3], [0]), atol=1e-5)
    with pytest.raises(ValueError, match="int64 range"):
        table.embedding_bag([1], [0], padding_idx=2**70)
    with pytest.raises(ValueError, match="max_norm must be a number"):
        table.embedding_bag([1], [0], max_norm=[1.0])


def traced_peak(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_contiguous_inputs_are_not_copied(table):
    n = 1 << 21  # 16 MiB of int64 ids in 2 bags: a copy would show in the traced peak
    ids = np.zeros(n, dtype=np.int64)
    offs = np.array([0, n // 2], dtype=np.int64)
    weights = np.ones(n, dtype=np.float32)
    assert traced_peak(lambda: table.embedding_bag(ids, offs, mode="sum")) < ids.nbytes // 8
    assert traced_peak(lambda: table.embedding_bag(ids.astype(np.int32), offs)) < ids.nbytes
    assert traced_peak(lambda: table.embedding_bag(ids, offs, mode="sum",
                                                   per_sample_weights=weights)) < ids.nbytes // 8
    assert traced_peak(lambda: table.embedding_bag(torch.from_numpy(ids), offs)) < ids.nbytes // 8
    # ... and the probe sees copies where there are some: strided ids and float64 weights.
    strided = np.zeros(2 * n, dtype=np.int64)[::2]
    assert traced_peak(lambda: table.embedding_bag(strided, offs)) >= ids.nbytes
    assert traced_peak(lambda: table.embedding_bag(
        ids, offs, mode="sum", per_sample_weights=weights.astype(np.float64))) >= weights.nbytes


def test_numpy_view_of_a_large_table_copies_nothing(store, tmp_path):
    rows, dim = 1 << 18, 64  # 64 MiB of f32
    values = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    table = put_table(store, tmp_path, "big", values)
    del values
    holder = {}
    peak = traced_peak(lambda: holder.setdefault("v", table.numpy()))
    view = holder["v"]
    assert peak < 1 << 20
    assert view.shape == (rows, dim) and view.dtype == np.float32
    assert not view.flags.writeable and not view.flags.owndata
    assert view.base is table
    assert view[12345, 7] == 12345 * dim + 7
    with pytest.raises(ValueError):
        view[0, 0] = 1.0
    # The view keeps the snapshot alive after the table is dropped.
    store.drop("big")
    del table
    assert view[rows - 1, dim - 1] == rows * dim - 1


def test_numpy_f16_and_dequantize(store, tmp_path):
    values = np.linspace(-2, 2, 60, dtype=np.float32).reshape(10, 6)
    for dtype in ("f16", "bf16", "int8"):
        t = put_table(store, tmp_path, "q" + dtype, values, dtype=dtype)
        assert t.dtype == dtype
        deq = t.dequantize()
        assert deq.dtype == np.float32 and deq.shape == (10, 6)
        assert np.allclose(deq, values, atol=0.02)
        if dtype == "f16":
            v = t.numpy()
            assert v.dtype == np.float16 and np.array_equal(v.astype(np.float32), deq)
        else:
            with pytest.raises(ValueError, match=r"\.dequantize\(\)"):
                t.numpy()
