#!/usr/bin/env python3
"""Golden files for embstore's FM / FFM scoring (issue [fm]).

Run from the repository root with Debian's PyTorch:

    /usr/bin/python3 tests/golden/gen_fm_goldens.py

Writes tests/golden/fm.json and tests/golden/tables/fm_*.npy. The math is written here with
plain torch tensor ops straight from SEMANTICS.md; it never calls embstore.

Batched bags with inclusive end offsets: bag m of sample b holds items k with
ends[b, m-1] < k <= ends[b, m] (ends[b, -1] = -1); items after ends[b, K-1] are padding.
  V_m    = sum_k w_k * vectors[i_k]     (vectors: [rows, D])
  beta_m = sum_k w_k * biases[i_k]      (biases:  [rows, 1])
  FM:  y = bias + sum_m beta_m + 0.5 * sum_d ((sum_m V_m)^2 - sum_m V_m^2)[d]
  FFM: D = F * k; V_m[f] = V_m[f*k:(f+1)*k];
       y = bias + sum_m beta_m + sum_{m < m'} < V_m[f_m'], V_m'[f_m] >
"""
import json
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)))
torch.manual_seed(7)
rng = np.random.default_rng(7)


def pool(table, idx, w, ends):
    """[B,N] idx, [B,N] w, [B,K] ends -> [B,K,D] weighted sums (torch ops)."""
    B, N = idx.shape
    K = ends.shape[1]
    D = table.shape[1]
    rows = table[idx.long()] * w.unsqueeze(-1)  # [B,N,D]
    pos = torch.arange(N).view(1, N)
    out = torch.zeros(B, K, D, dtype=table.dtype)
    prev = torch.full((B,), -1, dtype=torch.long)
    for m in range(K):
        e = ends[:, m].long()
        mask = (pos > prev.view(B, 1)) & (pos <= e.view(B, 1))  # [B,N]
        out[:, m, :] = (rows * mask.unsqueeze(-1)).sum(dim=1)
        prev = e
    return out


def fm(vectors, biases, bias, idx, w, ends):
    V = pool(vectors, idx, w, ends)  # [B,K,D]
    beta = pool(biases, idx, w, ends)[:, :, 0]  # [B,K]
    s = V.sum(dim=1)
    inter = 0.5 * (s * s - (V * V).sum(dim=1)).sum(dim=1)
    return bias + beta.sum(dim=1) + inter


def ffm(vectors, biases, bias, idx, w, ends, fields, F):
    V = pool(vectors, idx, w, ends)  # [B,K,F*k]
    B, K, D = V.shape
    k = D // F
    V = V.view(B, K, F, k)
    beta = pool(biases, idx, w, ends)[:, :, 0]
    y = bias + beta.sum(dim=1)
    for b in range(B):
        acc = torch.zeros((), dtype=V.dtype)
        for m in range(K):
            for m2 in range(m + 1, K):
                acc = acc + (V[b, m, fields[b, m2]] * V[b, m2, fields[b, m]]).sum()
        y[b] = y[b] + acc
    return y


def rand_ends(B, N, K):
    ends = np.zeros((B, K), dtype=np.int64)
    for b in range(B):
        last = int(rng.integers(-1, N))  # items after this are padding
        cuts = np.sort(rng.integers(-1, last + 1, size=K - 1)) if K > 1 else np.array([], dtype=np.int64)
        ends[b, : K - 1] = cuts
        ends[b, K - 1] = last
    return ends


def tensor_list(t):
    return [float(x) for x in t.reshape(-1).tolist()]


cases = []
tables = {}


def add_table(name, arr):
    np.save(os.path.join(OUT, "tables", name + ".npy"), arr.astype(np.float32))
    tables[name] = {"file": "tables/" + name + ".npy", "rows": int(arr.shape[0]), "dim": int(arr.shape[1])}


ROWS = 40
add_table("fm_vectors_k8", rng.standard_normal((ROWS, 8)) * 0.3)
add_table("fm_vectors_f3k4", rng.standard_normal((ROWS, 12)) * 0.3)
add_table("fm_vectors_f2k5", rng.standard_normal((ROWS, 10)) * 0.3)
add_table("fm_biases", rng.standard_normal((ROWS, 1)) * 0.1)


def load(name):
    return torch.from_numpy(np.load(os.path.join(OUT, "tables", name + ".npy"))).double()


