"""Property tests (hypothesis): random requests through Python, the fast kernels against
their plain C++ reference twin (Table._embedding_bag_reference), every dtype, mode, layout
and option; and against a NumPy model of the semantics for f32 sum/mean."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embstore

from conftest import put_table

SHAPES = [(37, 13), (5, 1), (64, 64), (9, 8)]
DTYPES = ["f32", "f16", "bf16", "int8"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("props")
    store = embstore.Store(str(tmp / "db"))
    rng = np.random.default_rng(11)
    out = {}
    for rows, dim in SHAPES:
        w = (rng.standard_normal((rows, dim)) * 2).astype(np.float32)
        for dt in DTYPES:
            out[(rows, dim, dt)] = (put_table(store, tmp, f"t{rows}x{dim}{dt}", w, dtype=dt), w)
    return out


@st.composite
def requests(draw, dtypes=tuple(DTYPES), modes=("sum", "mean", "max"),
             layouts=("offsets", "last", "2d", "batched"), max_norm=True):
    rows, dim = draw(st.sampled_from(SHAPES))
    dtype = draw(st.sampled_from(dtypes))
    mode = draw(st.sampled_from(modes))
    layout = draw(st.sampled_from(layouts))
    idx_dtype = draw(st.sampled_from([np.int32, np.int64]))
    ids_el = st.integers(0, rows - 1)
    r = {"key": (rows, dim, dtype), "mode": mode, "layout": layout}
    if layout == "2d":
        b, n = draw(st.integers(0, 5)), draw(st.integers(1, 6))
        r["input"] = np.array(draw(st.lists(ids_el, min_size=b * n, max_size=b * n)),
                              dtype=idx_dtype).reshape(b, n)
        r["offsets"] = None
    elif layout == "batched":
        b, n, k = draw(st.integers(0, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
        r["input"] = np.array(draw(st.lists(ids_el, min_size=b * n, max_size=b * n)),
                              dtype=idx_dtype).reshape(b, n)
        ends = [sorted(draw(st.lists(st.integers(-1, n - 1), min_size=k, max_size=k)))
                for _ in range(b)]
        r["bag_ends"] = np.array(ends, dtype=np.int64).reshape(b, k)
    else:
        ids = draw(st.lists(ids_el, max_size=30))
        cuts = sorted(draw(st.lists(st.integers(0, len(ids)), min_size=1, max_size=6)))
        cuts[0] = 0
        if layout == "last":
            cuts.append(len(ids))
        r["input"] = np.array(ids, dtype=idx_dtype)
        r["offsets"] = np.array(cuts, dtype=idx_dtype)
    if draw(st.booleans()):
        r["per_sample_weights"] = np.array(
            draw(st.lists(st.floats(-3, 3, width=32), min_size=r["input"].size,
                          max_size=r["input"].size)), dtype=np.float32).reshape(r["input"].shape)
    if draw(st.booleans()):
        r["padding_idx"] = draw(st.integers(-rows, rows - 1))
    if max_norm and draw(st.booleans()):
        r["max_norm"] = draw(st.floats(0.1, 5))
        r["norm_type"] = draw(st.sampled_from([1.0, 2.0, 3.0, 0.5, math.inf]))
    return r


def call(table, r, reference):
    opts = {k: r[k] for k in ("per_sample_weights", "padding_idx", "max_norm", "norm_type") if k in r}
    if r["layout"] == "batched":
        f = table._batched_embedding_bag_reference if reference else table.batched_embedding_bag
        return f(r["input"], r["bag_ends"], mode=r["mode"], **opts)
    f = table._embedding_bag_reference if reference else table.embedding_bag
    return f(r["input"], r["offsets"], mode=r["mode"], include_last_offset=r["layout"] == "last",
             **opts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_fast_kernels_match_the_reference(tables, r):
    table, _ = tables[r["key"]]
    fast, ref = call(table, r, False), call(table, r, True)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype == np.float32
    if r["mode"] == "max" and "max_norm" not in r and r["key"][2] != "int8":
        assert np.array_equal(fast, ref)  # max of exactly converted rows: no rounding
    else:  # the SIMD kernels use FMAs (int8: code * scale + bias); the reference rounds each step
        assert np.all(np.abs(fast - ref) <= 1e-5 + 1e-5 * np.abs(ref)), np.max(np.abs(fast - ref))


@settings(max_examples=200, deadline=None)
@given(requests(dtypes=("f32",), modes=("sum", "mean"), layouts=("offsets",), max_norm=False))
def test_f32_sum_and_mean_match_numpy(tables, r):
    table, w = tables[r["key"]]
    got = call(table, r, False)
    ids, offs = r["input"].astype(np.int64), list(r["offsets"].astype(np.int64)) + [len(r["input"])]
    wts = r.get("per_sample_weights")
    pad = r.get("padding_idx")
    pad = None if pad is None else pad % w.shape[0]
    for b in range(len(offs) - 1):
        acc, count = np.zeros(w.shape[1]), 0
        for i in range(offs[b], offs[b + 1]):
            if ids[i] == pad:
                continue
            acc += w[ids[i]].astype(np.float64) * (1.0 if wts is None else float(wts[i]))
            count += 1
        want = acc / count if (r["mode"] == "mean" and count) else acc
        assert np.allclose(got[b], want, rtol=1e-4, atol=1e-4)
