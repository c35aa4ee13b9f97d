"""Type stubs of embstore's C++ extension (embstore._embstore)."""

from typing import Any, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

# Anything the inputs accept: numpy arrays, torch CPU tensors, lists, buffers.
ArrayLike = Union[npt.ArrayLike, Any]
DType = Literal["f32", "f16", "bf16", "int8"]
Mode = Literal["sum", "mean", "max"]

class CorruptionError(OSError):
    """A store's file failed a checksum or structural check."""

class TableInfo:
    """What the catalog knows of one table version."""
    @property
    def name(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> DType: ...
    @property
    def version(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def data_bytes(self) -> int: ...
    @property
    def row_stride(self) -> int: ...
    @property
    def checksum(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def created(self) -> int: ...

class Table:
    """One version of one table (a snapshot)."""
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Tuple[int, int]: ...
    @property
    def dtype(self) -> DType: ...
    @property
    def version(self) -> int: ...
    @property
    def info(self) -> TableInfo: ...
    def embedding_bag(
        self,
        input: ArrayLike,
        offsets: Optional[ArrayLike] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        mode: Mode = "mean",
        per_sample_weights: Optional[ArrayLike] = None,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        out: Optional[npt.NDArray[np.float32]] = None,
    ) -> npt.NDArray[np.float32]: ...
    def batched_embedding_bag(
        self,
        input: ArrayLike,
        bag_ends: ArrayLike,
        per_sample_weights: Optional[ArrayLike] = None,
        mode: Mode = "sum",
        padding_idx: Optional[int] = None,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        out: Optional[npt.NDArray[np.float32]] = None,
    ) -> npt.NDArray[np.float32]: ...
    def numpy(self) -> npt.NDArray[Union[np.float32, np.float16]]: ...
    def dequantize(self) -> npt.NDArray[np.float32]: ...

class Store:
    def __init__(self, path: str, create: bool = True) -> None: ...
    def tables(self) -> List[str]: ...
    def info(self, name: str) -> TableInfo: ...
    def import_file(
        self,
        name: str,
        path: str,
        tensor: Optional[str] = None,
        dtype: Optional[DType] = None,
        replace: bool = False,
    ) -> TableInfo: ...
    def drop(self, name: str) -> None: ...
    def verify(self, name: Optional[str] = None) -> None: ...
    def refresh(self) -> None: ...
    def table(self, name: str) -> Table: ...

def fm_score(
    store: Store,
    *,
    model: Literal["fm", "ffm"] = "fm",
    vectors: str,
    biases: str,
    bias: float = 0.0,
    input: ArrayLike,
    bag_ends: ArrayLike,
    per_sample_weights: Optional[ArrayLike] = None,
    fields: Optional[ArrayLike] = None,
    num_fields: int = 0,
) -> npt.NDArray[np.float32]: ...
def inspect(path: str) -> List[Tuple[str, str, Tuple[int, ...]]]: ...

# embstore.Cluster's arithmetic (internal; python/embstore/cluster.py).
class _ShardedRequest:
    @property
    def shape(self) -> List[int]: ...
    @property
    def bags(self) -> int: ...
    @property
    def shards(self) -> int: ...
    def part(self, shard: int) -> Optional[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]: ...
    def merge(self, partials: List[Any], out: Optional[np.ndarray] = None) -> np.ndarray: ...

def _shard_bags(rows: int, dim: int, dtype: str, name: str, shard_begins: List[int],
                input: ArrayLike, offsets: Optional[ArrayLike] = None,
                max_norm: Optional[float] = None, norm_type: float = 2.0, mode: str = "mean",
                per_sample_weights: Optional[ArrayLike] = None,
                include_last_offset: bool = False,
                padding_idx: Optional[int] = None) -> _ShardedRequest: ...
def _shard_batched_bags(rows: int, dim: int, dtype: str, name: str, shard_begins: List[int],
                        input: ArrayLike, bag_ends: ArrayLike,
                        per_sample_weights: Optional[ArrayLike] = None, mode: str = "sum",
                        padding_idx: Optional[int] = None, max_norm: Optional[float] = None,
                        norm_type: float = 2.0) -> _ShardedRequest: ...
