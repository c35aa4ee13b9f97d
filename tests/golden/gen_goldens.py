#!/usr/bin/python3
"""Golden-file generator for embstore's embedding-bag queries.

How to run (from the repository root; regenerates everything in tests/golden/):

    /usr/bin/python3 tests/golden/gen_goldens.py

Use Debian's /usr/bin/python3 with python3-torch (1.13) and python3-numpy; the pyenv
`python3` on PATH has no torch. The output is deterministic: fixed seeds, one torch
thread, so running it twice gives byte-identical files.

What it writes (see README.md in this folder for the schema):
  tables/*.npy          small float32, C-order, 2-D tables (no NaN/Inf)
  embedding_bag.json    "cases": outputs of torch.nn.functional.embedding_bag, each on a
                        fresh clone of the table (max_norm mutates torch's weight);
                        "extension_cases": things torch refuses (weighted max, weighted
                        mean, batched bags with inclusive end offsets), computed here with
                        plain torch tensor ops straight from ../shared/SEMANTICS.md (docs/semantics.md).

Every torch case is also recomputed by the reference `ref_pool` below (written from
SEMANTICS.md, no embedding_bag) and the two must agree; so the extension cases come from
code that has been checked against torch on everything torch can do.

torch 1.13 quirks this generator works around (details in README.md):
  * per_sample_weights with mode mean/max raises NotImplementedError -> extension cases.
  * include_last_offset=True with indices after offsets[-1] ("trailing" indices): sum
    without padding_idx ignores them (matches our spec); mean divides the last bag by the
    count up to the end of `indices`; max, and sum/mean with padding_idx, corrupt the heap
    (glibc abort / segfault; out-of-bounds writes, so a clean exit proves nothing). Such
    calls run only in a child process. A case is taken from torch only when the call is not
    one of the memory-unsafe kinds, the child exits cleanly AND agrees with the spec;
    otherwise the expected output comes from the spec and the case carries
    "source": "spec" and a "note".
  * 2-D input with include_last_offset=True silently drops the last row (and with max
    corrupts memory); not emitted (our spec does not define include_last_offset for 2-D).
  * Mixed int32/int64 indices/offsets are accepted in both directions; emitted.
  * norm_type 0.5, 1, 2, 3, inf and -inf are accepted for max_norm; emitted. norm_type 0
    is accepted too (torch counts non-zeros) but our formula is undefined there: skipped.
"""
import json
import math
import os

import numpy as np
import torch

from golden_lib import (
    Builder,
    GENERATOR,
    JSON_PATH,
    QUIRKS,
    SEED_EXT,
    TABLE_DIR,
    bags_of,
    f32,
    layout_arrays,
    make_tables,
    norm_json,
    norm_tag,
    pick_max_norm,
    ref_pool,
)

# ----------------------------------------------------------------------------------------
# The torch cases
# ----------------------------------------------------------------------------------------

TABLES_CYCLE = ["t_d37", "t_d8", "t_d64", "t_d1", "t_d8_ties"]
DT_CYCLE = [("int64", "int64"), ("int32", "int32"), ("int32", "int64"), ("int64", "int32")]
NORM_CYCLE = [None, 2.0, None, 1.0, 3.0, None, math.inf, 0.5, None, -math.inf]
ALL_NORMS = [1.0, 2.0, 3.0, 0.5, math.inf, -math.inf]
MODES = ["sum", "mean", "max"]


