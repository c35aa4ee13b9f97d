"""embstore.Cluster: tables split in row shards over `embstore serve --cluster` nodes,
found through etcd, queried with the local API.

    import embstore
    with embstore.Cluster("http://127.0.0.1:2379", timeout=2.0) as cluster:
        cluster.tables()                              # ['items', ...]: tables with a current version
        table = cluster.table("items")                # a ClusterTable
        out = table.embedding_bag([1, 2, 3, 4], offsets=[0, 2], mode="sum")   # numpy [2, dim]

What `embstore query --cluster` and the C++ serve::ClusterClient do, in Python:

* The routing (the live nodes, each table's current version and the manifests: shard row
  ranges and the nodes holding each shard) is read from etcd when the Cluster is made and
  kept up to date by a watch in a background thread. When etcd is unreachable, queries go
  on with the routing last seen, and the watch comes back when etcd does.
* A query pins the table's current version, is checked against the table's shape exactly
  as the local Table checks it (same exceptions, same messages: the checks are the
  library's, in the extension), is split by shard keeping the bags, and is sent to one
  replica of every shard at once (PoolPartial). A node that fails or takes longer than
  `attempt_timeout` is replaced by the shard's next replica; the last replica gets what
  is left of the deadline. The partials are merged in the extension exactly as the C++
  client merges them: SUM adds, MEAN is the sum over the count, MAX is bit for bit the
  local engine's (ties to the first entry, a NaN only as a bag's first entry), empty bags
  are zeros.
* If no replica of a shard answers, the query raises embstore.ServerError with code
  'UNAVAILABLE', naming the shards and why each replica failed; it never returns a partial
  answer. An unknown table raises KeyError.

Endpoints are etcd's client URLs as etcd writes them, comma-separated:
"http://HOST:PORT[,http://HOST:PORT...]" (TLS to etcd is not supported yet). TLS to the
nodes takes Client's arguments (root_certificates, private_key, certificate_chain).

Needs grpcio and protobuf (Debian: python3-grpcio, python3-protobuf), as embstore.Client.
"""

import json
import operator
import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import ServerError, _embstore
from .client import (DEFAULT_MAX_MESSAGE_BYTES, ArrayLike, _fields, _float_list, _id_list,
                     _len_field, _packed_ids, _pem, _pool_options, _tp_name, _uint, _varint, grpc,
                     pb)

__all__ = ["Cluster", "ClusterTable"]

DEFAULT_PREFIX = "/embstore/"
_POOL_PARTIAL = f"/{pb.DESCRIPTOR.services_by_name['Embstore'].full_name}/PoolPartial"
_RANGE = "/etcdserverpb.KV/Range"
_WATCH = "/etcdserverpb.Watch/Watch"
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# --- etcd's v3 API, the few fields used (proto/etcd/rpc.proto), on the wire -------------

def _prefix_end(prefix: bytes) -> bytes:
    """etcd's range end for every key under `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _sub(buf, value) -> memoryview:
    start, end = value
    return memoryview(buf)[start:end]


def _key_value(buf) -> Tuple[bytes, bytes]:
    f = _fields(buf)
    key = bytes(_sub(buf, f[1][-1][1])) if 1 in f else b""
    value = bytes(_sub(buf, f[5][-1][1])) if 5 in f else b""
    return key, value


def _revision(buf, f) -> int:
    """The header's revision (ResponseHeader.revision = 3)."""
    if 1 not in f:
        return 0
    header = _sub(buf, f[1][-1][1])
    return _uint(_fields(header).get(3, []))


def _parse_endpoints(endpoints: str) -> List[str]:
    """"http://H:P,..." -> ["H:P", ...], with the C++ client's messages."""
    if not isinstance(endpoints, str):
        raise TypeError(f"endpoints must be a str, not {_tp_name(endpoints)}")
    out = []
    for url in endpoints.split(","):
        if not url:
            continue
        if url.startswith("https://"):
            raise ValueError(f"'{url}': TLS to etcd is not supported yet; give http:// "
                             f"endpoints (on a trusted network)")
        if not url.startswith("http://") or url == "http://":
            raise ValueError(f"'{url}' is not an etcd endpoint as etcd writes them "
                             f"(http://HOST:PORT)")
        hostport = url[len("http://"):].rstrip("/")
        if "/" in hostport or ":" not in hostport:
            raise ValueError(f"'{url}' must be http://HOST:PORT")
        out.append(hostport)
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


