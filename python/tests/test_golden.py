"""Every committed torch golden case (tests/golden), through Python: Table.embedding_bag,
Table.batched_embedding_bag, embstore.torch.EmbeddingBag and fm_score give torch's answers
(the same cases and tolerance as the C++ golden suites)."""

import math

import numpy as np
import pytest
import torch

import embstore
import embstore.torch

from conftest import GOLDEN, load_golden, put_table

EB = load_golden("embedding_bag.json")
EDGES = load_golden("norm_type_edges.json")
FM = load_golden("fm.json")


def test_case_counts():
    # The C++ suites check these numbers too (kTorchGoldenCases, kExtensionGoldenCases, ...).
    assert len(EB["cases"]) == 240
    assert len(EB["extension_cases"]) == 70
    assert len(EDGES["cases"]) == 30
    assert len(FM["cases"]) == 13


@pytest.fixture(scope="module")
def gstore(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    store = embstore.Store(str(tmp / "db"))
    for name, t in {**EB["tables"], **FM["tables"]}.items():
        store.import_file(name, str(GOLDEN / t["file"]))
    put_table(store, tmp, "edges", np.array(EDGES["rows"], dtype=np.float32))
    return store


def norm(v):
    return {"inf": math.inf, "-inf": -math.inf}.get(v, v) if isinstance(v, str) else float(v)


def arr(values, dtype, shape=None):
    a = np.array(values, dtype=dtype)
    return a.reshape(shape) if shape is not None else a


def check(got, case):
    want = arr(case["expected"], np.float32, case["expected_shape"])
    got = np.asarray(got)
    assert got.dtype == np.float32
    assert list(got.shape) == list(want.shape)
    if case["mode"] == "max" and case.get("max_norm") is None:
        # max is exact, down to the sign of zero
        assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
    else:
        assert np.all(np.abs(got - want) <= 1e-5 + 1e-5 * np.abs(want)), np.max(np.abs(got - want))


def bag_args(case):
    inp = arr(case["indices"], case["index_dtype"], case["indices_shape"])
    offs = None if case["offsets"] is None else arr(case["offsets"], case["offsets_dtype"])
    psw = case.get("per_sample_weights")
    psw = None if psw is None else arr(psw, np.float32, case["indices_shape"])
    return inp, offs, psw


BAG_CASES = EB["cases"] + [c for c in EB["extension_cases"] if c["kind"] != "batched"]
BATCHED_CASES = [c for c in EB["extension_cases"] if c["kind"] == "batched"]


@pytest.mark.parametrize("case", BAG_CASES, ids=[c["name"] for c in BAG_CASES])
def test_embedding_bag(gstore, case):
    table = gstore.table(case["table"])
    inp, offs, psw = bag_args(case)
    got = table.embedding_bag(inp, offs, max_norm=case["max_norm"], norm_type=norm(case["norm_type"]),
                              mode=case["mode"], per_sample_weights=psw,
                              include_last_offset=case["include_last_offset"],
                              padding_idx=case["padding_idx"])
    check(got, case)


@pytest.mark.parametrize("case", BAG_CASES, ids=[c["name"] for c in BAG_CASES])
def test_torch_module(gstore, case):
    module = embstore.torch.EmbeddingBag.from_store(
        gstore, case["table"], mode=case["mode"], max_norm=case["max_norm"],
        norm_type=norm(case["norm_type"]), padding_idx=case["padding_idx"],
        include_last_offset=case["include_last_offset"])
    inp, offs, psw = bag_args(case)
    out = module(torch.from_numpy(inp), None if offs is None else torch.from_numpy(offs),
                 None if psw is None else torch.from_numpy(psw))
    assert isinstance(out, torch.Tensor)
    check(out.numpy(), case)


@pytest.mark.parametrize("case", BATCHED_CASES, ids=[c["name"] for c in BATCHED_CASES])
def test_batched(gstore, case):
    table = gstore.table(case["table"])
    got = table.batched_embedding_bag(
        arr(case["indices"], case["index_dtype"], case["indices_shape"]),
        arr(case["ends"], case["ends_dtype"], case["ends_shape"]),
        per_sample_weights=arr(case["weights"], np.float32, case["indices_shape"]),
        mode=case["mode"], padding_idx=case["padding_idx"], max_norm=case["max_norm"],
        norm_type=norm(case["norm_type"]))
    check(got, case)


@pytest.mark.parametrize("i", range(len(EDGES["cases"])))
def test_norm_type_edges(gstore, i):
    case = EDGES["cases"][i]
    table = gstore.table("edges")
    got = table.embedding_bag(np.array(case["indices"]), np.array(case["offsets"]), mode="sum",
                              max_norm=case["max_norm"], norm_type=case["norm_type"])
    want = np.array(case["expected"], dtype=np.float32).reshape(got.shape)
    assert np.all(np.abs(got - want) <= 1e-5 * (1 + np.abs(want)))


@pytest.mark.parametrize("case", FM["cases"], ids=[c["name"] for c in FM["cases"]])
def test_fm_score(gstore, case):
    ffm = case["model"] == "ffm"
    got = embstore.fm_score(
        gstore, model=case["model"], vectors=case["vectors"], biases=case["biases"],
        bias=case["bias"], input=arr(case["indices"], case["index_dtype"], case["indices_shape"]),
        bag_ends=arr(case["ends"], case["ends_dtype"], case["ends_shape"]),
        per_sample_weights=arr(case["weights"], np.float32, case["indices_shape"]),
        fields=arr(case["fields"], np.int64, case["fields_shape"]) if ffm else None,
        num_fields=case["num_fields"] if ffm else 0)
    want = np.array(case["expected"], dtype=np.float32)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= 1e-4 * (1 + np.abs(want)))


def test_max_norm_left_the_tables_as_stored(gstore):
    # Every max_norm case above ran against these tables; they are still the files' rows.
    for name, t in EB["tables"].items():
        assert np.array_equal(gstore.table(name).numpy(), np.load(GOLDEN / t["file"])), name