def torch_cases(bld):
    rng = bld.rng
    k = 0
    for mode in MODES:
        # A. grid: layout x padding (none / positive / negative), two variants each,
        #    cycling table, dtypes, max_norm and (sum) per_sample_weights.
        for layout in ["offsets", "ilo", "2d"]:
            for pad_kind in ["none", "pos", "neg"]:
                for variant in range(2):
                    table = TABLES_CYCLE[k % len(TABLES_CYCLE)]
                    idt, odt = DT_CYCLE[k % len(DT_CYCLE)]
                    p = NORM_CYCLE[k % len(NORM_CYCLE)]
                    k += 1
                    rows = bld.rows(table)
                    pad = {"none": None, "pos": int(rng.integers(0, rows)),
                           "neg": -int(rng.integers(1, rows + 1))}[pad_kind]
                    pn = None if pad is None else pad % rows
                    B = int(rng.integers(2, 6))
                    if layout == "2d":
                        N = int(rng.integers(1, 6))
                        lengths = [N] * B
                    else:
                        lengths = [int(x) for x in rng.integers(1, 6, size=B)]
                    bags = bld.rand_bags(table, lengths, pad=pn,
                                         all_pad_bag=(1 if pad is not None and variant == 1 else None))
                    tags = ("all_padding_bag",) if pad is not None and variant == 1 else ()
                    bld.add(mode, table, layout, bags, idx_dtype=idt, off_dtype=odt,
                            psw=(mode == "sum" and variant == 0) or (mode == "sum" and pad_kind == "pos"),
                            padding_idx=pad, max_norm=None if p is None else "mid",
                            norm_type=2.0 if p is None else p, tag="grid", tags=tags)

        # B. max_norm sweep: every norm type on two tables, rows above and below it.
        for j, p in enumerate(ALL_NORMS):
            for v, table in enumerate(["t_d37", "t_d64"] if j % 2 == 0 else ["t_d8", "t_d1"]):
                layout = ["offsets", "ilo", "2d"][(j + v) % 3]
                B = 4
                lengths = [3] * B if layout == "2d" else [int(x) for x in rng.integers(1, 6, size=B)]
                bags = bld.rand_bags(table, lengths)
                idt, odt = DT_CYCLE[(j + v) % 4]
                bld.add(mode, table, layout, bags, idx_dtype=idt, off_dtype=odt,
                        psw=(mode == "sum" and v == 0), max_norm="mid", norm_type=p,
                        tag="sweep")
        # max_norm exactly at a row's norm (row 3 of t_d8 is [3,4,0,...]): not renormed.
        for p, mn in [(2.0, 5.0), (1.0, 7.0), (math.inf, 4.0)]:
            bags = [[3, 0], [5, 3, 3], [3]]
            bld.add(mode, "t_d8", "offsets", bags, max_norm=mn, norm_type=p,
                    psw=(mode == "sum"), tag="exact_threshold", tags=("exact_threshold",))
        # max_norm renormalizing every row, and none.
        bld.add(mode, "t_d37", "offsets", bld.rand_bags("t_d37", [2, 3, 1]),
                max_norm="all", norm_type=2.0, tag="all_rows_renormed")
        bld.add(mode, "t_d64", "ilo", bld.rand_bags("t_d64", [3, 2]),
                max_norm="none", norm_type=1.0, tag="no_row_renormed")

        # C. empty bags: at start, middle, end, consecutive, and no indices at all.
        patterns = {
            "empty_first": [0, 3, 2],
            "empty_middle": [2, 0, 3],
            "empty_last": [3, 2, 0],
            "empty_consecutive": [2, 0, 0, 0, 1],
            "empty_first_and_last": [0, 2, 3, 0],
        }
        for i, (tag, lengths) in enumerate(patterns.items()):
            for layout in ["offsets", "ilo"]:
                table = ["t_d8", "t_d37", "t_d1", "t_d8_ties", "t_d64"][i]
                idt, odt = DT_CYCLE[(i + (layout == "ilo")) % 4]
                pad = 2 if (i % 2 == 1 and layout == "ilo") else None
                bld.add(mode, table, layout, bld.rand_bags(table, lengths, pad=pad),
                        idx_dtype=idt, off_dtype=odt, psw=(mode == "sum" and layout == "offsets"),
                        padding_idx=pad, max_norm=("mid" if i == 2 else None),
                        tag=tag, tags=("empty:" + tag,))
        for layout in ["offsets", "ilo"]:
            bld.add(mode, "t_d8", layout, [[], [], []], idx_dtype="int32",
                    off_dtype="int64", psw=(mode == "sum"), tag="no_indices",
                    tags=("empty:no_indices",))

        # D. all-padding bags.
        bld.add(mode, "t_d37", "offsets", [[4, 4], [1, 4, 2], [4]], padding_idx=4,
                psw=(mode == "sum"), tag="all_padding", tags=("all_padding_bag",))
        bld.add(mode, "t_d8", "ilo", [[9], [9, 9, 9], [2, 9]], padding_idx=-1,
                idx_dtype="int32", off_dtype="int32", max_norm="mid",
                tag="all_padding", tags=("all_padding_bag",))
        bld.add(mode, "t_d64", "2d", [[0, 0, 0], [5, 0, 7], [0, 0, 0]], padding_idx=0,
                idx_dtype="int32", psw=(mode == "sum"), tag="all_padding",
                tags=("all_padding_bag",))
        bld.add(mode, "t_d1", "offsets", [[6], [3, 3]], padding_idx=-4,
                idx_dtype="int64", off_dtype="int32", tag="all_padding",
                tags=("all_padding_bag",))

        # E. index/offset dtype combinations in each layout.
        for i, (idt, odt) in enumerate(DT_CYCLE):
            for layout in ["offsets", "ilo", "2d"]:
                if layout == "2d" and i >= 2:
                    continue  # offsets are None with 2-D input: only the index dtype varies
                table = TABLES_CYCLE[(i + 2) % len(TABLES_CYCLE)]
                lengths = [2, 2, 2] if layout == "2d" else [2, 1, 4]
                bld.add(mode, table, layout, bld.rand_bags(table, lengths),
                        idx_dtype=idt, off_dtype=odt, psw=(mode == "sum" and i % 2 == 0),
                        tag="dtypes")

        # F. odd dims in every layout.
        for table in ["t_d37", "t_d1"]:
            for layout in ["offsets", "ilo", "2d"]:
                lengths = [4, 4] if layout == "2d" else [1, 5, 2]
                bld.add(mode, table, layout, bld.rand_bags(table, lengths),
                        psw=(mode == "sum"), tag="odd_dim",
                        idx_dtype="int32" if layout == "ilo" else "int64",
                        off_dtype="int32" if layout == "ilo" else "int64")

        # G. ties (max: the first entry wins; visible with 0.0 vs -0.0).
        bld.add(mode, "t_d8_ties", "offsets", [[2, 8], [8, 2], [0, 5], [5, 0, 2]],
                tag="ties_signed_zero", tags=("ties",))
        bld.add(mode, "t_d8_ties", "ilo", bld.rand_bags("t_d8_ties", [5, 6, 4]),
                idx_dtype="int32", off_dtype="int32", tag="ties_repeated", tags=("ties",))
        bld.add(mode, "t_d37", "2d", [[4, 9, 16], [16, 9, 4]], tag="ties_shared_columns",
                tags=("ties",))
        bld.add(mode, "t_d1", "offsets", [[2, 5], [5, 2, 6], [6, 6]], tag="ties_d1",
                psw=(mode == "sum"), tags=("ties",))

        # H. duplicate indices inside a bag (and renormalized once with max_norm).
        bld.add(mode, "t_d8", "offsets", [[1, 1, 1], [2, 7, 2, 7], [4]],
                psw=(mode == "sum"), tag="duplicates", tags=("duplicates",))
        bld.add(mode, "t_d37", "2d", [[3, 3, 3, 8], [8, 8, 3, 3]], max_norm="mid",
                norm_type=2.0, idx_dtype="int32", tag="duplicates", tags=("duplicates",))

        # I. include_last_offset with indices after the last offset.
        bld.add(mode, "t_d8", "ilo", [[1, 2], [3]], trailing=[4, 5, 6],
                tag="", tags=("trailing",))
        bld.add(mode, "t_d37", "ilo", [[1, 2], [], [7, 8]], trailing=[9],
                psw=(mode == "sum"), idx_dtype="int32", off_dtype="int32",
                tags=("trailing",))
        bld.add(mode, "t_d8", "ilo", [[1, 0], [0, 3]], trailing=[0, 2], padding_idx=0,
                tags=("trailing",))
        bld.add(mode, "t_d8", "ilo", [[]], trailing=[1, 2], tag="all_trailing",
                tags=("trailing",))
        # offsets == [0] with include_last_offset: zero bags, output [0, dim].
        bld.add(mode, "t_d8", "ilo", [], tag="zero_bags", tags=("zero_bags",))

        # J. misc: one bag with one index; a bag holding every row.
        bld.add(mode, "t_d64", "offsets", [[17]], tag="single")
        bld.add(mode, "t_d64", "offsets", [list(range(50))], psw=(mode == "sum"),
                tag="every_row")


