"""embstore.torch: torch.nn.EmbeddingBag over an embstore table, for inference.

    import embstore, embstore.torch
    store = embstore.Store("/data/emb", create=False)
    bag = embstore.torch.EmbeddingBag.from_store(store, "items", mode="sum")
    out = bag(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2]))   # torch.Tensor [2, dim]

forward() returns what torch.nn.EmbeddingBag.from_pretrained(weights, ...)
returns on the same weights and arguments. The table is never copied into
memory (rows are read where they are mapped) and never modified: with
max_norm, rows are used renormalized, as torch's first call would use them,
but the stored rows stay as they are (torch renormalizes its weight in place).
The module has no parameters and no gradient.
"""

import torch

from . import Store, Table

__all__ = ["EmbeddingBag"]


class EmbeddingBag(torch.nn.Module):
    """An inference torch.nn.EmbeddingBag whose weight is an embstore Table."""

    def __init__(self, table: Table, mode: str = "mean", max_norm=None,
                 norm_type: float = 2.0, padding_idx=None, include_last_offset: bool = False):
        super().__init__()
        if not isinstance(table, Table):
            raise TypeError("table must be an embstore.Table (Store.table(name))")
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"mode must be 'sum', 'mean' or 'max', not {mode!r}")
        self.table = table
        self.mode = mode
        self.max_norm = max_norm
        self.norm_type = float(norm_type)
        self.padding_idx = padding_idx
        self.include_last_offset = bool(include_last_offset)

    @classmethod
    def from_store(cls, store: Store, name: str, mode: str = "mean", max_norm=None,
                   norm_type: float = 2.0, padding_idx=None,
                   include_last_offset: bool = False) -> "EmbeddingBag":
        """The module over the current version of table `name` of `store`."""
        return cls(store.table(name), mode=mode, max_norm=max_norm, norm_type=norm_type,
                   padding_idx=padding_idx, include_last_offset=include_last_offset)

    @property
    def num_embeddings(self) -> int:
        return self.table.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.table.shape[1]

    def forward(self, input, offsets=None, per_sample_weights=None) -> torch.Tensor:
        out = self.table.embedding_bag(
            input, offsets, max_norm=self.max_norm, norm_type=self.norm_type, mode=self.mode,
            per_sample_weights=per_sample_weights,
            include_last_offset=self.include_last_offset, padding_idx=self.padding_idx)
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        s = f"{self.table.name!r} v{self.table.version}, {self.num_embeddings}, "
        s += f"{self.embedding_dim}, mode={self.mode!r}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}, norm_type={self.norm_type}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.include_last_offset:
            s += ", include_last_offset=True"
        return s
