#!/usr/bin/python3
"""Shared parts of the checkpoint-fixture writer (make_checkpoints.py): a pickle writer
that fakes torch's classes, the manifest and its records, zip writing in torch's layout,
and hand-crafted torch pickles. Imported by make_checkpoints.py; not run on its own.
Debian's /usr/bin/python3 with python3-torch (1.13) and numpy.
"""
import collections
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------
# A fake `torch` for crafting torch 2.x pickles (run in a child process, never with torch).
# ---------------------------------------------------------------------------------------
def fake_torch_pickle(spec):
    """Pickles `spec` (JSON from the parent) exactly as torch.save's pickler would, with
    globals resolved against stand-in modules named like torch's."""
    import types

    def module(name):
        m = types.ModuleType(name)
        sys.modules[name] = m
        return m

    torch = module("torch")
    utils = module("torch._utils")
    tensor_mod = module("torch._tensor")
    module("torch.nn")
    param_mod = module("torch.nn.parameter")

    def fn(mod, name):
        def f(*args):
            raise RuntimeError("never called")
        f.__module__ = mod.__name__
        f.__name__ = f.__qualname__ = name
        setattr(mod, name, f)
        return f

    rebuild_v2 = fn(utils, "_rebuild_tensor_v2")
    rebuild_param = fn(utils, "_rebuild_parameter")
    rebuild_param_state = fn(utils, "_rebuild_parameter_with_state")
    rebuild_from_type = fn(tensor_mod, "_rebuild_from_type_v2")

    def cls(mod, name):
        c = type(name, (), {})
        c.__module__ = mod.__name__
        c.__qualname__ = name
        setattr(mod, name, c)
        return c

    storages = {n: cls(torch, n) for n in ("FloatStorage", "HalfStorage", "BFloat16Storage",
                                           "DoubleStorage", "LongStorage")}
    parameter = cls(param_mod, "Parameter")

    class Storage:
        def __init__(self, type_name, key, numel):
            self.type_name, self.key, self.numel = type_name, key, numel

    class Tensor:
        def __init__(self, t, storage):
            self.t, self.storage = t, storage

        def args(self):
            return (self.storage, self.t["offset"], tuple(self.t["size"]), tuple(self.t["stride"]),
                    False, collections.OrderedDict())

        def __reduce_ex__(self, proto):
            kind = self.t.get("kind", "tensor")
            if kind == "parameter":
                return (rebuild_param, (Tensor(dict(self.t, kind="tensor"), self.storage), True,
                                        collections.OrderedDict()))
            if kind == "parameter_with_state":
                return (rebuild_param_state, (Tensor(dict(self.t, kind="tensor"), self.storage), True,
                                              collections.OrderedDict(), {"tag": "x"}))
            if kind == "from_type":
                return (rebuild_from_type, (rebuild_v2, parameter, self.args(), {}))
            return (rebuild_v2, self.args())

    storage_objs = {}
    for s in spec["storages"]:
        storage_objs[s["key"]] = Storage(s["type"], s["key"], s["numel"])

    def build(node):
        if isinstance(node, dict) and "__tensor__" in node:
            t = node["__tensor__"]
            return Tensor(t, storage_objs[t["storage"]])
        if isinstance(node, dict):
            od = collections.OrderedDict((k, build(v)) for k, v in node.items())
            od._metadata = collections.OrderedDict([("", {"version": 1})])
            return od
        if isinstance(node, list):
            return [build(v) for v in node]
        return node

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", storages[obj.type_name], obj.key, "cpu", obj.numel)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(build(spec["root"]))
    return buf.getvalue()


if len(sys.argv) > 1 and sys.argv[1] == "--fake-torch-pickle":
    sys.stdout.buffer.write(fake_torch_pickle(json.loads(sys.stdin.read())))
    sys.exit(0)

import numpy as np  # noqa: E402
import torch  # noqa: E402


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
MANIFEST = collections.OrderedDict()


def out(*parts):
    return os.path.join(HERE, *parts)


def as_rows_f32(t):
    """What embstore reads: float32, C order, rows x dim."""
    if isinstance(t, torch.Tensor):
        a = t.detach().to(torch.float32).contiguous().numpy()
    else:
        a = np.ascontiguousarray(np.asarray(t).astype(np.float32))
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    return np.ascontiguousarray(a)


DTYPE_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16",
               torch.bfloat16: "bf16", torch.int64: "int64", torch.int32: "int32",
               torch.uint8: "uint8", torch.bool: "bool",
               np.dtype("float32"): "f32", np.dtype("float64"): "f64", np.dtype("float16"): "f16",
               np.dtype("int64"): "int64", np.dtype("int32"): "int32", np.dtype("uint8"): "uint8",
               np.dtype("bool"): "bool"}


