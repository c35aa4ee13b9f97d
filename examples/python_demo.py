"""The main job's Python part (tools/run_demo.sh): the demo store, from Python.

    build/venv/bin/python examples/python_demo.py DB
"""

import sys

import numpy as np
import torch

import embstore
import embstore.torch

db = sys.argv[1]
store = embstore.Store(db, create=False)
print("embstore", embstore.__version__, "tables:", store.tables())
print(store.info("items"))
items = store.table("items")                       # a snapshot of the current version
print(items, "rows viewed without a copy:", items.numpy().shape)

# The two bags of the CLI demo, {1, 2, 3} and {40, 41}, pooled as torch would.
ids, offsets = np.array([1, 2, 3, 40, 41]), np.array([0, 3])
print("sum:\n", items.embedding_bag(ids, offsets, mode="sum"))
print("mean, max_norm=1:\n", items.embedding_bag(ids, offsets, mode="mean", max_norm=1.0))

# The same through an nn.Module, checked against torch's own EmbeddingBag.
bag = embstore.torch.EmbeddingBag.from_store(store, "items", mode="mean", max_norm=1.0)
ref = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(items.dequantize()), mode="mean",
                                            max_norm=1.0)
out = bag(torch.from_numpy(ids), torch.from_numpy(offsets))
assert torch.allclose(out, ref(torch.from_numpy(ids), torch.from_numpy(offsets)), atol=1e-6)
print("embstore.torch.EmbeddingBag equals torch.nn.EmbeddingBag:", tuple(out.shape))

# A factorization-machine score of one sample, as `embstore score` gives it.
score = embstore.fm_score(store, model="fm", vectors="fm_vectors", biases="fm_biases",
                          input=np.array([[3, 17, 17, 42, 99, 150]]),
                          bag_ends=np.array([[0, 3, 5]]),
                          per_sample_weights=np.array([[1, 0.5, 0.5, 1, 0.7, 0.3]], np.float32))
print("fm score:", score)
