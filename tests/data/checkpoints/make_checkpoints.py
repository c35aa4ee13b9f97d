#!/usr/bin/python3
"""Writes the checkpoint fixtures of checkpoint_reader_test (and the fuzz seeds).

Run with Debian's interpreter, which has python3-torch (1.13) and numpy:

    /usr/bin/python3 tests/data/checkpoints/make_checkpoints.py

Outputs, next to this script:
  *.pt, *.npz, *.safetensors     valid checkpoints (torch.save 1.13, a hand-made torch 2.x
                                 layout, np.savez / np.savez_compressed, hand-written safetensors)
  bad/*                          hostile, truncated and inconsistent files that must be refused
  expected/<file>/<key>.npy      what each importable tensor reads as: float32, C order,
                                 rows x dim (1-D tensors as N x 1)
  manifest.json                  per file: every tensor (key, dtype, shape, expected .npy or
                                 the reason it cannot be imported) and numeric scalars
  ../../../fuzz/corpus/<target>/ seed corpora of the fuzz targets (copies and small variants)
Everything is deterministic except the zip timestamps numpy writes.
"""
import collections
import io
import json
import os
import pickle
import shutil
import struct

import numpy as np
import torch

from checkpoint_lib import (
    DTYPE_NAMES,
    HERE,
    MANIFEST,
    P,
    crafted_torch_pickle,
    out,
    record,
    record_scalar,
    tensor_bytes,
    write_zip,
)