def _varints_np(mv) -> np.ndarray:
    """Concatenated protobuf varints (a packed repeated int64) as int64, vectorized."""
    b = np.frombuffer(mv, np.uint8)
    if b.size == 0:
        return np.zeros(0, np.int64)
    last = (b & 0x80) == 0
    if not last[-1]:
        raise ValueError("truncated varint")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) > 9:
        raise ValueError("varint too long")
    group = np.repeat(np.arange(ends.size), ends - starts + 1)
    shift = (np.arange(b.size) - starts[group]).astype(np.uint64) * np.uint64(7)
    parts = (b & 0x7F).astype(np.uint64) << shift
    return np.bitwise_or.reduceat(parts, starts).view(np.int64)


def _repeated_int64(buf, entries) -> np.ndarray:
    """A repeated int64 field, packed (one or more runs) or not."""
    runs = []
    for wire, value in entries:
        if wire == 0:
            runs.append(np.array([value], np.uint64).view(np.int64))
        elif wire == 2:
            runs.append(_varints_np(_sub(buf, value)))
        else:
            raise ValueError(f"wire type {wire} for an int64")
    return np.concatenate(runs) if runs else np.zeros(0, np.int64)


def _partial_reply(raw: bytes):
    """A PartialReply as ((values, counts, max_positions, nan_cells, nan_bits), version,
    checksum)."""
    f = _fields(raw)
    values = _sub(raw, f[2][-1][1]) if 2 in f else memoryview(b"")
    counts = _repeated_int64(raw, f.get(3, []))
    positions = _sub(raw, f[4][-1][1]) if 4 in f else memoryview(b"")
    cells = _repeated_int64(raw, f.get(5, []))
    bits = []
    for wire, value in f.get(6, []):  # fixed32: packed (2) or one value (5)
        if wire not in (2, 5):
            raise ValueError("nan_bits")
        bits.append(np.frombuffer(_sub(raw, value), "<u4"))
    nan_bits = np.concatenate(bits) if bits else np.zeros(0, np.uint32)
    version = _uint(f.get(7, []))
    checksum = 0
    for wire, value in f.get(8, []):  # fixed64
        if wire != 1:
            raise ValueError("checksum")
        checksum = int.from_bytes(_sub(raw, value), "little")
    return (values, counts, positions, cells, nan_bits), version, checksum


class _Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.sub_requests = 0
        self.retries = 0
        self.mismatched_replies = 0


