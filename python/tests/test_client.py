"""embstore.Client's own parts, without a server: its numpy wire encoding is what protobuf
parses (and writes), its reply reader reads what protobuf writes, `import embstore` works
without grpcio, and the stubs are in the installed package. test_serve.py runs the client
against the real server."""

import pathlib
import subprocess
import sys

import numpy as np

import embstore
from embstore import client as c
from embstore.v1 import embstore_pb2 as pb


def test_stubs_are_installed_with_the_package():
    pkg = pathlib.Path(embstore.__file__).parent
    for f in ("client.py", "v1/__init__.py", "v1/embstore_pb2.py", "v1/embstore_pb2_grpc.py"):
        assert (pkg / f).is_file(), f
    from embstore.v1 import embstore_pb2_grpc
    assert hasattr(embstore_pb2_grpc, "EmbstoreStub")


def test_ids_encode_as_protobuf_does():
    rng = np.random.default_rng(0)
    edges = np.array([0, 1, 127, 128, 255, 16383, 16384, 2**31 - 1, -(2**31), 2**32, 2**62,
                      2**63 - 1, -(2**63), -1, -128], np.int64)
    for a in (edges, rng.integers(-(2**63), 2**63 - 1, 5000), rng.integers(0, 100, 700),
              rng.integers(0, 1 << 20, 700).astype(np.int32), np.zeros(0, np.int64),
              np.arange(12, dtype=np.uint16).reshape(3, 4)):
        want = a.reshape(-1).astype(np.int64).tolist()
        # exactly protobuf's bytes for the packed field
        assert c._packed_ids(2, a) == pb.EmbeddingBagRequest(indices=want).SerializeToString()
        m = pb.EmbeddingBagRequest.FromString(
            c._packed_ids(2, a) + c._id_list(4, a) + c._float_list(5, a.astype(np.float64)))
        assert list(m.indices) == want and list(m.offsets.values) == want
        assert m.HasField("offsets") and m.HasField("per_sample_weights")
        assert np.array_equal(np.array(m.per_sample_weights.values, np.float32),
                              a.reshape(-1).astype(np.float32))


def test_replies_read_as_protobuf_writes_them():
    values = np.random.default_rng(1).standard_normal((3, 2, 5)).astype(np.float32)
    raw = pb.PooledReply(shape=[3, 2, 5], values=values.tobytes(), table="t",
                         version=2**40).SerializeToString()
    shape, got, version = c._pooled_reply(raw)
    assert shape == [3, 2, 5] and version == 2**40
    assert np.array_equal(got.reshape(shape), values)
    empty = pb.PooledReply(shape=[0, 7], table="t", version=1).SerializeToString()
    assert c._pooled_reply(empty)[0] == [0, 7] and c._pooled_reply(empty)[1].size == 0
    bad = pb.PooledReply(shape=[2, 2], values=b"\0" * 12).SerializeToString()
    try:
        c._pooled_reply(bad)
        raise AssertionError("a reply with 12 bytes for [2, 2] was read")
    except c._Malformed as e:
        assert "12 bytes" in str(e)
    scores = np.array([1.5, -2.25, 3.0], np.float32)
    raw = pb.FmScoreReply(scores=scores.tolist(), vectors_version=3).SerializeToString()
    assert np.array_equal(c._fm_reply(raw), scores)


def test_import_embstore_without_grpc():
    code = """
import sys
sys.modules['grpc'] = None          # as if grpcio were not installed
import embstore
assert embstore.Store and embstore.ServerError and 'grpc' not in [m for m in sys.modules if sys.modules[m]]
from embstore import *
try:
    embstore.Client
except ImportError as e:
    assert 'python3-grpcio' in str(e), e
    print('import error ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "import error ok" in r.stdout


def test_server_error():
    e = embstore.ServerError("UNAVAILABLE", "connection refused", "127.0.0.1:1")
    assert isinstance(e, OSError)
    assert (e.code, e.details, e.target) == ("UNAVAILABLE", "connection refused", "127.0.0.1:1")
    assert str(e) == "127.0.0.1:1: UNAVAILABLE: connection refused"
    assert embstore.Client is c.Client and embstore.RemoteTable is c.RemoteTable