def record(file_name, key, tensor, dtype=None, shape=None):
    """Adds one tensor to the manifest; writes its expected rows when importable."""
    entry = MANIFEST.setdefault(file_name, {"tensors": [], "scalars": {}})
    if dtype is None:
        dtype = DTYPE_NAMES[tensor.dtype]
    if shape is None:
        shape = list(tensor.shape)
    item = {"key": key, "dtype": dtype, "shape": shape}
    if dtype not in ("f32", "f64", "f16", "bf16"):
        item["refused"] = "has dtype " + dtype
    elif len(shape) == 0:
        item["refused"] = "0-dimensional"
    elif len(shape) > 2:
        item["refused"] = "only 1-D"
    else:
        rel = os.path.join("expected", file_name, (key or "_root") + ".npy")
        os.makedirs(os.path.dirname(out(rel)), exist_ok=True)
        np.save(out(rel), as_rows_f32(tensor))
        item["expected"] = rel
    entry["tensors"].append(item)


def record_scalar(file_name, key, value):
    MANIFEST.setdefault(file_name, {"tensors": [], "scalars": {}})["scalars"][key] = value


def write_zip(path, members, torch_style=True, zip64=False, compress=False):
    """A minimal zip writer: PyTorch-like 64-byte data alignment via an 'FB' padding extra
    field in the local header only (torch's writer does this), optional ZIP64 records."""
    data_out = bytearray()
    central = []
    for name, data in members:
        nb = name.encode()
        crc = zlib.crc32(data) & 0xffffffff
        method, payload = 0, data
        if compress:
            co = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload, method = co.compress(data) + co.flush(), 8
        offset = len(data_out)
        extra = b""
        if torch_style:
            start = offset + 30 + len(nb) + 4
            pad = (-start) % 64
            extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        data_out += struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, method, 0, 0x21, crc,
                                len(payload), len(data), len(nb), len(extra)) + nb + extra + payload
        central.append((nb, crc, method, len(payload), len(data), offset))
    cd_start = len(data_out)
    for nb, crc, method, csize, usize, offset in central:
        extra = b""
        fields = (csize, usize, offset)
        if zip64:
            extra = struct.pack("<HHQQQ", 1, 24, usize, csize, offset)
            fields = (0xffffffff, 0xffffffff, 0xffffffff)
        data_out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 45, 45 if zip64 else 20, 0, method,
                                0, 0x21, crc, fields[0], fields[1], len(nb), len(extra), 0, 0, 0, 0,
                                fields[2]) + nb + extra
    cd_end = len(data_out)
    n = len(central)
    if zip64:
        z64 = len(data_out)
        data_out += struct.pack("<IQHHIIQQQQ", 0x06064b50, 44, 45, 45, 0, 0, n, n, cd_end - cd_start,
                                cd_start)
        data_out += struct.pack("<IIQI", 0x07064b50, 0, z64, 1)
        data_out += struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, 0xffff, 0xffff, 0xffffffff,
                                0xffffffff, 0)
    else:
        data_out += struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, n, n, cd_end - cd_start, cd_start, 0)
    with open(path, "wb") as f:
        f.write(data_out)


def tensor_bytes(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 \
        else t.contiguous().numpy().tobytes()


def crafted_torch_pickle(spec):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--fake-torch-pickle"],
                       input=json.dumps(spec).encode(), capture_output=True, check=True)
    return r.stdout


class P:
    """Hand-assembled pickle opcodes (for hostile and inconsistent files)."""

    def __init__(self, proto=2):
        self.b = bytearray(b"\x80" + bytes([proto]))

    def op(self, raw):
        self.b += raw
        return self

    def glob(self, mod, name):
        return self.op(b"c" + mod.encode() + b"\n" + name.encode() + b"\n")

    def s(self, text):
        e = text.encode()
        return self.op(b"X" + struct.pack("<I", len(e)) + e)

    def i(self, v):
        return self.op(b"J" + struct.pack("<i", v))

    def tensor(self, storage_type, key, numel, offset, size, stride):
        self.glob("torch._utils", "_rebuild_tensor_v2").op(b"(")
        self.op(b"(").s("storage").glob("torch", storage_type).s(key).s("cpu").i(numel).op(b"tQ")
        self.i(offset).op(b"(")
        for d in size:
            self.i(d)
        self.op(b"t(")
        for d in stride:
            self.i(d)
        self.op(b"t\x89").glob("collections", "OrderedDict").op(b")Rt")
        return self.op(b"R")

    def bytes(self):
        return bytes(self.b + b".")
