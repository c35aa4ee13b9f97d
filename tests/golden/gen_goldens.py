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
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE_DIR = os.path.join(HERE, "tables")
JSON_PATH = os.path.join(HERE, "embedding_bag.json")
GENERATOR = "tests/golden/gen_goldens.py"

SEED_TABLES = 20240501
SEED_CASES = 1013
SEED_EXT = 7919

# Tolerances used to cross-check torch against the reference implementation.
RTOL = 1e-5
ATOL = 1e-5
# A row whose norm is this close (relative) to max_norm makes a case fragile; refused.
NORM_MARGIN = 1e-3

DTYPES = {"int32": torch.int32, "int64": torch.int64}

QUIRKS = []  # human-readable log, printed at the end


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------

def f32(x):
    return float(np.float32(x))


def make_tables():
    rng = np.random.default_rng(SEED_TABLES)

    def rand_table(rows, dim):
        base = rng.standard_normal((rows, dim))
        # Per-row scale spreads the L2 norms over roughly [0.45, 5], so that a max_norm
        # in the middle renormalizes some rows and leaves others alone.
        scale = np.exp(rng.uniform(-1.2, 1.2, size=(rows, 1))) * 1.5 / math.sqrt(dim)
        return (base * scale).astype(np.float32)

    t = {}
    w = rand_table(23, 37)
    w[9, :13] = w[4, :13]          # max ties between rows 4 and 9 in columns 0..12
    w[16, 20:] = w[4, 20:]         # ... and between rows 4 and 16 in columns 20..36
    t["t_d37"] = w

    w = rand_table(10, 8)
    w[3] = [3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # exact norms: L1 7, L2 5, Linf 4
    w[6, :4] = w[1, :4]            # max ties between rows 1 and 6 in columns 0..3
    t["t_d8"] = w

    w = rand_table(50, 64)
    w[7, :32] = w[3, :32]          # max ties between rows 3 and 7 in columns 0..31
    t["t_d64"] = w

    w = rand_table(7, 1)
    w[5] = w[2]                    # tie (whole row)
    w[6] = -abs(w[2])              # a negative value
    t["t_d1"] = w

    # Repeated values, including both signed zeros, for tie tests (first entry wins, and
    # with 0.0 vs -0.0 the winner is visible in the sign bit).
    vals = np.array([-2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0], dtype=np.float32)
    w = vals[rng.integers(0, len(vals), size=(12, 8))]
    w[5] = w[0]                    # identical rows
    w[2] = [0.0, -0.0, 0.0, -0.0, 1.0, 1.0, -1.0, -1.0]
    w[8] = [-0.0, 0.0, -0.0, 0.0, 1.0, 1.0, -1.0, -1.0]
    t["t_d8_ties"] = np.ascontiguousarray(w, dtype=np.float32)

    # The 6x4 table of the worked example in ../shared/seeds/003_*.txt (as printed).
    t["seed003"] = np.array([
        [-0.4172, -0.1485, 0.9262, -0.4852],
        [0.1526, -0.5395, 0.0916, -1.2741],
        [-0.3022, -0.0705, -0.1614, -0.2234],
        [0.8110, -0.2389, 0.7278, -0.1804],
        [1.3034, 1.2308, -0.3032, 1.7542],
        [0.2870, -3.3745, 1.4647, -0.4888],
    ], dtype=np.float32)

    for name, arr in t.items():
        assert arr.dtype == np.float32 and arr.ndim == 2 and arr.flags.c_contiguous
        assert np.all(np.isfinite(arr)), name
    return t


# ----------------------------------------------------------------------------------------
# Reference implementation (SEMANTICS.md), plain torch tensor ops, no embedding_bag.
# ----------------------------------------------------------------------------------------

def norm_p(row_f32, p):
    """norm_p as SEMANTICS.md defines it, evaluated in float64."""
    r = row_f32.double().abs()
    if p == math.inf:
        return float(r.max())
    if p == -math.inf:
        return float(r.min())
    return float(r.pow(p).sum().pow(1.0 / p))


def renormed_row(row_f32, max_norm, p):
    n = norm_p(row_f32, p)
    if n > max_norm:
        scale = max_norm / (n + 1e-7)
        return row_f32 * torch.tensor(scale, dtype=torch.float32)
    return row_f32


def ref_pool(W, indices, weights, bags, mode, padding_idx, max_norm, norm_type):
    """Pools bags per SEMANTICS.md.

    W: float32 [rows, dim]; indices: flat list of ints; weights: flat list of floats or
    None; bags: list of lists of positions into `indices`; padding_idx: normalized
    (non-negative) or None. Returns float32 [len(bags), dim]. W is never modified.
    """
    dim = W.shape[1]
    cache = {}

    def row(r):
        if r not in cache:
            v = W[r]
            if max_norm is not None:
                v = renormed_row(v, max_norm, norm_type)
            cache[r] = v
        return cache[r]

    out = torch.zeros((len(bags), dim), dtype=torch.float32)
    for b, positions in enumerate(bags):
        live = [j for j in positions if indices[j] != padding_idx]
        if not live:
            continue
        if mode in ("sum", "mean"):
            acc = torch.zeros(dim, dtype=torch.float64)
            for j in live:
                w = 1.0 if weights is None else weights[j]
                acc += w * row(indices[j]).double()
            if mode == "mean":
                acc /= len(live)
            out[b] = acc.float()
        elif mode == "max":
            best = None
            for j in live:
                v = row(indices[j])
                if weights is not None:
                    v = torch.tensor(weights[j], dtype=torch.float32) * v
                best = v.clone() if best is None else torch.where(v > best, v, best)
            out[b] = best
        else:
            raise ValueError(mode)
    return out


def bags_of(layout, n, offsets, shape):
    """Positions of each bag for a torch-style query, as our spec defines them."""
    if layout == "2d":
        B, N = shape
        return [list(range(b * N, (b + 1) * N)) for b in range(B)]
    if layout == "ilo":
        return [list(range(offsets[b], offsets[b + 1])) for b in range(len(offsets) - 1)]
    ends = list(offsets[1:]) + [n]
    return [list(range(offsets[b], ends[b])) for b in range(len(offsets))]


def same_output(a, b, exact=False):
    if a.shape != b.shape:
        return False
    if exact:
        return bool(torch.equal(a, b)) and bool(torch.equal(torch.signbit(a), torch.signbit(b)))
    return bool(torch.allclose(a, b, rtol=RTOL, atol=ATOL))


# ----------------------------------------------------------------------------------------
# Calling torch
# ----------------------------------------------------------------------------------------

CHILD = r"""
import json, sys, torch, torch.nn.functional as F
torch.set_num_threads(1)
a = json.load(sys.stdin)
W = torch.tensor(a["W"], dtype=torch.float32)
dt = {"int32": torch.int32, "int64": torch.int64}
idx = torch.tensor(a["indices"], dtype=dt[a["index_dtype"]]).reshape(a["indices_shape"])
off = None if a["offsets"] is None else torch.tensor(a["offsets"], dtype=dt[a["offsets_dtype"]])
psw = None if a["psw"] is None else torch.tensor(a["psw"], dtype=torch.float32).reshape(a["indices_shape"])
out = F.embedding_bag(idx, W, off, max_norm=a["max_norm"], norm_type=a["norm_type"],
                      mode=a["mode"], per_sample_weights=psw,
                      include_last_offset=a["ilo"], padding_idx=a["padding_idx"])
print(json.dumps({"shape": list(out.shape), "values": out.flatten().tolist()}))
"""


def torch_in_child(W, c):
    """Runs one embedding_bag call in a child process (for calls that may corrupt memory).

    Returns (tensor or None, description of what happened).
    """
    args = {
        "W": W.tolist(), "indices": c["indices"], "indices_shape": c["indices_shape"],
        "index_dtype": c["index_dtype"], "offsets": c["offsets"],
        "offsets_dtype": c["offsets_dtype"], "psw": c["per_sample_weights"],
        "max_norm": c["max_norm"], "norm_type": c["_norm_type"], "mode": c["mode"],
        "ilo": c["include_last_offset"], "padding_idx": c["padding_idx"],
    }
    p = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(args),
                       capture_output=True, text=True)
    if p.returncode != 0 or p.stderr.strip():
        why = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        return None, "child exited with status %d: %s" % (p.returncode, why)
    r = json.loads(p.stdout)
    return torch.tensor(r["values"], dtype=torch.float32).reshape(r["shape"]), "ok"


