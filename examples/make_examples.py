#!/usr/bin/env python3
"""Makes the sample checkpoints in examples/ (run with Debian's PyTorch):

    /usr/bin/python3 examples/make_examples.py

- items.npy: a 1000 x 16 float32 embedding table (NumPy).
- model.pt:  a torch.save'd training checkpoint of a small recommender with an
             item embedding bag and a weighted factorization machine:
               {"model": {"items.weight": [1000, 16],
                          "vectors.weight": [200, 8], "biases.weight": [200, 1], "bias": scalar},
                "epoch": 3}
"""
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(2026)
np.save(os.path.join(HERE, "items.npy"), (rng.standard_normal((1000, 16)) * 0.5).astype(np.float32))

torch.manual_seed(2026)


class Recommender(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.items = torch.nn.EmbeddingBag(1000, 16, mode="mean")
        self.vectors = torch.nn.Embedding(200, 8)   # FM factors, k = 8
        self.biases = torch.nn.Embedding(200, 1)    # FM linear terms
        self.bias = torch.nn.Parameter(torch.tensor(0.125))


m = Recommender()
with torch.no_grad():
    m.vectors.weight.mul_(0.2)
    m.biases.weight.mul_(0.05)
torch.save({"model": m.state_dict(), "epoch": 3}, os.path.join(HERE, "model.pt"))
print("wrote items.npy and model.pt")