# ----------------------------------------------------------------------------------------
# Extension cases (SEMANTICS.md "Extensions"), from ref_pool
# ----------------------------------------------------------------------------------------

def ext_case(bld, kind, mode, table, layout, bags, *, idx_dtype="int64", off_dtype="int64",
             padding_idx=None, max_norm=None, norm_type=2.0, weights=None, tag=""):
    rows = bld.rows(table)
    W = bld.W[table]
    pad_norm = None if padding_idx is None else padding_idx % rows
    indices, offsets, shape = layout_arrays(layout, bags)
    if layout == "2d":
        off_dtype = None
    if weights is None:
        weights = bld.rand_weights(len(indices))
    if isinstance(max_norm, str):
        used = sorted(set(r for r in indices if r != pad_norm)) or [0]
        max_norm = pick_max_norm(W, used, norm_type, max_norm)
    if max_norm is not None:
        bld.check_margin(W, indices, pad_norm, max_norm, norm_type, kind)
    out = ref_pool(W, indices, weights, bags_of(layout, len(indices), offsets, shape),
                   mode, pad_norm, max_norm, norm_type)
    parts = [kind, layout, table, idx_dtype[3:] + ("" if off_dtype is None else "_" + off_dtype[3:])]
    if padding_idx is not None:
        parts.append("pad%s" % ("m%d" % -padding_idx if padding_idx < 0 else padding_idx))
    if max_norm is not None:
        parts.append("maxnorm_p%s" % norm_tag(norm_type))
    if tag:
        parts.append(tag)
    return {
        "kind": kind, "name": bld.unique_name("_".join(parts)), "table": table, "mode": mode,
        "indices": indices, "indices_shape": shape, "index_dtype": idx_dtype,
        "offsets": offsets, "offsets_dtype": off_dtype, "include_last_offset": layout == "ilo",
        "per_sample_weights": weights, "padding_idx": padding_idx, "max_norm": max_norm,
        "norm_type": norm_json(norm_type), "expected_shape": list(out.shape),
        "expected": [float(x) for x in out.flatten().tolist()], "source": "spec",
    }