def torch_direct(W, c):
    idx = torch.tensor(c["indices"], dtype=DTYPES[c["index_dtype"]]).reshape(c["indices_shape"])
    off = None
    if c["offsets"] is not None:
        off = torch.tensor(c["offsets"], dtype=DTYPES[c["offsets_dtype"]])
    psw = None
    if c["per_sample_weights"] is not None:
        psw = torch.tensor(c["per_sample_weights"], dtype=torch.float32).reshape(c["indices_shape"])
    weight = W.clone()  # fresh clone: max_norm renormalizes torch's weight in place
    out = F.embedding_bag(idx, weight, off, max_norm=c["max_norm"],
                          norm_type=c["_norm_type"], mode=c["mode"],
                          per_sample_weights=psw,
                          include_last_offset=c["include_last_offset"],
                          padding_idx=c["padding_idx"])
    return out


# ----------------------------------------------------------------------------------------
# Case construction
# ----------------------------------------------------------------------------------------

def norm_json(p):
    if p == math.inf:
        return "inf"
    if p == -math.inf:
        return "-inf"
    return float(p)


def norm_tag(p):
    return {math.inf: "inf", -math.inf: "neginf", 0.5: "0.5"}.get(p, "%g" % p)


def round_sig(x, sig):
    if x == 0:
        return 0.0
    return float("%.*g" % (sig, x))


