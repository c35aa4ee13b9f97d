"""Store and Table as a user drives them from Python: import checkpoints (.npy, .npz,
torch.save .pt), inspect, info, versions, replace, drop, verify, refresh, fm_score."""

import numpy as np
import pytest
import torch

import embstore

from conftest import put_table


def test_import_pt_then_query(store, tmp_path):
    emb = torch.randn(50, 12)
    torch.save({"model": {"emb.weight": emb, "step": 7}}, tmp_path / "ckpt.pt")
    listing = embstore.inspect(str(tmp_path / "ckpt.pt"))
    assert ("model.emb.weight", "f32", (50, 12)) in listing
    info = store.import_file("items", str(tmp_path / "ckpt.pt"), tensor="model.emb.weight")
    assert (info.name, info.rows, info.dim, info.dtype, info.version) == ("items", 50, 12, "f32", 1)
    assert "ckpt.pt" in info.source and info.checksum != 0 and info.bytes > 50 * 12 * 4
    table = store.table("items")
    assert (table.name, table.shape, table.dtype, table.version) == ("items", (50, 12), "f32", 1)
    ids, offs = torch.tensor([1, 2, 3, 40]), torch.tensor([0, 1])
    want = torch.nn.functional.embedding_bag(ids, emb, offs, mode="mean")
    assert np.allclose(table.embedding_bag(ids, offs), want.numpy(), atol=1e-6)
    assert store.tables() == ["items"]


def test_import_npz_with_dtype(store, tmp_path):
    a = np.random.default_rng(2).standard_normal((20, 6)).astype(np.float32)
    np.savez(tmp_path / "c.npz", user=a, other=np.zeros(3))
    info = store.import_file("u", str(tmp_path / "c.npz"), tensor="user", dtype="bf16")
    assert info.dtype == "bf16"
    assert np.allclose(store.table("u").dequantize(), a, rtol=1e-2, atol=1e-2)


def test_versions_replace_drop(store, tmp_path):
    t1 = put_table(store, tmp_path, "t", np.full((4, 2), 1, np.float32))
    t2 = put_table(store, tmp_path, "t", np.full((4, 2), 2, np.float32), replace=True)
    assert (t1.version, t2.version) == (1, 2)
    assert store.info("t").version == 2
    # The old snapshot still reads its version.
    assert t1.embedding_bag([0], [0], mode="sum")[0, 0] == 1
    assert t2.embedding_bag([0], [0], mode="sum")[0, 0] == 2
    store.drop("t")
    assert store.tables() == []
    assert t2.embedding_bag([0], [0], mode="sum")[0, 0] == 2
    with pytest.raises(KeyError):
        store.table("t")


def test_batched_and_fm(store, tmp_path):
    v = np.random.default_rng(5).standard_normal((30, 4)).astype(np.float32)
    b = np.random.default_rng(6).standard_normal((30, 1)).astype(np.float32)
    put_table(store, tmp_path, "v", v)
    put_table(store, tmp_path, "b", b)
    ids = np.array([[0, 1, 2, 3]])
    ends = np.array([[0, 3]])
    pooled = store.table("v").batched_embedding_bag(ids, ends)
    assert pooled.shape == (1, 2, 4)
    assert np.allclose(pooled[0, 0], v[0]) and np.allclose(pooled[0, 1], v[1:4].sum(0), atol=1e-5)
    score = embstore.fm_score(store, model="fm", vectors="v", biases="b", bias=0.5, input=ids,
                              bag_ends=ends)
    V = np.stack([v[0], v[1:4].sum(0)]).astype(np.float64)
    want = 0.5 + b[0, 0] + b[1:4, 0].sum() + 0.5 * ((V.sum(0) ** 2) - (V ** 2).sum(0)).sum()
    assert score.shape == (1,) and abs(score[0] - want) < 1e-4
    with pytest.raises(ValueError, match="model"):
        embstore.fm_score(store, model="xfm", vectors="v", biases="b", input=ids, bag_ends=ends)


def test_refresh_sees_another_store_object(store, tmp_path):
    other = embstore.Store(str(tmp_path / "db"))
    put_table(other, tmp_path, "x", np.ones((3, 3), np.float32))
    store.refresh()
    assert store.tables() == ["x"]