def emit(name, model, vec, B, N, K, bias, zero_weights=False, F=None, fields=None, idx_dtype="int64"):
    idx = rng.integers(0, ROWS, size=(B, N))
    w = rng.uniform(-1.5, 2.0, size=(B, N)).astype(np.float32)
    if zero_weights:
        w[rng.random((B, N)) < 0.4] = 0.0
    ends = rand_ends(B, N, K)
    V = load(vec)
    bt = load("fm_biases")
    ti = torch.from_numpy(idx)
    tw = torch.from_numpy(w).double()
    te = torch.from_numpy(ends)
    case = {"name": name, "model": model, "vectors": vec, "biases": "fm_biases", "bias": bias,
            "indices": idx.reshape(-1).tolist(), "indices_shape": [B, N], "index_dtype": idx_dtype,
            "weights": [float(x) for x in w.reshape(-1)], "ends": ends.reshape(-1).tolist(), "ends_shape": [B, K],
            "ends_dtype": idx_dtype}
    if model == "fm":
        y = fm(V, bt, bias, ti, tw, te)
    else:
        if fields is None:
            fields = np.tile(np.arange(K) % F, (B, 1))
        case["num_fields"] = F
        case["fields"] = np.asarray(fields).reshape(-1).tolist()
        case["fields_shape"] = [B, K]
        y = ffm(V, bt, bias, ti, tw, te, torch.from_numpy(np.asarray(fields)).long(), F)
    case["expected_shape"] = [B]
    case["expected"] = tensor_list(y.float())
    cases.append(case)


# FM
emit("fm_b1_k1", "fm", "fm_vectors_k8", 1, 5, 1, 0.25)
emit("fm_b4_k3", "fm", "fm_vectors_k8", 4, 6, 3, -0.5)
emit("fm_b8_k5_zero_weights", "fm", "fm_vectors_k8", 8, 10, 5, 0.0, zero_weights=True)
emit("fm_b6_k4_int32", "fm", "fm_vectors_k8", 6, 7, 4, 1.0, idx_dtype="int32")
emit("fm_on_ffm_table", "fm", "fm_vectors_f3k4", 5, 6, 3, 0.1)
# FFM: several field layouts
emit("ffm_b1_k1_f1", "ffm", "fm_vectors_f3k4", 1, 4, 1, 0.5, F=3, fields=[[2]])
emit("ffm_b4_k3_f3_identity", "ffm", "fm_vectors_f3k4", 4, 6, 3, 0.0, F=3)
emit("ffm_b4_k3_f3_reversed", "ffm", "fm_vectors_f3k4", 4, 6, 3, -0.25, F=3, fields=[[2, 1, 0]] * 4)
emit("ffm_b5_k4_f2_shared", "ffm", "fm_vectors_f2k5", 5, 8, 4, 0.75, F=2, fields=[[0, 0, 1, 1]] * 5)
emit("ffm_b6_k3_f3_random", "ffm", "fm_vectors_f3k4", 6, 6, 3, 0.3, F=3,
     fields=rng.integers(0, 3, size=(6, 3)).tolist())
emit("ffm_b7_k5_f2_zero_weights", "ffm", "fm_vectors_f2k5", 7, 9, 5, 0.0, zero_weights=True, F=2,
     fields=rng.integers(0, 2, size=(7, 5)).tolist())

# Empty bags: ends equal, and all-padding samples.
idx = [[1, 2, 3, 4], [5, 6, 7, 8]]
for model, vec, F in (("fm", "fm_vectors_k8", None), ("ffm", "fm_vectors_f3k4", 3)):
    ends = np.array([[0, 0, 3], [-1, -1, -1]])
    w = np.array([[1.0, 0.5, -1.0, 2.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    V = load(vec)
    bt = load("fm_biases")
    ti, tw, te = torch.tensor(idx), torch.from_numpy(w).double(), torch.from_numpy(ends)
    case = {"name": model + "_empty_bags", "model": model, "vectors": vec, "biases": "fm_biases", "bias": 0.125,
            "indices": sum(idx, []), "indices_shape": [2, 4], "index_dtype": "int64",
            "weights": [float(x) for x in w.reshape(-1)], "ends": ends.reshape(-1).tolist(), "ends_shape": [2, 3],
            "ends_dtype": "int64"}
    if model == "fm":
        y = fm(V, bt, 0.125, ti, tw, te)
    else:
        fields = np.array([[0, 1, 2], [2, 2, 0]])
        case.update({"num_fields": F, "fields": fields.reshape(-1).tolist(), "fields_shape": [2, 3]})
        y = ffm(V, bt, 0.125, ti, tw, te, torch.from_numpy(fields), F)
    case["expected_shape"] = [2]
    case["expected"] = tensor_list(y.float())
    cases.append(case)

with open(os.path.join(OUT, "fm.json"), "w") as f:
    f.write('{\n  "generator": "tests/golden/gen_fm_goldens.py",\n  "torch_version": "%s",\n' % torch.__version__)
    f.write('  "tables": %s,\n  "cases": [\n' % json.dumps(tables))
    f.write(",\n".join("    " + json.dumps(c) for c in cases))
    f.write("\n  ]\n}\n")
print("wrote %d FM/FFM cases" % len(cases))
