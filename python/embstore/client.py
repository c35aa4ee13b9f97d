"""embstore.Client: the tables of an `embstore serve` server, through gRPC, with the local API.

    import embstore
    with embstore.Client("10.0.0.5:7070", timeout=2.0) as client:
        client.tables()                                  # ['items', ...], as Store.tables()
        table = client.table("items")                    # a RemoteTable (version=N pins one)
        out = table.embedding_bag([1, 2, 3, 4], offsets=[0, 2], mode="sum")   # numpy [2, dim]

RemoteTable.embedding_bag / batched_embedding_bag and Client.fm_score take the local
Table's and embstore.fm_score's argument names, defaults, inputs (numpy arrays, torch CPU
tensors, lists, buffers; int32/int64 ids; float64 weights converted) and give the same
results (float32 numpy arrays, bit for bit: the server runs the same library). The same
arguments fail the same way: what the local package checks in Python is checked here,
before anything is sent, with the same exception and message; what the library refuses
comes back from the server with its message and is raised as the local package raises it
(ValueError, IndexError for an id out of range, KeyError for an unknown table or a pinned
version the server does not hold, embstore.CorruptionError, RuntimeError). What only a
server can fail with (RESOURCE_EXHAUSTED past its --max-inflight, UNAVAILABLE when it is
unreachable or shutting down, DEADLINE_EXCEEDED, ...) raises embstore.ServerError, an
OSError whose `.code` names the gRPC code.

Needs grpcio and protobuf (Debian: python3-grpcio, python3-protobuf); `import embstore`
does not, only embstore.Client does.
"""

import operator
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

try:
    import grpc
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "embstore.Client needs grpcio and protobuf (Debian: apt-get install python3-grpcio "
        "python3-protobuf; elsewhere: pip install grpcio protobuf)") from e
try:
    from .v1 import embstore_pb2 as pb
    from .v1 import embstore_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        f"embstore.Client: the gRPC stubs (embstore.v1.embstore_pb2*) could not be imported "
        f"({e}); they are generated when the package is built (setup.py, with protoc and "
        f"grpc_python_plugin): install the package rather than using the source tree") from e

from . import CorruptionError, ServerError

__all__ = ["Client", "RemoteTable", "RemoteTableInfo", "ServerError"]

# The most one gRPC message can carry (its lengths are int32).
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1

_MODES = {"sum": pb.POOLING_MODE_SUM, "mean": pb.POOLING_MODE_MEAN, "max": pb.POOLING_MODE_MAX}
_SERVICE = pb.DESCRIPTOR.services_by_name["Embstore"].full_name  # "embstore.v1.Embstore"
_HEALTH = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]

ArrayLike = Any


# --- inputs, as the extension reads them (python/src/convert.cc) -------------------------

def _tp_name(obj) -> str:
    """The type's name as the extension's messages print it (CPython's tp_name)."""
    t = type(obj)
    if t.__flags__ & (1 << 9) or t.__module__ == "builtins":  # a heap type, or a builtin
        return t.__name__
    return f"{t.__module__}.{t.__name__}"


def _is_torch_tensor(obj) -> bool:
    return all(hasattr(obj, a) for a in ("detach", "numpy", "device", "requires_grad"))


def _as_array(obj, what: str) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return obj
    if _is_torch_tensor(obj):
        device = str(obj.device.type)
        if device != "cpu":
            raise ValueError(f"{what} is a tensor on '{device}'; embstore takes CPU tensors "
                             "(move it with .cpu())")
        try:
            return np.asarray(obj.detach().numpy())
        except Exception as e:  # noqa: BLE001 - as the extension: any failure is a ValueError
            raise ValueError(f"{what}: {type(e).__name__}: {e}") from None
    try:
        return np.asarray(obj)
    except Exception:  # noqa: BLE001
        raise ValueError(f"{what} must be a numpy array, a torch CPU tensor, a list or a "
                         f"buffer, not {_tp_name(obj)}") from None


def _ids(obj, what: str) -> np.ndarray:
    if obj is None:
        raise ValueError(f"{what} is required")
    a = _as_array(obj, what)
    if a.size > 0 and a.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer ids (int32 or int64), not {a.dtype}")
    return a


