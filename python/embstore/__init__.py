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

embstore.Client("HOST:PORT") queries the tables an `embstore serve` server
serves, through gRPC, with the same API (Client.table(name) gives a
RemoteTable with embedding_bag and batched_embedding_bag; Client.fm_score).
embstore.Cluster("http://ETCD:2379") queries tables split in row shards over
`embstore serve --cluster` nodes, found through etcd, with the same API
(Cluster.table(name) gives a ClusterTable). Only embstore.Client and
embstore.Cluster import grpc (Debian: python3-grpcio, python3-protobuf).
"""

from typing import TYPE_CHECKING

from ._embstore import (
    CorruptionError,
    Store,
    Table,
    TableInfo,
    __version__,
    fm_score,
    inspect,
)


class ServerError(OSError):
    """A call to an embstore server failed for a reason of the server or the network,
    not of the request: past its --max-inflight (code 'RESOURCE_EXHAUSTED', also a
    message over a size limit), unreachable or shutting down ('UNAVAILABLE'), the
    deadline passed ('DEADLINE_EXCEEDED'), ... A subclass of OSError.

    code: the gRPC status code's name, as in the gRPC docs ('UNAVAILABLE', ...).
    details: the server's (or gRPC's) message. target: the server's address.
    """

    def __init__(self, code: str, details: str, target: str = ""):
        where = f"{target}: " if target else ""
        super().__init__(f"{where}{code}: {details}")
        self.code = code
        self.details = details
        self.target = target


_CLIENT_NAMES = ("Client", "RemoteTable", "RemoteTableInfo")
_CLUSTER_NAMES = ("Cluster", "ClusterTable")

if TYPE_CHECKING:
    from .client import Client, RemoteTable, RemoteTableInfo
    from .cluster import Cluster, ClusterTable


def __getattr__(name):
    # embstore.Client, embstore.Cluster and their types import grpc: only when they are
    # used.
    if name in _CLIENT_NAMES:
        from . import client
        return getattr(client, name)
    if name in _CLUSTER_NAMES:
        from . import cluster
        return getattr(cluster, name)
    raise AttributeError(f"module 'embstore' has no attribute '{name}'")


def __dir__():
    return sorted(list(globals()) + list(_CLIENT_NAMES) + list(_CLUSTER_NAMES))


# Client is not in __all__: `from embstore import *` works without grpcio.
__all__ = [
    "CorruptionError",
    "ServerError",
    "Store",
    "Table",
    "TableInfo",
    "__version__",
    "fm_score",
    "inspect",
]