def batched_pool(W, indices, weights, ends, mode, pad_norm, max_norm, norm_type):
    """SEMANTICS.md batched bags: bag m of sample b holds items k with
    ends[b][m-1] < k <= ends[b][m] (ends[b][-1] = -1); later items are padding."""
    B, N = len(indices), len(indices[0])
    K = len(ends[0])
    flat_idx = [r for row in indices for r in row]
    flat_w = [w for row in weights for w in row]
    bags = []
    for b in range(B):
        prev = -1
        for m in range(K):
            e = ends[b][m]
            assert prev <= e <= N - 1 and e >= -1
            bags.append([b * N + k for k in range(prev + 1, e + 1)])
            prev = e
    out = ref_pool(W, flat_idx, flat_w, bags, mode, pad_norm, max_norm, norm_type)
    return out.reshape(B, K, W.shape[1])


def batched_case(bld, name, table, mode, indices, weights, ends, *, idx_dtype="int64",
                 ends_dtype="int64", padding_idx=None, max_norm=None, norm_type=2.0):
    W = bld.W[table]
    rows = bld.rows(table)
    pad_norm = None if padding_idx is None else padding_idx % rows
    if isinstance(max_norm, str):
        used = sorted(set(r for row in indices for r in row if r != pad_norm))
        max_norm = pick_max_norm(W, used, norm_type, max_norm)
    if max_norm is not None:
        bld.check_margin(W, [r for row in indices for r in row], pad_norm, max_norm, norm_type, name)
    out = batched_pool(W, indices, weights, ends, mode, pad_norm, max_norm, norm_type)
    return {
        "kind": "batched", "name": bld.unique_name(name), "table": table, "mode": mode,
        "indices": [r for row in indices for r in row],
        "indices_shape": [len(indices), len(indices[0])], "index_dtype": idx_dtype,
        "weights": [w for row in weights for w in row],
        "ends": [e for row in ends for e in row], "ends_shape": [len(ends), len(ends[0])],
        "ends_dtype": ends_dtype, "padding_idx": padding_idx, "max_norm": max_norm,
        "norm_type": norm_json(norm_type), "expected_shape": list(out.shape),
        "expected": [float(x) for x in out.flatten().tolist()], "source": "spec",
    }