def _reads_in_place(a: np.ndarray, kinds: str, sizes: Tuple[int, ...]) -> bool:
    """Whether the extension would read `a` where it lies (so `out` may not overlap it)."""
    return (a.dtype.kind in kinds and a.dtype.itemsize in sizes and a.dtype.byteorder != ">"
            and a.flags.c_contiguous)


def _weights(obj, ids_shape) -> Optional[np.ndarray]:
    if obj is None:
        return None
    a = _as_array(obj, "per_sample_weights")
    if a.size > 0 and a.dtype.kind != "f":
        raise ValueError(f"per_sample_weights must be float32 (float64 is converted), not "
                         f"{a.dtype}")
    if a.shape != ids_shape:
        raise ValueError("per_sample_weights must have the shape of input")
    return a


def _batched_ids(input, bag_ends) -> Tuple[np.ndarray, np.ndarray]:
    ids, ends = _ids(input, "input"), _ids(bag_ends, "bag_ends")
    if ids.ndim != 2:
        raise ValueError("input must be 2-D [B, N]")
    if ends.ndim != 2:
        raise ValueError("bag_ends must be 2-D [B, K]")
    if ends.shape[0] != ids.shape[0]:
        raise ValueError(f"bag_ends has {ends.shape[0]} samples but input has {ids.shape[0]}")
    return ids, ends


def _double(obj, what: str) -> float:
    """A Python number (numpy scalars included) as a float; ValueError otherwise."""
    if isinstance(obj, (str, bytes, bytearray)):
        raise ValueError(f"{what} must be a number or None, not {_tp_name(obj)}")
    try:
        return float(obj)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number or None, not {_tp_name(obj)}") from None


def _int64(obj, what: str) -> int:
    """A Python integer (numpy integers included: operator.index); ValueError otherwise."""
    try:
        v = operator.index(obj)
    except TypeError:
        raise ValueError(f"{what} must be an int or None, not {_tp_name(obj)}") from None
    if not -(2**63) <= v < 2**63:
        raise ValueError(f"{what} is out of the int64 range")
    return v


