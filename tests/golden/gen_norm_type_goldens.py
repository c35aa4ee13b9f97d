#!/usr/bin/env python3
"""Goldens for max_norm with extreme norm_type values, made by real PyTorch.

torch 1.13 evaluates a float row's p-norm with p converted to float (1e308 -> inf: the max-abs
norm; 1e-300 -> 0: the count of nonzeros) and in float arithmetic (5**400 overflows to inf, so
the norm is inf and the row is scaled to 0). These cases pin that behaviour.

    /usr/bin/python3 tests/golden/gen_norm_type_goldens.py > tests/golden/norm_type_edges.json
"""
import json

import torch
import torch.nn.functional as F

ROWS = [[5.0, -5.0, 0.5], [0.5, 0.5, 0.5], [2.0, -3.0, 1.0], [1e-3, 2e-3, 0.0],
        [40.0, 0.0, -1.0], [0.0, 0.0, 0.0]]
NORM_TYPES = [1e308, 1e-300, 1e-40, 400.0, 60.0, 38.5, 2.5, 0.75, 3.0e38, 4.0e38]
MAX_NORMS = [1.0, 0.1, 7.0]


def main():
    W = torch.tensor(ROWS, dtype=torch.float32)
    cases = []
    for p in NORM_TYPES:
        for mn in MAX_NORMS:
            idx = torch.arange(len(ROWS), dtype=torch.int64)
            off = torch.arange(len(ROWS), dtype=torch.int64)  # one row per bag
            out = F.embedding_bag(idx, W.clone(), off, max_norm=mn, norm_type=p, mode="sum")
            cases.append({"norm_type": p, "max_norm": mn, "indices": idx.tolist(),
                          "offsets": off.tolist(), "expected": out.flatten().tolist()})
    print(json.dumps({"torch": torch.__version__, "rows": ROWS, "dim": 3, "cases": cases},
                     indent=1))


if __name__ == "__main__":
    main()