SEED003_PRINTED = [
    [[-0.0834, -0.0297, 0.1852, -0.0970], [0.1303, 0.1231, -0.0303, 0.1754],
     [-0.0424, -2.7630, 1.0265, -0.5921]],
    [[0.0763, -0.2697, 0.0458, -0.6370], [0.4215, 0.2613, -0.0726, 0.2714],
     [0.0861, -1.0124, 0.4394, -0.1466]],
    [[0.9096, -0.9380, 0.5059, -2.1014], [0.2433, -0.0717, 0.2183, -0.0541],
     [0.1722, -2.0247, 0.8788, -0.2933]],
]


def extension_cases(bld):
    out = []
    rng = np.random.default_rng(SEED_EXT)
    bld.rng = rng
    k = 0
    # Weighted max and weighted mean (torch refuses per_sample_weights with both).
    for kind, mode in [("weighted_max", "max"), ("weighted_mean", "mean")]:
        for layout in ["offsets", "ilo", "2d"]:
            for pad_kind in ["none", "pos", "neg"]:
                table = TABLES_CYCLE[k % len(TABLES_CYCLE)]
                idt, odt = DT_CYCLE[k % len(DT_CYCLE)]
                k += 1
                rows = bld.rows(table)
                pad = {"none": None, "pos": int(rng.integers(0, rows)),
                       "neg": -int(rng.integers(1, rows + 1))}[pad_kind]
                pn = None if pad is None else pad % rows
                B = 4
                lengths = [3] * B if layout == "2d" else [int(x) for x in rng.integers(0, 5, size=B)]
                if layout != "2d":
                    lengths[0] = max(lengths[0], 1)
                bags = bld.rand_bags(table, lengths, pad=pn,
                                     all_pad_bag=(B - 1 if pad is not None else None))
                out.append(ext_case(bld, kind, mode, table, layout, bags, idx_dtype=idt,
                                    off_dtype=odt, padding_idx=pad, tag="grid"))
        # Non-mutating max_norm, every norm type.
        for j, p in enumerate(ALL_NORMS):
            table = ["t_d37", "t_d8", "t_d64", "t_d1", "t_d37", "t_d8"][j]
            layout = ["offsets", "ilo", "2d"][j % 3]
            lengths = [3, 3, 3] if layout == "2d" else [2, 4, 1]
            out.append(ext_case(bld, kind, mode, table, layout, bld.rand_bags(table, lengths),
                                max_norm="mid", norm_type=p, tag="maxnorm",
                                idx_dtype=DT_CYCLE[j % 4][0], off_dtype=DT_CYCLE[j % 4][1]))
        out.append(ext_case(bld, kind, mode, "t_d8", "offsets", [[3, 0], [3, 3, 5]],
                            max_norm=5.0, norm_type=2.0, tag="exact_threshold"))
        out.append(ext_case(bld, kind, mode, "t_d37", "ilo", [[4, 9, 2], [], [16]],
                            padding_idx=2, max_norm="mid", norm_type=2.0,
                            tag="maxnorm_pad_empty"))
        # Empty bags at start, middle, end; no indices at all.
        out.append(ext_case(bld, kind, mode, "t_d8", "offsets",
                            bld.rand_bags("t_d8", [0, 2, 0, 0, 3, 0]), tag="empty_bags"))
        out.append(ext_case(bld, kind, mode, "t_d64", "ilo",
                            bld.rand_bags("t_d64", [0, 3, 0]), tag="empty_bags",
                            idx_dtype="int32", off_dtype="int32"))
        out.append(ext_case(bld, kind, mode, "t_d8", "offsets", [[], []], tag="no_indices",
                            weights=[]))
        # Ties and signs: weights 1 on a tie table (first wins with 0.0 / -0.0), zero and
        # negative weights (w * x flips the sign; 0 * negative gives -0.0).
        out.append(ext_case(bld, kind, mode, "t_d8_ties", "offsets", [[2, 8], [8, 2], [0, 5]],
                            weights=[1.0] * 6, tag="ties_unit_weights"))
        out.append(ext_case(bld, kind, mode, "t_d8_ties", "offsets",
                            [[0, 1, 3], [7, 7], [2, 8]],
                            weights=[0.0, -1.0, 2.0, -0.5, 0.5, 0.0, 0.0], tag="zero_negative_weights"))
        out.append(ext_case(bld, kind, mode, "t_d1", "2d", [[2, 5, 6], [6, 2, 5]],
                            weights=[-1.0, -1.0, 1.0, 2.0, 0.5, 0.25], tag="ties_d1"))
        out.append(ext_case(bld, kind, mode, "t_d8", "offsets", [[1, 1, 1], [2, 7, 2]],
                            tag="duplicates"))
        out.append(ext_case(bld, kind, mode, "t_d37", "ilo", [[4, 4], [4, 1]],
                            padding_idx=-19, idx_dtype="int32", off_dtype="int64",
                            tag="all_padding"))

    # Batched bags with inclusive end offsets.
    seed_idx = [[0, 4, 2, 5], [1, 1, 4, 5], [1, 2, 3, 5]]
    seed_w = [[f32(x) for x in r] for r in [[0.2, 0.1, 0.9, 0.8], [0.5, 0.2, 0.3, 0.3], [2, -2, 0.3, 0.6]]]
    seed_ends = [[0, 1, 3], [0, 2, 3], [1, 2, 3]]
    c = batched_case(bld, "seed003_worked_example", "seed003", "sum", seed_idx, seed_w,
                     seed_ends, idx_dtype="int32", ends_dtype="int32")
    got = np.array(c["expected"]).reshape(3, 3, 4)
    err = np.abs(got - np.array(SEED003_PRINTED)).max()
    assert err <= 1e-3, "seed003 worked example off by %g" % err
    QUIRKS.append("seed003 worked example reproduced: max abs diff to the printed output %.2g" % err)
    out.append(c)
    out.append(batched_case(bld, "batched_seed003_mean", "seed003", "mean", seed_idx, seed_w, seed_ends))
    out.append(batched_case(bld, "batched_seed003_max", "seed003", "max", seed_idx, seed_w, seed_ends))
    out.append(batched_case(bld, "batched_seed003_pad5", "seed003", "sum", seed_idx, seed_w,
                            seed_ends, padding_idx=5))

    def rand_batch(table, B, N, K, pad=None):
        rows = bld.rows(table)
        idx = [[int(x) for x in rng.integers(0, rows, size=N)] for _ in range(B)]
        if pad is not None:
            idx = [[pad if rng.random() < 0.25 else r for r in row] for row in idx]
        w = [[f32(round(float(x), 3)) for x in rng.uniform(-1.5, 2.0, size=N)] for _ in range(B)]
        ends = []
        for b in range(B):
            e = sorted(int(x) for x in rng.integers(-1, N, size=K))
            ends.append(e)
        return idx, w, ends

    combos = [
        # table, mode, B, N, K, idt, edt, pad, max_norm, p
        ("t_d8", "sum", 3, 6, 3, "int64", "int64", None, None, 2.0),
        ("t_d37", "sum", 2, 5, 2, "int32", "int32", None, "mid", 2.0),
        ("t_d64", "sum", 2, 7, 3, "int64", "int32", 3, None, 2.0),
        ("t_d1", "sum", 4, 4, 2, "int32", "int64", -2, None, 2.0),
        ("t_d8_ties", "sum", 3, 5, 4, "int64", "int64", None, "mid", 1.0),
        ("t_d8", "mean", 3, 6, 3, "int64", "int64", None, None, 2.0),
        ("t_d37", "mean", 2, 5, 3, "int32", "int32", 7, None, 2.0),
        ("t_d64", "mean", 2, 6, 2, "int64", "int64", None, "mid", math.inf),
        ("t_d8", "max", 3, 6, 3, "int64", "int64", None, None, 2.0),
        ("t_d8_ties", "max", 3, 5, 3, "int32", "int32", 0, None, 2.0),
        ("t_d37", "max", 2, 5, 2, "int64", "int64", None, "mid", 3.0),
        ("t_d1", "max", 3, 4, 3, "int64", "int32", None, None, 2.0),
    ]
    for table, mode, B, N, K, idt, edt, pad, mn, p in combos:
        rows = bld.rows(table)
        idx, w, ends = rand_batch(table, B, N, K, None if pad is None else pad % rows)
        name = "batched_%s_%s_%s_%s" % (mode, table, idt[3:], edt[3:])
        if pad is not None:
            name += "_pad%s" % ("m%d" % -pad if pad < 0 else pad)
        if mn is not None:
            name += "_maxnorm_p%s" % norm_tag(p)
        out.append(batched_case(bld, name, table, mode, idx, w, ends, idx_dtype=idt,
                                ends_dtype=edt, padding_idx=pad, max_norm=mn, norm_type=p))
    # Hand-made: ends of -1 (empty first bags), equal ends (empty middle bags), trailing
    # padding items after the last end, all items in the last bag.
    for mode in MODES:
        out.append(batched_case(
            bld, "batched_%s_edge_ends" % mode, "t_d8", mode,
            [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0], [2, 2, 2, 2, 2], [3, 1, 4, 1, 5]],
            [[1.0, 2.0, -1.0, 0.5, 3.0], [0.25, 1.0, 1.0, -2.0, 1.0],
             [1.0, 1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 1.5, 0.0, 2.0]],
            [[-1, 1, 1, 3], [-1, -1, -1, -1], [0, 0, 4, 4], [4, 4, 4, 4]]))
    out.append(batched_case(bld, "batched_max_ties_signed_zero", "t_d8_ties", "max",
                            [[2, 8, 8, 2], [0, 5, 2, 8]], [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, -1.0]],
                            [[1, 3], [1, 3]]))
    return out


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------