def _arg_float(obj, what: str) -> float:
    """A float argument as pybind11 converts it (TypeError for what it refuses)."""
    if isinstance(obj, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be a float, not {_tp_name(obj)}")
    try:
        return float(obj)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a float, not {_tp_name(obj)}") from None


def _arg_int(obj, what: str) -> int:
    try:
        return operator.index(obj)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {_tp_name(obj)}") from None


def _arg_bool(obj, what: str) -> bool:
    if obj is None or isinstance(obj, (bool, np.bool_)) or hasattr(type(obj), "__bool__"):
        return bool(obj)
    raise TypeError(f"{what} must be a bool, not {_tp_name(obj)}")


def _pool_options(mode, max_norm, norm_type, padding_idx):
    # as the extension: the arguments' types first (pybind11's TypeError), then their values
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, not {_tp_name(mode)}")
    norm_type = _arg_float(norm_type, "norm_type")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'sum', 'mean' or 'max', not '{mode}'")
    kwargs = {"mode": _MODES[mode], "norm_type": norm_type}
    if max_norm is not None:
        kwargs["max_norm"] = _double(max_norm, "max_norm")
    if padding_idx is not None:
        kwargs["padding_idx"] = _int64(padding_idx, "padding_idx")
    return pb.PoolOptions(**kwargs)


def _output(out, values: np.ndarray, shape: List[int], inputs) -> np.ndarray:
    """The reply's values in a new float32 array, or written into `out` (checked as the
    extension checks it)."""
    if out is None:
        return values.reshape(shape).astype(np.float32)  # a copy, writable, native order
    a = _as_array(out, "out")
    if a.dtype.kind != "f" or a.dtype.itemsize != 4 or a.dtype.byteorder == ">":
        raise ValueError(f"out must be a float32 array, not {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError("out is read-only")
    if list(a.shape) != list(shape):
        got = ", ".join(str(d) for d in a.shape)
        want = ", ".join(str(d) for d in shape)
        raise ValueError(f"out has shape [{got}] but the result is [{want}]")
    for x in inputs:
        if x is not None and x.nbytes > 0 and np.may_share_memory(a, x):
            raise ValueError("out must not share memory with the inputs")
    a.reshape(-1)[...] = values
    return a


# --- the wire format: big repeated fields encoded with numpy, replies read in place ------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _varints(values: np.ndarray) -> bytes:
    """int64 values as concatenated protobuf varints (negative ones take 10 bytes)."""
    v = np.ascontiguousarray(values.reshape(-1).astype(np.int64, copy=False)).view(np.uint64)
    if v.size == 0:
        return b""
    if int(v.max()) < 0x80:
        return v.astype(np.uint8).tobytes()
    cols = [(v & np.uint64(0x7F)).astype(np.uint8)]
    count = np.ones(v.shape, np.uint8)
    rest = v >> np.uint64(7)
    while True:
        more = rest != 0
        if not more.any():
            break
        count += more
        cols.append((rest & np.uint64(0x7F)).astype(np.uint8))
        rest = rest >> np.uint64(7)
    table = np.stack(cols, axis=1)
    column = np.arange(len(cols), dtype=np.uint8)[None, :]
    table[column < (count[:, None] - 1)] |= 0x80
    return table[column < count[:, None]].tobytes()


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _packed_ids(field: int, values: np.ndarray) -> bytes:
    """A repeated int64 field, packed (nothing for no values, as protobuf writes it)."""
    return _len_field(field, _varints(values)) if values.size else b""


def _id_list(field: int, values: np.ndarray) -> bytes:
    """An Int64List message field: present even when empty."""
    return _len_field(field, _packed_ids(1, values))


def _float_list(field: int, values: np.ndarray) -> bytes:
    """A FloatList message field (float32, little-endian): present even when empty."""
    floats = np.ascontiguousarray(values.reshape(-1), dtype="<f4").tobytes()
    return _len_field(field, _len_field(1, floats) if floats else b"")


def _read_varint(buf, pos: int) -> Tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf) -> dict:
    """One message's top-level fields: {number: [(wire type, value)]}, a length-delimited
    value as (start, end) into `buf`, a fixed32 one as (start, start + 4)."""
    fields: dict = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = (pos, pos + 8), pos + 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = (pos, pos + n), pos + n
        elif wire == 5:
            value, pos = (pos, pos + 4), pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        fields.setdefault(number, []).append((wire, value))
    return fields


def _int64s(buf, entries) -> List[int]:
    """A repeated int64 field, packed or not."""
    out: List[int] = []
    for wire, value in entries:
        if wire == 0:
            out.append(value)
        else:
            pos, end = value
            while pos < end:
                v, pos = _read_varint(buf, pos)
                out.append(v)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in out]


def _uint(entries) -> int:
    return entries[-1][1] if entries else 0


class _Malformed(Exception):
    pass


def _pooled_reply(raw: bytes) -> Tuple[List[int], np.ndarray, int]:
    """A PooledReply: (shape, its float32 values as a read-only view of `raw`, version)."""
    try:
        f = _fields(raw)
        shape = _int64s(raw, f.get(1, []))
        start, end = f[2][-1][1] if 2 in f else (0, 0)
        version = _uint(f.get(4, []))
    except (ValueError, IndexError, TypeError) as e:
        raise _Malformed(f"the server's reply cannot be parsed ({e})") from None
    count = 1
    for d in shape:
        count *= d
    if not shape or min(shape) < 0 or count * 4 != end - start:
        raise _Malformed(f"the server's reply has {end - start} bytes of values for its "
                         f"shape {shape}")
    if count == 0:
        return shape, np.zeros(0, "<f4"), version
    return shape, np.frombuffer(raw, dtype="<f4", count=count, offset=start), version


