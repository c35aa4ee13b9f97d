#!/usr/bin/env python3
"""embstore's GPU engine vs torch's CUDA embedding_bag, side by side, same data.

Run on a machine with a GPU (see docs/gpu.md), from the repository root:

    python3 benchmarks/gpu_vs_torch.py --bench build/cuda/benchmarks/gpu_bench

It writes a table and batches of ids (benchmarks/gpu_bench.cc --data_dir
format) to --out, times torch.nn.functional.embedding_bag (mode sum) on them,
runs gpu_bench on the very same files, and prints one table:

  (a) resident:      the whole table in GPU memory, uniform ids.
                     embstore: GpuEngine with a cache >= the table.
  (b) zipf_cache10:  ids Zipf(1.05) over randomly permuted rows; embstore's
                     cache holds 10% of the rows (the table is 10x the cache);
                     torch holds the whole table (its all-resident baseline).

Numbers: lookups/s; GB/s = ids x row bytes / s (what a pooling must read);
the fraction of the device's memory bandwidth (a device-to-device copy,
read + write, measured in the same run); embstore's cache hit rate.

Torch is timed two ways: ids already on the GPU ("ids on device"), and ids
copied from pinned host memory each batch ("ids from host"), which is what
embstore's API does (its requests live in host memory).

Targets (DESIGN.md): (a) embstore >= 1x torch; (b) >= 0.5x of embstore's own
all-resident throughput on the same Zipf ids.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def zipf_ids(rng, rows, shape, a=1.05):
    """Ids with P(rank k) ~ k^-a over a random permutation of the rows."""
    ranks = np.arange(1, rows + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -a)
    cdf /= cdf[-1]
    perm = rng.permutation(rows)
    u = rng.random(int(np.prod(shape)))
    return perm[np.searchsorted(cdf, u)].reshape(shape).astype(np.int64)


def write_data(args):
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = (args.batches, args.bags, args.pooling)
    t0 = time.time()
    table = np.empty((args.rows, args.dim), dtype=np.float32)
    chunk = 1 << 20
    for first in range(0, args.rows, chunk):
        n = min(chunk, args.rows - first)
        table[first:first + n] = rng.random((n, args.dim), dtype=np.float32) * 2 - 1
    np.save(os.path.join(args.out, "table.npy"), table)
    ids_uniform = rng.integers(0, args.rows, size=shape, dtype=np.int64)
    np.save(os.path.join(args.out, "ids_uniform.npy"), ids_uniform)
    ids_zipf = zipf_ids(rng, args.rows, shape)
    np.save(os.path.join(args.out, "ids_zipf.npy"), ids_zipf)
    print(f"data: {args.rows} x {args.dim} f32 ({table.nbytes / 1e9:.2f} GB), "
          f"{args.batches} batches of {args.bags} x {args.pooling} ids "
          f"({len(np.unique(ids_zipf[0]))} distinct in a Zipf batch); {time.time() - t0:.1f} s")
    return table, ids_uniform, ids_zipf


def time_cuda(torch, fn, reps):
    """Median milliseconds of fn() over reps, timed with CUDA events."""
    for _ in range(3):
        fn(0)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def torch_numbers(args, table, batches):
    import torch
    import torch.nn.functional as F
    dev = torch.device("cuda")
    # Device bandwidth: a 2 GiB device-to-device copy, read + write.
    x = torch.empty(1 << 29, dtype=torch.float32, device=dev).uniform_()
    y = torch.empty_like(x)
    copy_ms = time_cuda(torch, lambda i: y.copy_(x), 20)
    copy_bw = 2 * x.numel() * 4 / (copy_ms / 1e3)
    del x, y
    weight = torch.from_numpy(table).to(dev)
    offsets = torch.arange(0, args.bags * args.pooling, args.pooling, device=dev)
    out = {}
    for name, ids in batches.items():
        on_dev = [torch.from_numpy(b.reshape(-1)).to(dev) for b in ids]
        pinned = [torch.from_numpy(b.reshape(-1)).pin_memory() for b in ids]
        k = len(on_dev)
        ms_dev = time_cuda(torch, lambda i: F.embedding_bag(on_dev[i % k], weight, offsets,
                                                            mode="sum"), args.reps)
        ms_host = time_cuda(torch, lambda i: F.embedding_bag(
            pinned[i % k].to(dev, non_blocking=True), weight, offsets, mode="sum"), args.reps)
        out[name] = {"ids on device": ms_dev, "ids from host": ms_host}
    name = torch.cuda.get_device_name(0)
    del weight
    torch.cuda.empty_cache()
    return name, copy_bw, out


def run_bench(args):
    result = os.path.join(args.out, "gpu_bench.json")
    cmd = [args.bench, f"--data_dir={args.out}", "--benchmark_format=console",
           f"--benchmark_out={result}", "--benchmark_out_format=json",
           f"--benchmark_min_time={args.min_time}"]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(result) as f:
        return {b["name"]: b for b in json.load(f)["benchmarks"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", default="build/cuda/benchmarks/gpu_bench")
    p.add_argument("--out", default="/tmp/embstore_gpu_vs_torch")
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--bags", type=int, default=16384)
    p.add_argument("--pooling", type=int, default=32)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--min_time", type=float, default=2.0)
    p.add_argument("--skip_embstore", action="store_true", help="torch only")
    args = p.parse_args()

    table, ids_uniform, ids_zipf = write_data(args)
    device, copy_bw, torch_ms = torch_numbers(
        args, table, {"uniform": ids_uniform, "zipf": ids_zipf})
    del table
    lookups = args.bags * args.pooling
    row_bytes = args.dim * 4

    def line(label, ms=None, lookups_per_s=None, hit=None, ref=None):
        lps = lookups_per_s if lookups_per_s is not None else lookups / (ms / 1e3)
        gbs = lps * row_bytes / 1e9
        ratio = f"{lps / ref:6.2f}x" if ref else "      "
        hit_s = f"{hit:8.3f}" if hit is not None else "       -"
        print(f"{label:44s} {lps / 1e9:8.3f} {gbs:9.1f} {gbs * 1e9 / copy_bw:8.2f} {hit_s} {ratio}")
        return lps

    bench = {} if args.skip_embstore else run_bench(args)
    print()
    print(f"device: {device}; device-to-device copy {copy_bw / 1e9:.0f} GB/s (read + write)")
    print(f"batch: {args.bags} bags x {args.pooling} ids, dim {args.dim} f32, "
          f"table {args.rows} rows; mode sum")
    print(f"{'':44s} {'Glookup/s':>8s} {'GB/s':>9s} {'HBM frac':>8s} {'hit rate':>8s} {'ratio':>7s}")
    t_uni = line("(a) torch, ids on device", torch_ms["uniform"]["ids on device"])
    t_uni_h = line("(a) torch, ids from host", torch_ms["uniform"]["ids from host"])
    t_zipf = line("(b) torch (table resident), Zipf ids", torch_ms["zipf"]["ids on device"])
    if bench:
        def lps(name):
            b = bench.get(name)
            return (b or {}).get("lookups_per_s"), (b or {}).get("hit_rate")
        v, h = lps("gpu/resident")
        if v:
            line("(a) embstore resident  vs torch ids on dev", None, v, h, t_uni)
            line("(a) embstore resident  vs torch ids from host", None, v, h, t_uni_h)
        res_zipf, h = lps("gpu/resident_zipf")
        if res_zipf:
            line("    embstore resident, Zipf ids vs torch", None, res_zipf, h, t_zipf)
        for name in ("gpu/zipf_cache10/lru", "gpu/zipf_cache10/lru/prefetch",
                     "gpu/zipf_cache10/lfu", "gpu/zipf_cache10/lfu/prefetch"):
            v, h = lps(name)
            if v:
                line(f"(b) {name[4:]} vs embstore resident", None, v, h, res_zipf)
        v, _ = lps("cpu/resident")
        if v:
            line("    embstore CPU engine (same batches) vs torch", None, v, None, t_uni)
    print("\ntargets: (a) >= 1x torch; (b) >= 0.5x embstore's all-resident throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())