def pick_max_norm(W, rows, p, how):
    """A max_norm for rows `rows` of W such that, for how == "mid", some rows are renormed
    and others are not, with no row norm within NORM_MARGIN of the threshold."""
    norms = sorted(set(norm_p(W[r], p) for r in rows))
    if how == "all":        # every row (with a non-zero norm) is renormalized
        positive = [n for n in norms if n > 0] or [1.0]
        return round_sig(positive[0] * 0.5, 3)
    if how == "none":
        return round_sig(norms[-1] * 2.0 + 1.0, 3)
    if len(norms) == 1:
        return round_sig(norms[0] * 0.6, 3) if norms[0] > 0 else 0.5
    i = len(norms) // 2
    lo, hi = norms[i - 1], norms[i]
    for sig in (2, 3, 4, 6, 9, 12):
        cand = round_sig((lo + hi) / 2, sig)
        if lo * (1 + NORM_MARGIN) < cand < hi * (1 - NORM_MARGIN):
            return cand
    return (lo + hi) / 2


class Builder:
    def __init__(self, tables):
        self.tables = tables
        self.W = {k: torch.from_numpy(v.copy()) for k, v in tables.items()}
        self.rng = np.random.default_rng(SEED_CASES)
        self.cases = []
        self.names = set()
        self.coverage = {}

    # -- helpers ---------------------------------------------------------------------

    def rows(self, table):
        return self.tables[table].shape[0]

    def unique_name(self, base):
        name, k = base, 2
        while name in self.names:
            name = "%s_%d" % (base, k)
            k += 1
        self.names.add(name)
        return name

    def rand_weights(self, n):
        w = self.rng.uniform(-1.5, 2.0, size=n)
        w = np.round(w, 3)
        if n >= 4:
            w[self.rng.integers(0, n)] = 0.0
        return [f32(x) for x in w]

    def rand_bags(self, table, lengths, pad=None, pad_prob=0.3, all_pad_bag=None):
        """Random row lists, one per length; `pad` (normalized) injected with pad_prob;
        bag number all_pad_bag (if any) made entirely of padding."""
        rows = self.rows(table)
        bags = []
        for b, n in enumerate(lengths):
            bag = [int(x) for x in self.rng.integers(0, rows, size=n)]
            if pad is not None:
                if all_pad_bag is not None and b == all_pad_bag:
                    bag = [pad] * n
                else:
                    bag = [pad if self.rng.random() < pad_prob else r for r in bag]
            bags.append(bag)
        return bags

    def cover(self, mode, key):
        self.coverage.setdefault(mode, set()).add(key)

    # -- one case ----------------------------------------------------------------------

    def add(self, mode, table, layout, bags, *, idx_dtype="int64", off_dtype="int64",
            psw=False, padding_idx=None, max_norm=None, norm_type=2.0, trailing=None,
            tag="", tags=()):
        """layout: "offsets" (1-D, offsets = bag starts), "ilo" (1-D, include_last_offset)
        or "2d" (bags all the same length, offsets None). max_norm: None, a float, or
        "mid" / "all" / "none" (chosen from the rows used). trailing: rows appended after
        the last offset (ilo only)."""
        rows = self.rows(table)
        W = self.W[table]
        pad_norm = None if padding_idx is None else padding_idx % rows
        indices = [r for bag in bags for r in bag]
        offsets, shape = None, [len(indices)]
        if layout == "2d":
            assert len(set(len(b) for b in bags)) == 1 and len(bags[0]) > 0
            shape = [len(bags), len(bags[0])]
            off_dtype = None
        else:
            starts, pos = [], 0
            for bag in bags:
                starts.append(pos)
                pos += len(bag)
            offsets = starts + ([pos] if layout == "ilo" else [])
            if trailing:
                assert layout == "ilo"
                indices = indices + list(trailing)
                shape = [len(indices)]
        weights = self.rand_weights(len(indices)) if psw else None
        if isinstance(max_norm, str):
            used = sorted(set(r for r in indices if r != pad_norm)) or [0]
            max_norm = pick_max_norm(W, used, norm_type, max_norm)
        c = {
            "name": None, "table": table, "mode": mode,
            "indices": indices, "indices_shape": shape, "index_dtype": idx_dtype,
            "offsets": offsets, "offsets_dtype": off_dtype,
            "include_last_offset": layout == "ilo",
            "per_sample_weights": weights, "padding_idx": padding_idx,
            "max_norm": max_norm, "norm_type": norm_json(norm_type),
            "_norm_type": norm_type, "_layout": layout,
        }
        if max_norm is not None:
            self.check_margin(W, indices, pad_norm, max_norm, norm_type, c)
        bag_pos = bags_of(layout, len(indices), offsets, shape)
        ref = ref_pool(W, indices, weights, bag_pos, mode, pad_norm, max_norm, norm_type)
        source, note = "torch", None
        if trailing:
            # Always run in a child process: some of these calls corrupt torch's heap.
            got, what = torch_in_child(W, c)
            agrees = got is not None and same_output(got, ref, exact=(mode == "max" and max_norm is None))
            unsafe = mode == "max" or padding_idx is not None
            QUIRKS.append("include_last_offset + trailing indices, mode=%s psw=%s padding_idx=%s: %s"
                          % (mode, psw, padding_idx,
                             "torch agrees with the spec" if agrees else
                             (what if got is None else "torch disagrees with the spec")))
            if agrees and not unsafe:
                out = got
            else:
                # The note is fixed text (not torch's varying crash message) so that the
                # output stays byte-identical between runs.
                out, source = ref, "spec"
                if unsafe:
                    note = ("torch 1.13 writes out of bounds here (heap corruption, often an "
                            "abort); expected output computed from the spec")
                else:
                    note = ("torch 1.13 divides the last bag by the count of indices up to the "
                            "end of the input; expected output computed from the spec")
        else:
            try:
                out = torch_direct(W, c)
            except Exception as e:  # torch refused: do not emit
                QUIRKS.append("torch refused %s/%s: %s" % (mode, layout, str(e).splitlines()[0][:120]))
                return None
            if not same_output(out, ref, exact=(mode == "max" and max_norm is None)):
                raise AssertionError("torch and reference disagree on %s %s %s\n%s\n%s"
                                     % (mode, table, c, out, ref))
        # Name.
        parts = [mode, layout, table, idx_dtype[3:] + ("" if off_dtype is None else "_" + off_dtype[3:])]
        if psw:
            parts.append("psw")
        if padding_idx is not None:
            parts.append("pad%s" % ("m%d" % -padding_idx if padding_idx < 0 else padding_idx))
        if max_norm is not None:
            parts.append("maxnorm_p%s" % norm_tag(norm_type))
        if trailing:
            parts.append("trailing")
        if tag:
            parts.append(tag)
        c["name"] = self.unique_name("_".join(parts))
        c["expected_shape"] = list(out.shape)
        c["expected"] = [float(x) for x in out.flatten().tolist()]
        c["source"] = source
        if note:
            c["note"] = note
        # Coverage bookkeeping.
        self.cover(mode, "layout:" + layout)
        self.cover(mode, "table:" + table)
        self.cover(mode, "dtypes:%s/%s" % (idx_dtype, off_dtype))
        self.cover(mode, "psw:%s" % psw)
        self.cover(mode, "pad:%s" % ("none" if padding_idx is None else ("neg" if padding_idx < 0 else "pos")))
        self.cover(mode, "norm:%s" % ("none" if max_norm is None else norm_tag(norm_type)))
        for t in tags:
            self.cover(mode, t)
        self.cases.append(c)
        return c

    def check_margin(self, W, indices, pad_norm, max_norm, p, c):
        for r in set(indices):
            if r == pad_norm:
                continue
            n = norm_p(W[r], p)
            if n != max_norm and abs(n - max_norm) <= NORM_MARGIN * max_norm:
                raise AssertionError("row %d norm %r too close to max_norm %r in %s" % (r, n, max_norm, c))


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
    indices = [r for bag in bags for r in bag]
    offsets, shape = None, [len(indices)]
    if layout == "2d":
        shape = [len(bags), len(bags[0])]
        off_dtype = None
    else:
        starts, pos = [], 0
        for bag in bags:
            starts.append(pos)
            pos += len(bag)
        offsets = starts + ([pos] if layout == "ilo" else [])
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