def _fm_reply(raw: bytes) -> np.ndarray:
    try:
        f = _fields(raw)
        parts = []
        for wire, (start, end) in f.get(1, []):
            if (end - start) % 4 or wire not in (2, 5):
                raise ValueError("scores")
            parts.append(np.frombuffer(raw, dtype="<f4", count=(end - start) // 4, offset=start))
    except (ValueError, IndexError, TypeError) as e:
        raise _Malformed(f"the server's reply cannot be parsed ({e})") from None
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


# --- errors ------------------------------------------------------------------------------

def _local_error(e: "grpc.RpcError", target: str) -> BaseException:
    """The exception the local package raises for the library error the server sent
    (serve/convert.cc's ToGrpc, inverted), else a ServerError."""
    code = e.code()
    details = e.details() or ""
    C = grpc.StatusCode
    if code == C.INVALID_ARGUMENT:
        # as python/src/convert.cc: "indices[17] = 1000 is out of range for table 'items'"
        if "] = " in details and " is out of range for table " in details:
            return IndexError(details)
        return ValueError(details)
    if code == C.NOT_FOUND:
        return KeyError(details)
    if code in (C.ALREADY_EXISTS, C.FAILED_PRECONDITION):
        return ValueError(details)
    if code == C.DATA_LOSS:
        return CorruptionError(details)
    if code == C.INTERNAL:
        return RuntimeError(details)
    return ServerError(code.name, details, target)


# --- the client --------------------------------------------------------------------------

def _pem(value, what: str) -> Optional[bytes]:
    """PEM bytes, PEM text, or a path to a PEM file."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode()
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read()
    raise TypeError(f"{what} must be PEM bytes or a path, not {_tp_name(value)}")


@dataclass(frozen=True)
class RemoteTableInfo:
    """What the server's catalog knows of one table version: embstore.TableInfo's
    attributes that the API carries (not `bytes` or `file`, which are the server's)."""
    name: str
    rows: int
    dim: int
    dtype: str
    version: int
    data_bytes: int
    row_stride: int
    checksum: int
    source: str
    created: int

    @classmethod
    def _from_meta(cls, m) -> "RemoteTableInfo":
        return cls(name=m.name, rows=m.rows, dim=m.dim, dtype=m.dtype, version=m.version,
                   data_bytes=m.data_bytes, row_stride=m.row_stride, checksum=m.checksum,
                   source=m.source, created=m.created_unix)

    def __repr__(self) -> str:
        return (f"TableInfo(name='{self.name}', rows={self.rows}, dim={self.dim}, "
                f"dtype='{self.dtype}', version={self.version})")


class Client:
    """A connection to an `embstore serve` server ("HOST:PORT").

    timeout: the deadline of each call, in seconds (None: none); each method's timeout=
    overrides it. root_certificates (PEM bytes, PEM text or a path) makes the channel TLS,
    verifying the server against them; private_key and certificate_chain (together) add a
    client certificate (mutual TLS). max_message_bytes bounds what one request or reply may
    carry (default: the most gRPC allows, 2 GiB - 1; the server has its own limit).
    options: more gRPC channel options, as (name, value) pairs.

    The channel connects on the first call; a Client is safe to share between threads.
    close() (or `with`) releases it.
    """

    def __init__(self, target: str, *, timeout: Optional[float] = None,
                 root_certificates: Union[bytes, str, os.PathLike, None] = None,
                 private_key: Union[bytes, str, os.PathLike, None] = None,
                 certificate_chain: Union[bytes, str, os.PathLike, None] = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 options: Sequence[Tuple[str, Any]] = ()):
        if not isinstance(target, str) or not target:
            raise ValueError("target must be 'HOST:PORT'")
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("private_key and certificate_chain go together (mutual TLS)")
        max_message_bytes = operator.index(max_message_bytes)
        if not 0 < max_message_bytes <= DEFAULT_MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be in 1..{DEFAULT_MAX_MESSAGE_BYTES}")
        self._target = target
        self._timeout = None if timeout is None else float(timeout)
        channel_options = [("grpc.max_receive_message_length", max_message_bytes),
                           ("grpc.max_send_message_length", max_message_bytes),
                           *options]
        root = _pem(root_certificates, "root_certificates")
        key = _pem(private_key, "private_key")
        chain = _pem(certificate_chain, "certificate_chain")
        self._tls = root is not None or key is not None
        if self._tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=chain)
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        self._stub = pb_grpc.EmbstoreStub(self._channel)
        raw = {}
        for method in ("EmbeddingBag", "BatchedEmbeddingBag", "FmScore"):
            # requests serialized here (numpy to the wire), replies read here (in place)
            raw[method] = self._channel.unary_unary(f"/{_SERVICE}/{method}")
        self._raw = raw
        self._health = self._channel.unary_unary("/grpc.health.v1.Health/Check")

    @property
    def target(self) -> str:
        return self._target

    def __repr__(self) -> str:
        return f"Client('{self._target}'{', tls' if self._tls else ''})"

    def close(self) -> None:
        """Closes the channel (calls in flight are cancelled)."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self._timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            err = _local_error(e, self._target)
            if isinstance(err, ServerError):
                raise err from e
            raise err from None

    def tables(self, *, timeout: Optional[float] = None) -> List[str]:
        """The names of the server's tables, as Store.tables()."""
        reply = self._call(self._stub.ListTables, pb.ListTablesRequest(), timeout)
        return [t.name for t in reply.tables]

    def info(self, name: str, *, timeout: Optional[float] = None) -> RemoteTableInfo:
        """The current version's RemoteTableInfo; KeyError for an unknown table."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {_tp_name(name)}")
        return RemoteTableInfo._from_meta(
            self._call(self._stub.TableInfo, pb.TableInfoRequest(table=name), timeout))

    def table(self, name: str, version: Optional[int] = None, *,
              timeout: Optional[float] = None) -> "RemoteTable":
        """Table `name` on the server (KeyError if unknown). version=None follows the
        server's current version (each reply names the one it used); version=N pins N
        (the server answers KeyError once it no longer holds N)."""
        if version is not None:
            version = _arg_int(version, "version")
            if not 0 < version < 2**64:
                raise ValueError(f"version must be a positive int or None, not {version}")
        return RemoteTable(self, self.info(name, timeout=timeout), version)

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> str:
        """grpc.health.v1.Health/Check: 'SERVING', 'NOT_SERVING', ..."""
        request = _len_field(1, service.encode()) if service else b""
        raw = self._call(self._health, request, timeout)
        try:
            status = _uint(_fields(raw).get(1, []))
        except ValueError as e:
            raise RuntimeError(f"the server's health reply cannot be parsed ({e})") from None
        return _HEALTH[status] if status < len(_HEALTH) else str(status)

    def fm_score(self, *, model: str = "fm", vectors: str, biases: str, bias: float = 0.0,
                 input: ArrayLike, bag_ends: ArrayLike,
                 per_sample_weights: Optional[ArrayLike] = None,
                 fields: Optional[ArrayLike] = None, num_fields: int = 0,
                 timeout: Optional[float] = None) -> np.ndarray:
        """FM / FFM scores [B] over batched bags, as embstore.fm_score (without the store)."""
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, not {_tp_name(model)}")
        if model not in ("fm", "ffm"):
            raise ValueError(f"model must be 'fm' or 'ffm', not '{model}'")
        for what, v in (("vectors", vectors), ("biases", biases)):
            if not isinstance(v, str):
                raise TypeError(f"{what} must be a str, not {_tp_name(v)}")
        bias = _arg_float(bias, "bias")
        num_fields = _arg_int(num_fields, "num_fields")
        ids, ends = _batched_ids(input, bag_ends)
        weights = _weights(per_sample_weights, ids.shape)
        f = None
        if fields is not None:
            f = _ids(fields, "fields")
            if f.shape != ends.shape:
                raise ValueError("fields must have the shape of bag_ends")
        head = pb.FmScoreRequest(
            model=pb.FM_MODEL_FM if model == "fm" else pb.FM_MODEL_FFM,
            vectors_table=vectors, biases_table=biases, batch=ids.shape[0],
            items=ids.shape[1], bags_per_sample=ends.shape[1], num_fields=num_fields,
            bias=bias, options=pb.PoolOptions(mode=pb.POOLING_MODE_SUM))
        request = b"".join([
            head.SerializeToString(), _packed_ids(4, ids), _packed_ids(5, ends),
            b"" if weights is None else _float_list(9, weights),
            b"" if f is None else _id_list(10, f)])
        raw = self._call(self._raw["FmScore"], request, timeout)
        try:
            scores = _fm_reply(raw)
        except _Malformed as e:
            raise RuntimeError(str(e)) from None
        if scores.shape != (ids.shape[0],):
            raise RuntimeError(f"the server sent {scores.size} scores for {ids.shape[0]} samples")
        return scores


class RemoteTable:
    """Table `name` of a server, with the local Table's pooling methods.

    name, shape and info are the table's when Client.table() was called; version is the
    version the last reply was computed from (at first: the pinned one, else info.version).
    """

    def __init__(self, client: Client, info: RemoteTableInfo, pinned: Optional[int]):
        self._client = client
        self._info = info
        self._pinned = pinned
        self._version = pinned if pinned is not None else info.version

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def shape(self) -> Tuple[int, int]:
        return (self._info.rows, self._info.dim)

    @property
    def dtype(self) -> str:
        return self._info.dtype

    @property
    def version(self) -> int:
        return self._version

    @property
    def pinned(self) -> Optional[int]:
        """The version every request asks for, or None (the server's current one)."""
        return self._pinned

    @property
    def info(self) -> RemoteTableInfo:
        return self._info

    def __repr__(self) -> str:
        return (f"RemoteTable('{self.name}', shape={self.shape}, dtype='{self.dtype}', "
                f"version={self.version}, server='{self._client.target}')")

    def _pool(self, method: str, request: bytes, timeout, out, inputs, rank: int) -> np.ndarray:
        raw = self._client._call(self._client._raw[method], request, timeout)
        try:
            shape, values, version = _pooled_reply(raw)
        except _Malformed as e:
            raise RuntimeError(str(e)) from None
        if len(shape) != rank:
            raise RuntimeError(f"the server's reply has shape {shape}, not {rank}-D")
        self._version = version
        return _output(out, values, shape, inputs)

    def embedding_bag(self, input: ArrayLike, offsets: Optional[ArrayLike] = None,
                      max_norm: Optional[float] = None, norm_type: float = 2.0,
                      mode: str = "mean", per_sample_weights: Optional[ArrayLike] = None,
                      include_last_offset: bool = False, padding_idx: Optional[int] = None,
                      out: Optional[np.ndarray] = None, *,
                      timeout: Optional[float] = None) -> np.ndarray:
        """torch.nn.functional.embedding_bag over this table, on the server: float32
        [B, dim], as Table.embedding_bag."""
        include_last_offset = _arg_bool(include_last_offset, "include_last_offset")
        options = _pool_options(mode, max_norm, norm_type, padding_idx)
        ids = _ids(input, "input")
        if ids.ndim not in (1, 2):
            raise ValueError(f"input must be 1-D (with offsets) or 2-D [B, N], not "
                             f"{ids.ndim}-D")
        offs = None
        if offsets is not None:
            offs = _ids(offsets, "offsets")
            if offs.ndim != 1:
                raise ValueError("offsets must be 1-D")
        weights = _weights(per_sample_weights, ids.shape)
        head = pb.EmbeddingBagRequest(
            table=self.name, indices_shape=list(ids.shape) if ids.ndim == 2 else [],
            options=options, include_last_offset=include_last_offset,
            version=self._pinned or 0)
        request = b"".join([
            head.SerializeToString(), _packed_ids(2, ids),
            b"" if offs is None else _id_list(4, offs),
            b"" if weights is None else _float_list(5, weights)])
        inputs = [x for x, kinds, sizes in ((ids, "i", (4, 8)), (offs, "i", (4, 8)),
                                            (weights, "f", (4,)))
                  if x is not None and _reads_in_place(x, kinds, sizes)]
        return self._pool("EmbeddingBag", request, timeout, out, inputs, 2)

    def batched_embedding_bag(self, input: ArrayLike, bag_ends: ArrayLike,
                              per_sample_weights: Optional[ArrayLike] = None,
                              mode: str = "sum", padding_idx: Optional[int] = None,
                              max_norm: Optional[float] = None, norm_type: float = 2.0,
                              out: Optional[np.ndarray] = None, *,
                              timeout: Optional[float] = None) -> np.ndarray:
        """Batched bags with inclusive end offsets, on the server: input [B, N], bag_ends
        [B, K] -> float32 [B, K, dim], as Table.batched_embedding_bag."""
        options = _pool_options(mode, max_norm, norm_type, padding_idx)
        ids, ends = _batched_ids(input, bag_ends)
        weights = _weights(per_sample_weights, ids.shape)
        head = pb.BatchedEmbeddingBagRequest(
            table=self.name, batch=ids.shape[0], items=ids.shape[1],
            bags_per_sample=ends.shape[1], options=options, version=self._pinned or 0)
        request = b"".join([
            head.SerializeToString(), _packed_ids(2, ids), _packed_ids(3, ends),
            b"" if weights is None else _float_list(7, weights)])
        inputs = [x for x, kinds, sizes in ((ids, "i", (4, 8)), (ends, "i", (4, 8)),
                                            (weights, "f", (4,)))
                  if x is not None and _reads_in_place(x, kinds, sizes)]
        return self._pool("BatchedEmbeddingBag", request, timeout, out, inputs, 3)