class Cluster:
    """A client of an embstore cluster (see the module's documentation).

    endpoints: etcd's client URLs, "http://HOST:PORT[,...]". prefix: the cluster's key
    prefix in etcd (`--cluster-prefix`; default "/embstore/"). timeout: each query's
    deadline in seconds (default 30; a method's timeout= overrides it). attempt_timeout:
    how long one shard's node may take before the shard's next replica is asked (seconds).
    etcd_timeout: the deadline of each etcd call (seconds). root_certificates,
    private_key, certificate_chain, max_message_bytes: the nodes' channels, as Client's.

    Reading the routing at construction raises ServerError('UNAVAILABLE') when no etcd
    endpoint answers. A Cluster is safe to share between threads; close() (or `with`)
    stops its watch and closes its channels.
    """

    def __init__(self, endpoints: str, *, prefix: str = DEFAULT_PREFIX,
                 timeout: Optional[float] = None, attempt_timeout: float = 1.0,
                 etcd_timeout: float = 5.0,
                 root_certificates: Union[bytes, str, os.PathLike, None] = None,
                 private_key: Union[bytes, str, os.PathLike, None] = None,
                 certificate_chain: Union[bytes, str, os.PathLike, None] = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self._endpoints = endpoints
        self._etcd_targets = _parse_endpoints(endpoints)
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty str")
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("private_key and certificate_chain go together (mutual TLS)")
        self._prefix = prefix
        self._timeout = 30.0 if timeout is None else _seconds(timeout, "timeout")
        self._attempt = _seconds(attempt_timeout, "attempt_timeout")
        self._etcd_timeout = _seconds(etcd_timeout, "etcd_timeout")
        max_message_bytes = operator.index(max_message_bytes)
        if not 0 < max_message_bytes <= DEFAULT_MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be in 1..{DEFAULT_MAX_MESSAGE_BYTES}")
        root = _pem(root_certificates, "root_certificates")
        key = _pem(private_key, "private_key")
        chain = _pem(certificate_chain, "certificate_chain")
        self._credentials = None
        if root is not None or key is not None:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=chain)
        self._node_options = [("grpc.max_receive_message_length", max_message_bytes),
                              ("grpc.max_send_message_length", max_message_bytes)]
        self._lock = threading.Lock()
        self._nodes: Dict[str, str] = {}
        self._current: Dict[str, int] = {}
        self._manifests: Dict[str, Dict[int, dict]] = {}
        self._channels: Dict[str, Any] = {}  # node address -> (channel, PoolPartial)
        self._stats = _Stats()
        self._closed = threading.Event()
        self._etcd = [grpc.insecure_channel(t) for t in self._etcd_targets]
        self._preferred = 0
        self._watch_call = None
        revision = self._load()
        self._watcher = threading.Thread(target=self._watch_loop, args=(revision,),
                                         name="embstore-cluster-watch", daemon=True)
        self._watcher.start()

    # --- etcd ------------------------------------------------------------------------

    def _etcd_call(self, method: str, request: bytes, what: str) -> bytes:
        """A unary etcd call on each endpoint in turn, from the last that answered."""
        n = len(self._etcd)
        last = None
        for k in range(n):
            i = (self._preferred + k) % n
            try:
                reply = self._etcd[i].unary_unary(method)(request, timeout=self._etcd_timeout)
                self._preferred = i
                return reply
            except grpc.RpcError as e:
                last = e
                if e.code() not in _UNREACHABLE:
                    break
        raise ServerError(last.code().name, f"etcd: {what}: {last.details()}",
                          self._endpoints) from None

    def _load(self) -> int:
        """Reads everything under the prefix into a fresh routing; etcd's revision."""
        key = self._prefix.encode()
        raw = self._etcd_call(_RANGE, _len_field(1, key) + _len_field(2, _prefix_end(key)),
                              f"list {self._prefix}")
        f = _fields(raw)
        nodes: Dict[str, str] = {}
        current: Dict[str, int] = {}
        manifests: Dict[str, Dict[int, dict]] = {}
        for _, value in f.get(2, []):
            k, v = _key_value(_sub(raw, value))
            self._apply(nodes, current, manifests, False, k.decode(errors="replace"), v)
        with self._lock:
            self._nodes, self._current, self._manifests = nodes, current, manifests
        return _revision(raw, f)

    def _apply(self, nodes, current, manifests, deleted: bool, key: str, value: bytes):
        """One key's change into the routing (serve/cluster.cc's ApplyLocked)."""
        node_prefix = self._prefix + "nodes/"
        table_prefix = self._prefix + "tables/"
        if key.startswith(node_prefix):
            name = key[len(node_prefix):]
            if deleted:
                nodes.pop(name, None)
                return
            try:
                address = json.loads(value).get("address")
            except (ValueError, AttributeError):
                return
            if isinstance(address, str):
                nodes[name] = address
            return
        if not key.startswith(table_prefix):
            return
        table, slash, what = key[len(table_prefix):].partition("/")
        if not slash:
            return
        if what == "current":
            if deleted:
                current.pop(table, None)
            elif value.isdigit():
                current[table] = int(value)
            return
        if not what.startswith("versions/") or not what[len("versions/"):].isdigit():
            return
        version = int(what[len("versions/"):])
        if deleted:
            manifests.get(table, {}).pop(version, None)
            return
        try:
            m = json.loads(value)
            shards = [(int(s["begin"]), int(s["end"]), [str(n) for n in s["nodes"]],
                       int(s["checksum"], 16)) for s in m["shards"]]
            manifest = {"table": str(m["table"]), "version": int(m["version"]),
                        "state": str(m["state"]), "rows": int(m["rows"]),
                        "dim": int(m["dim"]), "dtype": str(m["dtype"]),
                        "replicas": int(m["replicas"]), "shards": shards}
        except (ValueError, KeyError, TypeError):
            return
        manifests.setdefault(table, {})[version] = manifest

    def _watch_loop(self, revision: int) -> None:
        """Follows every change under the prefix; after a break (etcd gone, a compacted
        revision), reads everything again and watches on from there."""
        key = self._prefix.encode()
        backoff = 0.05
        while not self._closed.is_set():
            if revision == 0:
                try:
                    revision = self._load()
                except (ServerError, ValueError):
                    self._closed.wait(backoff)
                    backoff = min(1.0, backoff * 2)
                    continue
            create = (_len_field(1, key) + _len_field(2, _prefix_end(key)) +
                      _varint_field(3, revision + 1))
            stop = threading.Event()

            def requests(create=create, stop=stop):
                yield _len_field(1, create)
                stop.wait()  # the stream stays open until closed or broken

            call = None
            try:
                call = self._etcd[self._preferred].stream_stream(_WATCH)(requests())
                with self._lock:
                    self._watch_call = call
                if self._closed.is_set():
                    call.cancel()
                for raw in call:
                    f = _fields(raw)
                    if _uint(f.get(4, [])) or _uint(f.get(5, [])):  # canceled / compacted
                        break
                    backoff = 0.05
                    events = f.get(11, [])
                    if not events:
                        continue
                    with self._lock:
                        for _, ev in events:
                            e = _sub(raw, ev)
                            ef = _fields(e)
                            deleted = _uint(ef.get(1, [])) == 1
                            if 2 not in ef:
                                continue
                            k, v = _key_value(_sub(e, ef[2][-1][1]))
                            self._apply(self._nodes, self._current, self._manifests, deleted,
                                        k.decode(errors="replace"), v)
                    revision = max(revision, _revision(raw, f))
            except grpc.RpcError:
                pass
            except ValueError:
                pass  # a reply that cannot be parsed: read everything again
            finally:
                stop.set()
                if call is not None:
                    call.cancel()
            if self._closed.is_set():
                break
            revision = 0  # read everything again (what changed meanwhile included)
            self._preferred = (self._preferred + 1) % len(self._etcd)
            self._closed.wait(backoff)
            backoff = min(1.0, backoff * 2)

    # --- the API -----------------------------------------------------------------------

    @property
    def endpoints(self) -> str:
        return self._endpoints

    def __repr__(self) -> str:
        return f"Cluster('{self._endpoints}', prefix='{self._prefix}')"

    def close(self) -> None:
        """Stops the watch and closes the channels (calls in flight are cancelled)."""
        self._closed.set()
        with self._lock:
            call = self._watch_call
            channels = list(self._channels.values())
            self._channels = {}
        if call is not None:
            call.cancel()
        self._watcher.join(timeout=10)
        for ch in self._etcd:
            ch.close()
        for ch, _ in channels:
            ch.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def tables(self) -> List[str]:
        """The tables with a current version, sorted."""
        with self._lock:
            return sorted(self._current)

    def nodes(self) -> Dict[str, str]:
        """The live nodes: name -> address."""
        with self._lock:
            return dict(self._nodes)

    def route(self, name: str) -> dict:
        """The manifest of `name`'s current version as routed now: table, version, state,
        rows, dim, dtype, replicas and shards [(begin, end, [node, ...], checksum), ...]
        (checksum: the xxh64 of the shard's stored rows). KeyError
        for a table with no current version; ServerError('UNAVAILABLE') when its manifest
        is missing or not ready."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {_tp_name(name)}")
        with self._lock:
            if name not in self._current:
                raise KeyError(f"unknown table '{name}' (not in the cluster at "
                               f"{self._endpoints})")
            version = self._current[name]
            m = self._manifests.get(name, {}).get(version)
        if m is None:
            raise ServerError("UNAVAILABLE", f"table '{name}': the manifest of its current "
                              f"version {version} is missing", self._endpoints)
        if m["state"] != "ready":
            raise ServerError("UNAVAILABLE", f"table '{name}': its current version "
                              f"{version} is not ready", self._endpoints)
        return m

    def table(self, name: str) -> "ClusterTable":
        """Table `name` (KeyError if the cluster has no current version of it). Each query
        uses the version current when it is made."""
        return ClusterTable(self, self.route(name))

    def stats(self) -> Dict[str, int]:
        """Queries made, sub-requests sent to nodes, sub-requests sent again to another
        replica (retries), and replies refused because their rows were not the manifest's
        (another version's rows under a shard's name)."""
        s = self._stats
        with s.lock:
            return {"requests": s.requests, "sub_requests": s.sub_requests,
                    "retries": s.retries, "mismatched_replies": s.mismatched_replies}

    # --- a query -----------------------------------------------------------------------

    def _pool_partial(self, address: str):
        with self._lock:
            got = self._channels.get(address)
            if got is None:
                if self._credentials is not None:
                    ch = grpc.secure_channel(address, self._credentials,
                                             options=self._node_options)
                else:
                    ch = grpc.insecure_channel(address, options=self._node_options)
                got = (ch, ch.unary_unary(_POOL_PARTIAL))
                self._channels[address] = got
            return got[1]

    def _query(self, name: str, split_of, node_mode: str, max_norm, norm_type, out,
               timeout) -> Tuple[np.ndarray, int]:
        deadline_s = self._timeout if timeout is None else _seconds(timeout, "timeout")
        m = self.route(name)
        split = split_of(m)  # the local Table's checks, against the manifest's shape
        with self._stats.lock:
            self._stats.requests += 1
        options = _pool_options(node_mode, max_norm, norm_type, None)
        with self._lock:
            address = dict(self._nodes)
        deadline = time.monotonic() + deadline_s
        version = m["version"]
        shards = m["shards"]
        requests: List[Optional[bytes]] = []
        for s in range(split.shards):
            part = split.part(s)
            if part is None:
                requests.append(None)
                continue
            ids, offsets, weights = part
            head = pb.EmbeddingBagRequest(table=f"{name}.v{version}.s{s}", options=options)
            bag = b"".join([head.SerializeToString(), _packed_ids(2, ids), _id_list(4, offsets),
                            b"" if weights is None else _float_list(5, weights)])
            requests.append(_len_field(1, bag))
        why: List[List[str]] = [[] for _ in shards]
        next_replica = [0] * len(shards)
        tried = [0] * len(shards)
        calls: List[Any] = [None] * len(shards)

        def start(s: int) -> bool:
            replicas = shards[s][2]
            while next_replica[s] < len(replicas):
                r = next_replica[s]
                next_replica[s] += 1
                node = replicas[r]
                if node not in address:
                    why[s].append(f"{node}: not live")
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    why[s].append("the deadline passed")
                    return False
                attempt = min(left, self._attempt) if r + 1 < len(replicas) else left
                with self._stats.lock:
                    self._stats.sub_requests += 1
                    if tried[s]:
                        self._stats.retries += 1
                tried[s] += 1
                calls[s] = (node, self._pool_partial(address[node]).future(
                    requests[s], timeout=attempt))
                return True
            return False

        failed: List[str] = []
        for s, req in enumerate(requests):
            if req is not None and not start(s):
                failed.append(s)
        partials: List[Any] = [None] * len(shards)
        for s, req in enumerate(requests):
            if req is None or s in failed:
                continue
            while True:
                node, future = calls[s]
                try:
                    partial, got_version, checksum = _partial_reply(future.result())
                    if got_version == version and checksum == shards[s][3]:
                        partials[s] = partial
                        break
                    # another version's rows under the shard's name: refused
                    why[s].append(f"{node}: rows of another version (version {got_version}, "
                                  f"checksum {checksum:016x} where the manifest has "
                                  f"{shards[s][3]:016x})")
                    with self._stats.lock:
                        self._stats.mismatched_replies += 1
                except grpc.RpcError as e:
                    why[s].append(f"{node}: {e.code().name}: {e.details()}")
                except ValueError as e:
                    why[s].append(f"{node}: a malformed reply ({e})")
                if not start(s):
                    failed.append(s)
                    break
        if failed:
            detail = ", ".join(f"shard {s} ({'; '.join(why[s])})" for s in sorted(failed))
            raise ServerError("UNAVAILABLE", f"table '{name}' version {version}: no replica "
                              f"answered for {detail}", self._endpoints)
        try:
            result = split.merge(partials, out)
        except ValueError as e:
            if not str(e).startswith("a node's partial"):
                raise  # `out` refused, as the local Table refuses it
            raise ServerError("UNAVAILABLE", f"table '{name}' version {version}: {e}",
                              self._endpoints) from None
        return result, version


def _varint_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _seconds(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number of seconds, not {_tp_name(value)}") from None
    if not v > 0:
        raise ValueError(f"{what} must be > 0 seconds, not {value}")
    return v


class ClusterTable:
    """Table `name` of a cluster, with the local Table's pooling methods.

    name, shape and dtype are those of the version current when Cluster.table() was
    called; version is the version the last query was computed from. Each query uses the
    table's current version at the time it is made.
    """

    def __init__(self, cluster: Cluster, manifest: dict):
        self._cluster = cluster
        self._name = manifest["table"]
        self._shape = (manifest["rows"], manifest["dim"])
        self._dtype = manifest["dtype"]
        self._version = manifest["version"]
        self._shards = len(manifest["shards"])

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> Tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def version(self) -> int:
        return self._version

    def __repr__(self) -> str:
        return (f"ClusterTable('{self._name}', shape={self._shape}, dtype='{self._dtype}', "
                f"version={self._version}, shards={self._shards})")

    def embedding_bag(self, input: ArrayLike, offsets: Optional[ArrayLike] = None,
                      max_norm: Optional[float] = None, norm_type: float = 2.0,
                      mode: str = "mean", per_sample_weights: Optional[ArrayLike] = None,
                      include_last_offset: bool = False, padding_idx: Optional[int] = None,
                      out: Optional[np.ndarray] = None, *,
                      timeout: Optional[float] = None) -> np.ndarray:
        """torch.nn.functional.embedding_bag over this table, pooled at the nodes and merged
        here: float32 [B, dim], as Table.embedding_bag."""

        def split_of(m):
            return _embstore._shard_bags(
                m["rows"], m["dim"], m["dtype"], self._name, [s[0] for s in m["shards"]],
                input, offsets, max_norm, norm_type, mode, per_sample_weights,
                include_last_offset, padding_idx)

        result, self._version = self._cluster._query(
            self._name, split_of, "max" if mode == "max" else "sum", max_norm, norm_type,
            out, timeout)
        return result

    def batched_embedding_bag(self, input: ArrayLike, bag_ends: ArrayLike,
                              per_sample_weights: Optional[ArrayLike] = None,
                              mode: str = "sum", padding_idx: Optional[int] = None,
                              max_norm: Optional[float] = None, norm_type: float = 2.0,
                              out: Optional[np.ndarray] = None, *,
                              timeout: Optional[float] = None) -> np.ndarray:
        """Batched bags with inclusive end offsets: input [B, N], bag_ends [B, K] ->
        float32 [B, K, dim], as Table.batched_embedding_bag."""

        def split_of(m):
            return _embstore._shard_batched_bags(
                m["rows"], m["dim"], m["dtype"], self._name, [s[0] for s in m["shards"]],
                input, bag_ends, per_sample_weights, mode, padding_idx, max_norm, norm_type)

        result, self._version = self._cluster._query(
            self._name, split_of, "max" if mode == "max" else "sum", max_norm, norm_type,
            out, timeout)
        return result
