"""embstore: very large embedding tables served from memory-mapped files.

    import embstore
    store = embstore.Store("/data/emb")                 # create=True makes it if absent
    store.import_file("items", "items.npy")              # .npy .npz .safetensors .pt
    table = store.table("items")                         # a snapshot of the current version
    out = table.embedding_bag([1, 2, 3, 4], offsets=[0, 2], mode="sum")   # numpy [2, dim]

Pooling takes torch.nn.functional.embedding_bag's argument names and defaults
and gives its results (max_norm never modifies the table; weighted mean and
max are allowed). Inputs are numpy arrays, torch CPU tensors, lists or any
buffer-protocol object; ids int32 or int64, weights float32 (float64 is
converted). The GIL is released while the library works.

embstore.torch.EmbeddingBag is an inference torch.nn.Module over a table;
only that module imports torch.
"""

from ._embstore import (
    CorruptionError,
    Store,
    Table,
    TableInfo,
    __version__,
    fm_score,
    inspect,
)

__all__ = [
    "CorruptionError",
    "Store",
    "Table",
    "TableInfo",
    "__version__",
    "fm_score",
    "inspect",
]
