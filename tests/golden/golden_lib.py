#!/usr/bin/python3
"""Shared parts of the embedding-bag golden generator (gen_goldens.py): the tables, the
reference pooling written from SEMANTICS.md, the calls into torch (in a child process for
the memory-unsafe ones) and the case builder that cross-checks torch against the reference.

Imported by gen_goldens.py; not run on its own. Debian's /usr/bin/python3 with python3-torch
(1.13) and python3-numpy.
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


def layout_arrays(layout, bags):
    """The request torch gets for `bags` in `layout` ("offsets", "ilo" or "2d"):
    (indices, offsets or None, indices_shape)."""
    indices = [r for bag in bags for r in bag]
    if layout == "2d":
        return indices, None, [len(bags), len(bags[0])]
    starts, pos = [], 0
    for bag in bags:
        starts.append(pos)
        pos += len(bag)
    return indices, starts + ([pos] if layout == "ilo" else []), [len(indices)]


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
        if layout == "2d":
            assert len(set(len(b) for b in bags)) == 1 and len(bags[0]) > 0
            off_dtype = None
        indices, offsets, shape = layout_arrays(layout, bags)
        if layout != "2d":
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