# ---------------------------------------------------------------------------------------
# torch.save 1.13 files
# ---------------------------------------------------------------------------------------
def torch_files():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.fc = torch.nn.Linear(4, 3)

    net = Net()
    sd = net.state_dict()
    torch.save(sd, out("state_dict.pt"))
    for k, v in sd.items():
        record("state_dict.pt", k, v)

    # A training checkpoint: nested dicts, an optimizer, non-tensor leaves.
    model = torch.nn.Sequential(collections.OrderedDict(emb=torch.nn.Embedding(12, 6)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.emb(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "bias": 0.25,
            "name": "run-1", "history": [0.5, 0.25], "best": None,
            "metrics": {"acc": np.float64(0.875), "loss": np.float32(0.5), "seen": np.int64(-1234)}}
    torch.save(ckpt, out("training.pt"))
    record("training.pt", "model.emb.weight", ckpt["model"]["emb.weight"])
    st = ckpt["optimizer"]["state"][0]
    for k in st:
        record("training.pt", "optimizer.state.0." + k, st[k])
    for key, value in (("epoch", 3), ("bias", 0.25), ("history.0", 0.5), ("history.1", 0.25),
                       ("optimizer.param_groups.0.lr", 0.01), ("metrics.acc", 0.875),
                       ("metrics.loss", 0.5), ("metrics.seen", -1234)):
        record_scalar("training.pt", key, value)
    record_scalar("training.pt", "optimizer.state.0.step", float(st["step"]))

    # Every dtype, special values, scalars and ranks that cannot be imported.
    f16_special = torch.tensor([[0.0, -0.0, 1.0, -2.5], [65504.0, -65504.0, float("inf"), float("-inf")],
                                [6.0e-8, -6.0e-8, 6.1035e-05, 3.0e-6], [float("nan"), 0.1, 1e-3, 2.0 ** -24]],
                               dtype=torch.float16)
    bf16_special = torch.tensor([[0.0, -0.0, 1.0, 3.0e38], [-3.0e38, float("inf"), float("-inf"), 1e-39],
                                 [1e-40, float("nan"), 0.1, -7.25]], dtype=torch.bfloat16)
    dtypes = collections.OrderedDict([
        ("f32", torch.randn(5, 3)),
        ("f64", torch.randn(4, 2, dtype=torch.float64) * 1e3),
        ("f16", torch.randn(6, 4).half()),
        ("bf16", torch.randn(3, 5).bfloat16()),
        ("f16_special", f16_special),
        ("bf16_special", bf16_special),
        ("ids", torch.arange(6, dtype=torch.int64).reshape(2, 3)),
        ("mask", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(2.5)),
        ("one", torch.tensor([[7.0]], dtype=torch.float64)),
        ("count", torch.tensor(42)),
        ("cube", torch.zeros(2, 2, 2)),
        ("empty", torch.zeros(0, 4)),
    ])
    torch.save(dtypes, out("dtypes.pt"))
    for k, v in dtypes.items():
        record("dtypes.pt", k, v)
    record_scalar("dtypes.pt", "scalar", 2.5)
    record_scalar("dtypes.pt", "one", 7.0)
    record_scalar("dtypes.pt", "count", 42)

    # Views: strides, storage offsets, shared storages, expanded (stride 0) tensors.
    base = torch.arange(48, dtype=torch.float32).reshape(8, 6) * 0.5 - 3
    wide = torch.randn(40, 70)
    views = collections.OrderedDict([
        ("base", base),
        ("transposed", base.t()),
        ("slice", base[2:5]),
        ("cols", base[:, 1:4]),
        ("strided", base[::2, ::3]),
        ("shared_a", base[0:4]),
        ("shared_b", base[4:8]),
        ("row", base[3]),
        ("column", base[:, 2]),
        ("expanded", torch.arange(5, dtype=torch.float32).reshape(1, 5).expand(4, 5)),
        ("half_t", torch.randn(5, 7).half().t()),
        ("wide_t", wide.t()),
        ("wide_cols", wide[:, 10:13]),
        ("wide_sparse", wide[1::3, ::9]),
    ])
    torch.save(views, out("views.pt"))
    for k, v in views.items():
        record("views.pt", k, v)

    # nn.Parameter objects (torch._utils._rebuild_parameter), a bare tensor, a list root.
    params = {"w": torch.nn.Parameter(torch.randn(3, 2)), "b": torch.nn.Parameter(torch.randn(2))}
    torch.save(params, out("parameters.pt"))
    for k, v in params.items():
        record("parameters.pt", k, v)
    bare = torch.randn(4, 3)
    torch.save(bare, out("bare_tensor.pt"))
    record("bare_tensor.pt", "", bare)
    lst = [torch.randn(2, 2), {"a": torch.randn(3)}, 5]
    torch.save(lst, out("list_root.pt"))
    record("list_root.pt", "0", lst[0])
    record("list_root.pt", "1.a", lst[1]["a"])
    record_scalar("list_root.pt", "2", 5)


def torch2_file():
    """The torch 2.x layout (archive/ prefix, .format_version, .storage_alignment, byteorder,
    data/serialization_id) with 2.x-only pickle constructs, written by hand."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 4, generator=g)
    h = torch.randn(3, 5, generator=g).half()
    bf = torch.randn(2, 3, generator=g).bfloat16()
    spec = {
        "storages": [{"type": "FloatStorage", "key": "0", "numel": 24},
                     {"type": "HalfStorage", "key": "1", "numel": 15},
                     {"type": "BFloat16Storage", "key": "2", "numel": 6}],
        "root": {
            "emb.weight": {"__tensor__": {"storage": "0", "offset": 0, "size": [6, 4], "stride": [4, 1],
                                          "kind": "parameter_with_state"}},
            "emb.weight_t": {"__tensor__": {"storage": "0", "offset": 0, "size": [4, 6], "stride": [1, 4],
                                            "kind": "from_type"}},
            "proj.weight": {"__tensor__": {"storage": "1", "offset": 0, "size": [3, 5], "stride": [5, 1],
                                           "kind": "parameter"}},
            "proj.bias": {"__tensor__": {"storage": "2", "offset": 3, "size": [3], "stride": [1]}},
            "step": 7,
        },
    }
    pkl = crafted_torch_pickle(spec)
    members = [("archive/data.pkl", pkl), ("archive/.format_version", b"1"),
               ("archive/.storage_alignment", b"64"), ("archive/byteorder", b"little"),
               ("archive/data/0", tensor_bytes(a)), ("archive/data/1", tensor_bytes(h)),
               ("archive/data/2", tensor_bytes(bf)), ("archive/version", b"3\n"),
               ("archive/.data/serialization_id", b"1234567890123456789012345678901234567890")]
    write_zip(out("torch2.pt"), members)
    record("torch2.pt", "emb.weight", a)
    record("torch2.pt", "emb.weight_t", a.t())
    record("torch2.pt", "proj.weight", h)
    record("torch2.pt", "proj.bias", bf[1])
    record_scalar("torch2.pt", "step", 7)
    return members


# ---------------------------------------------------------------------------------------
# safetensors and npz
# ---------------------------------------------------------------------------------------
def write_safetensors(path, tensors, metadata=None, pad_to=8):
    header = collections.OrderedDict()
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs, offset = [], 0
    for name, (st_dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % pad_to)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def safetensors_file():
    g = torch.Generator().manual_seed(2)
    ts = collections.OrderedDict([
        ("embedding", torch.randn(5, 3, generator=g)),
        ("half", torch.randn(4, 2, generator=g).half()),
        ("brain", torch.randn(3, 4, generator=g).bfloat16()),
        ("double", torch.randn(2, 2, generator=g).double()),
        ("vector", torch.randn(7, generator=g)),
        ("ids", torch.arange(4, dtype=torch.int64)),
        ("temperature", torch.tensor(0.75)),
        ("nd", torch.zeros(2, 1, 2)),
    ])
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64"}
    write_safetensors(out("weights.safetensors"),
                      collections.OrderedDict((k, (names[v.dtype], v.shape, tensor_bytes(v)))
                                              for k, v in ts.items()),
                      metadata={"format": "pt"})
    for k, v in ts.items():
        record("weights.safetensors", k, v)
    record_scalar("weights.safetensors", "temperature", 0.75)


def npz_files():
    rng = np.random.default_rng(3)
    arrays = collections.OrderedDict([
        ("a", rng.standard_normal((7, 3)).astype(np.float32)),
        ("b", rng.standard_normal(5)),
        ("c", rng.standard_normal((4, 2)).astype(np.float16)),
        ("fortran", np.asfortranarray(rng.standard_normal((6, 4)).astype(np.float32))),
        ("ints", np.arange(6, dtype=np.int64).reshape(3, 2)),
        ("scalar", np.float64(1.5)),
    ])
    np.savez(out("stored.npz"), **arrays)
    for k, v in arrays.items():
        record("stored.npz", k, v, dtype=DTYPE_NAMES[np.asarray(v).dtype], shape=list(np.shape(v)))
    record_scalar("stored.npz", "scalar", 1.5)
    # Compressed: a member larger than the read window would be in a small test, and a
    # Fortran-order member (read through a temp-file spill).
    big = (np.sin(np.arange(300 * 17, dtype=np.float32) * 0.01).reshape(300, 17) * 100).round(2)
    carr = collections.OrderedDict([
        ("big", big.astype(np.float32)),
        ("fortran", np.asfortranarray(rng.standard_normal((33, 5)))),
        ("small", rng.standard_normal((3, 3)).astype(np.float16)),
    ])
    np.savez_compressed(out("compressed.npz"), **carr)
    for k, v in carr.items():
        record("compressed.npz", k, v, dtype=DTYPE_NAMES[v.dtype], shape=list(v.shape))
    # ZIP64 central directory records, hand-written.
    buf = io.BytesIO()
    z = rng.standard_normal((4, 4)).astype(np.float32)
    np.save(buf, z)
    write_zip(out("zip64.npz"), [("z.npy", buf.getvalue())], torch_style=False, zip64=True)
    record("zip64.npz", "z", z, dtype="f32", shape=[4, 4])


# ---------------------------------------------------------------------------------------
# Files that must be refused
# ---------------------------------------------------------------------------------------
def bad_files(torch2_members):
    bad = out("bad")
    os.makedirs(bad, exist_ok=True)
    w = torch.arange(8, dtype=torch.float32)

    def torch_zip(name, pkl, extra=()):
        write_zip(os.path.join(bad, name), [("archive/data.pkl", pkl), ("archive/data/0", tensor_bytes(w)),
                                            *extra])

    # Code execution attempts: os.system via GLOBAL+REDUCE, builtins.eval via STACK_GLOBAL
    # (protocol 4), INST, and a dangerous global hidden inside a valid-looking state dict.
    torch_zip("os_system.pt", P().op(b"}(").s("evil").glob("os", "system").s("touch /tmp/embstore_pwned")
              .op(b"\x85Ru").bytes())
    cmd = b"__import__('os').system('id')"
    p4 = P(4).op(b"\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c" + bytes([len(cmd)]) + cmd +
                 b"\x94\x85\x94R\x94")
    torch_zip("builtins_eval.pt", p4.bytes())
    torch_zip("inst.pt", P().op(b"(").s("touch /tmp/embstore_pwned").op(b"ios\nsystem\n").bytes())
    mixed = P().op(b"}(").s("emb.weight").tensor("FloatStorage", "0", 8, 0, [4, 2], [2, 1])
    mixed.s("hook").glob("__builtin__", "getattr").op(b"u")
    torch_zip("getattr_in_state_dict.pt", mixed.bytes())
    # Structural damage.
    torch_zip("view_past_storage.pt", P().op(b"}(").s("w").tensor("FloatStorage", "0", 8, 2, [4, 2], [2, 1])
              .op(b"u").bytes())
    torch_zip("numel_past_member.pt", P().op(b"}(").s("w").tensor("FloatStorage", "0", 100, 0, [50, 2], [2, 1])
              .op(b"u").bytes())
    torch_zip("missing_storage.pt", P().op(b"}(").s("w").tensor("FloatStorage", "7", 8, 0, [4, 2], [2, 1])
              .op(b"u").bytes())
    torch_zip("truncated_pickle.pt", P().op(b"}(").s("w").tensor("FloatStorage", "0", 8, 0, [4, 2], [2, 1])
              .bytes()[:-20])
    torch_zip("huge_string.pt", P().op(b"X\xff\xff\xff\x7f").bytes())
    write_zip(os.path.join(bad, "big_endian.pt"),
              [(n, b"big" if n.endswith("byteorder") else d) for n, d in torch2_members])
    # Truncated copies of valid files.
    for src, name in (("state_dict.pt", "truncated_state_dict.pt"), ("weights.safetensors",
                      "truncated_weights.safetensors"), ("stored.npz", "truncated_stored.npz"),
                      ("compressed.npz", "truncated_compressed.npz")):
        data = open(out(src), "rb").read()
        with open(os.path.join(bad, name), "wb") as f:
            f.write(data[:len(data) * 2 // 3])
    # A compressed member whose deflate stream is damaged but whose directory is intact.
    import zipfile
    info = zipfile.ZipFile(out("compressed.npz")).getinfo("big.npy")
    data = bytearray(open(out("compressed.npz"), "rb").read())
    i = info.header_offset + info.compress_size * 3 // 4  # well past the .npy header
    data[i:i + 64] = b"\xff" * 64
    with open(os.path.join(bad, "corrupt_deflate.npz"), "wb") as f:
        f.write(data)
    # safetensors: absurd header length, offsets past the end, offsets inconsistent with shape.
    with open(os.path.join(bad, "header_too_long.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", 1 << 40) + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    raw = np.arange(6, dtype=np.float32).tobytes()
    write_safetensors(os.path.join(bad, "offsets_past_end.safetensors"),
                      {"a": ("F32", [6], raw)})
    with open(os.path.join(bad, "offsets_past_end.safetensors"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(bad, "offsets_past_end.safetensors")) - 8)
    write_safetensors(os.path.join(bad, "shape_mismatch.safetensors"), {"a": ("F32", [7], raw)})
    with open(os.path.join(bad, "deep_json.safetensors"), "wb") as f:
        h = b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}"
        f.write(struct.pack("<Q", len(h)) + h)
    # Not checkpoints at all.
    with open(os.path.join(bad, "not_a_checkpoint.txt"), "wb") as f:
        f.write(b"hello, this is text\n")
    open(os.path.join(bad, "empty.bin"), "wb").close()
    write_zip(os.path.join(bad, "plain.zip"), [("readme.txt", b"hi")], torch_style=False)
    # The pre-1.6 torch.save format.
    with open(os.path.join(bad, "legacy.pt"), "wb") as f:
        torch.save(torch.zeros(2), f, _use_new_zipfile_serialization=False)


def fuzz_corpus():
    root = os.path.join(HERE, "..", "..", "..", "fuzz", "corpus")
    dirs = {t: os.path.join(root, t) for t in ("pickle", "safetensors", "npz_pt", "npy")}
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    def put(target, name, data):
        with open(os.path.join(dirs[target], name), "wb") as f:
            f.write(data)

    import zipfile
    zips = [n for n in sorted(os.listdir(HERE)) if n.endswith((".pt", ".npz"))]
    zips += ["bad/" + n for n in sorted(os.listdir(out("bad"))) if n.endswith((".pt", ".npz", ".zip"))]
    for n in zips:
        data = open(out(n), "rb").read()
        if len(data) <= 16 << 10:
            put("npz_pt", n.replace("/", "_"), data)
        try:
            z = zipfile.ZipFile(out(n))
            for m in z.namelist():
                if m.endswith("data.pkl"):
                    put("pickle", n.replace("/", "_") + ".pkl", z.read(m))
        except zipfile.BadZipFile:
            pass
    # Pickles exercising opcodes torch does not emit but the VM accepts or refuses.
    put("pickle", "proto4_frames.pkl", pickle.dumps({"a": [1, 2.5, "x", None, True, b"raw", (1, 2)],
                                                    "b": {3: -70000, 4: 2 ** 70}}, protocol=4))
    put("pickle", "proto0.pkl", pickle.dumps({"a": [1, 2]}, protocol=0))
    put("pickle", "ordered_dict_newobj.pkl", P().glob("collections", "OrderedDict").op(b")\x81").bytes())
    put("pickle", "torch_size.pkl", P().glob("torch", "Size").op(b"(K\x02K\x03t\x85R").bytes())
    put("pickle", "codecs.pkl", P().glob("_codecs", "encode").s("abc").s("latin1").op(b"\x86R").bytes())
    for n in sorted(os.listdir(HERE)):
        if n.endswith(".safetensors"):
            put("safetensors", n, open(out(n), "rb").read())
    for n in sorted(os.listdir(out("bad"))):
        if n.endswith(".safetensors"):
            put("safetensors", n, open(out("bad", n), "rb").read())
    write_safetensors(os.path.join(dirs["safetensors"], "empty_header.safetensors"), {})
    # .npy: every dtype and order npy.cc meets, and damaged headers.
    rng = np.random.default_rng(4)
    samples = {"f32_2d": rng.standard_normal((5, 3)).astype(np.float32),
               "f64_fortran": np.asfortranarray(rng.standard_normal((4, 3))),
               "f16_1d": rng.standard_normal(6).astype(np.float16),
               "i64": np.arange(4), "scalar": np.float32(3.0), "cube": np.zeros((2, 2, 2), np.float32),
               "bool": np.array([True, False]), "empty": np.zeros((0, 3), np.float32)}
    for name, a in samples.items():
        buf = io.BytesIO()
        np.save(buf, a)
        put("npy", name + ".npy", buf.getvalue())
        if name == "f32_2d":
            put("npy", "truncated.npy", buf.getvalue()[:-7])
            put("npy", "header_only.npy", buf.getvalue()[:40])
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ones((2, 2), np.float32), version=(2, 0))
    put("npy", "v2.npy", buf.getvalue())
    put("npy", "big_endian.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", 54) +
        b"{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }".ljust(54) + b"\0\0\0\x01")
    total = sum(os.path.getsize(os.path.join(d, n)) for d in dirs.values() for n in os.listdir(d))
    print(f"fuzz seeds total {total} bytes")


def main():
    for name in os.listdir(HERE):
        p = out(name)
        if name in ("expected", "bad"):
            shutil.rmtree(p)
        elif name.endswith((".pt", ".npz", ".safetensors")) or name == "manifest.json":
            os.remove(p)
    torch_files()
    members = torch2_file()
    safetensors_file()
    npz_files()
    bad_files(members)
    fuzz_corpus()
    with open(out("manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(HERE) for n in ns)
    print(f"wrote {len(MANIFEST)} checkpoints; fixtures total {total} bytes")


if __name__ == "__main__":
    main()