def dump_json(tables, cases, ext):
    clean = [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases]
    head = {
        "generator": GENERATOR,
        "torch_version": torch.__version__,
        "tables": {name: {"file": "tables/%s.npy" % name, "rows": int(a.shape[0]),
                          "dim": int(a.shape[1])} for name, a in tables.items()},
    }
    lines = ["{"]
    for key, val in head.items():
        lines.append("  %s: %s," % (json.dumps(key), json.dumps(val)))
    for key, items, last in (("cases", clean, False), ("extension_cases", ext, True)):
        lines.append('  "%s": [' % key)
        lines.append(",\n".join("    " + json.dumps(c, allow_nan=False) for c in items))
        lines.append("  ]" + ("" if last else ","))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # must parse
    with open(JSON_PATH, "w") as f:
        f.write(text)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tables = make_tables()
    os.makedirs(TABLE_DIR, exist_ok=True)
    for name, arr in tables.items():
        np.save(os.path.join(TABLE_DIR, name + ".npy"), arr)

    bld = Builder(tables)
    torch_cases(bld)
    ext = extension_cases(bld)
    # The generator never modified its tables (each torch call got a fresh clone).
    for name, arr in tables.items():
        assert np.array_equal(bld.W[name].numpy(), arr, equal_nan=False), name

    # Every option appears in every mode where torch accepts it.
    need = ["layout:offsets", "layout:ilo", "layout:2d", "pad:none", "pad:pos", "pad:neg",
            "norm:none", "all_padding_bag", "ties", "duplicates", "trailing", "exact_threshold",
            "dtypes:int64/int64", "dtypes:int32/int32", "dtypes:int32/int64",
            "dtypes:int64/int32", "dtypes:int32/None", "dtypes:int64/None",
            "empty:empty_first", "empty:empty_middle", "empty:empty_last",
            "empty:empty_consecutive", "empty:no_indices"]
    need += ["norm:" + norm_tag(p) for p in ALL_NORMS]
    need += ["table:" + t for t in TABLES_CYCLE]
    for mode in MODES:
        missing = [n for n in need if n not in bld.coverage[mode]]
        assert not missing, (mode, missing)
    assert "psw:True" in bld.coverage["sum"]

    dump_json(tables, bld.cases, ext)

    counts = {}
    for c in bld.cases:
        key = "cases/%s/%s" % (c["mode"], c["source"])
        counts[key] = counts.get(key, 0) + 1
    for c in ext:
        key = "extension_cases/%s/%s" % (c["kind"], c["mode"])
        counts[key] = counts.get(key, 0) + 1
    for key in sorted(counts):
        print("%-40s %d" % (key, counts[key]))
    print("total: %d cases, %d extension cases" % (len(bld.cases), len(ext)))
    for q in sorted(set(QUIRKS)):
        print("note:", q)


if __name__ == "__main__":
    main()
