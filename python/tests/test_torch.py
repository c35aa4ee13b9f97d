"""embstore.torch.EmbeddingBag against a real torch.nn.EmbeddingBag.from_pretrained on the
same weights: every mode, layout, padding_idx and max_norm; torch tensors in; the table is
neither copied into the module nor modified."""

import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

import embstore.torch

from conftest import put_table

ROWS, DIM = 60, 24


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(7)
    return (rng.standard_normal((ROWS, DIM)) * 1.5).astype(np.float32)


@pytest.fixture(scope="module")
def tstore(tmp_path_factory, weights):
    tmp = tmp_path_factory.mktemp("torch")
    store = embstore.Store(str(tmp / "db"))
    put_table(store, tmp, "w", weights)
    return store


def random_request(rng, layout, idx_dtype):
    if layout == "2d":
        b, n = int(rng.integers(1, 6)), int(rng.integers(1, 7))
        return torch.from_numpy(rng.integers(0, ROWS, (b, n)).astype(idx_dtype)), None
    n = int(rng.integers(0, 30))
    ids = rng.integers(0, ROWS, n).astype(idx_dtype)
    bags = int(rng.integers(1, 6))
    offs = np.sort(rng.integers(0, n + 1, bags)).astype(idx_dtype)
    offs[0] = 0
    if layout == "last":
        offs = np.append(offs, n).astype(idx_dtype)
    return torch.from_numpy(ids), torch.from_numpy(offs)


CONFIGS = [(mode, layout, padding, max_norm, norm_type, idx)
           for mode in ("sum", "mean", "max")
           for layout in ("offsets", "last", "2d")
           for padding in (None, 3, -2)
           for max_norm, norm_type in ((None, 2.0), (1.0, 2.0), (2.5, 1.0), (0.7, float("inf")))
           for idx in (np.int64, np.int32)]


@pytest.mark.parametrize("mode,layout,padding,max_norm,norm_type,idx", CONFIGS)
def test_module_equals_torch(tstore, weights, mode, layout, padding, max_norm, norm_type, idx):
    rng = np.random.default_rng(zlib.crc32(repr((mode, layout, padding, max_norm, norm_type,
                                                 idx.__name__)).encode()))
    mine = embstore.torch.EmbeddingBag.from_store(
        tstore, "w", mode=mode, max_norm=max_norm, norm_type=norm_type, padding_idx=padding,
        include_last_offset=layout == "last")
    for _ in range(4):
        inp, offs = random_request(rng, layout, idx)
        use_w = mode == "sum" and rng.integers(2) == 1
        psw = torch.from_numpy(rng.standard_normal(inp.shape).astype(np.float32)) if use_w else None
        # torch renormalizes its weight in place under max_norm: a fresh module per call.
        ref = torch.nn.EmbeddingBag.from_pretrained(
            torch.from_numpy(weights.copy()), mode=mode, max_norm=max_norm, norm_type=norm_type,
            padding_idx=padding, include_last_offset=layout == "last")
        want = ref(inp, offs, psw)
        got = mine(inp, offs, psw)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    # The table is as stored, whatever max_norm did.
    assert np.array_equal(tstore.table("w").numpy(), weights)


def test_module_holds_no_copy(tstore):
    m = embstore.torch.EmbeddingBag.from_store(tstore, "w", mode="sum")
    assert list(m.parameters()) == [] and list(m.buffers()) == [] and m.state_dict() == {}
    assert (m.num_embeddings, m.embedding_dim) == (ROWS, DIM)
    assert "mode='sum'" in repr(m)
    with torch.no_grad():
        out = m(torch.tensor([1, 2, 3]), torch.tensor([0, 2]))
    assert out.shape == (2, DIM)


def test_grad_tensors_are_accepted(tstore, weights):
    m = embstore.torch.EmbeddingBag.from_store(tstore, "w", mode="sum")
    psw = torch.ones(3, requires_grad=True)
    out = m(torch.tensor([1, 2, 3]), torch.tensor([0]), psw)
    assert torch.allclose(out, torch.from_numpy(weights[[1, 2, 3]].sum(0, keepdims=True)))


def test_only_embstore_torch_imports_torch():
    code = ("import sys, embstore; s = embstore.Store; assert 'torch' not in sys.modules, 'torch';"
            "import embstore.torch; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
