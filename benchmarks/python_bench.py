"""The Python package's benchmarks (not tests; figures go to benchmarks/RESULTS.md).

    build/venv/bin/python benchmarks/python_bench.py --build build/release [--data DIR]

Run it with the venv tools/run_python_tests.sh makes (Debian's /usr/bin/python3 with the
package installed, and Debian's numpy and torch). Two parts, each against its baseline in
the same run:

  overhead  Python call overhead for small requests, 64 bags x 20 uniform ids (sum) on a
            warm 100k x DIM f32 table: the time per call of Table.embedding_bag (with out=,
            and allocating its result) against the C++ API on the same table and request
            shape (`side_by_side_bench latency --clients 1`, same QueryOptions::max_threads:
            the library's default), in alternating rounds (medians over rounds), for DIM 16
            (the engine's serial path) and 128 (its parallel path); and a 1 x 1 request at
            DIM 16, the fixed cost of a call.
  headline  1M x 128 f32, 40 uniform ids per bag, 50k bags (2M lookups), 2 threads:
            Table.embedding_bag against torch.nn.functional.embedding_bag in this process,
            both reading the same mmapped rows (torch gets Table.numpy(), the zero-copy view);
            modes sum, mean, max and weighted sum. Medians of 5 timed calls after a warm-up,
            over alternating rounds.
Prints one JSON object; --out writes it too.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

import embstore


def median_call(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_table(store, tmp, name, rows, dim, seed):
    rng = np.random.default_rng(seed)
    path = os.path.join(tmp, name + ".npy")
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, 1 << 16):
        stop = min(rows, start + (1 << 16))
        arr[start:stop] = rng.uniform(-1, 1, (stop - start, dim)).astype(np.float32)
    arr.flush()
    del arr
    store.import_file(name, path, replace=name in store.tables())
    os.remove(path)
    return store.table(name)


def overhead(store, tmp, bench, db, dim, bags, per_bag, requests, rounds):
    """Per-call time of one bags x per_bag request, Python against C++, in alternating rounds."""
    name = f"small{dim}"
    table = store.table(name) if name in store.tables() else make_table(store, tmp, name, 100_000,
                                                                         dim, dim)
    rng = np.random.default_rng(1)
    reqs = [rng.integers(0, 100_000, bags * per_bag) for _ in range(64)]
    offs = np.arange(0, bags * per_bag, per_bag)
    out = np.empty((bags, dim), np.float32)
    f = table.embedding_bag

    def python_round(with_out):
        # Blocks of 64 calls (one per prepared request), timed as a block: the median
        # block's time per call. The loop adds a few tens of ns per call.
        per_call = []
        for _ in range(max(1, requests // 64)):
            t0 = time.perf_counter()
            if with_out:
                for r in reqs:
                    f(r, offs, mode="sum", out=out)
            else:
                for r in reqs:
                    f(r, offs, mode="sum")
            per_call.append((time.perf_counter() - t0) / 64)
        return statistics.median(per_call) * 1e6

    def cpp_round():
        run = subprocess.run(
            [bench, "latency", "--db", db, "--table", name, "--clients", "1", "--requests",
             str(requests), "--bags", str(bags), "--ids-per-bag", str(per_bag), "--threads", "0"],
            check=True, capture_output=True, text=True)
        return json.loads(run.stdout)["runs"][0]["p50_us"]

    python_round(True)  # warm-up
    py_out, py_alloc, cpp = [], [], []
    for _ in range(rounds):
        py_out.append(python_round(True))
        cpp.append(cpp_round())
        py_alloc.append(python_round(False))
    med = statistics.median
    return {"dim": dim, "bags": bags, "ids_per_bag": per_bag, "python_out_us": med(py_out), "python_alloc_us": med(py_alloc),
            "cpp_us": med(cpp), "overhead_out_us": med(py_out) - med(cpp),
            "overhead_alloc_us": med(py_alloc) - med(cpp),
            "rounds": {"python_out_us": py_out, "python_alloc_us": py_alloc, "cpp_us": cpp}}


def headline(store, tmp, rounds):
    rows, dim, per_bag, bags = 1_000_000, 128, 40, 50_000
    table = make_table(store, tmp, "headline", rows, dim, 7)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, rows, bags * per_bag)
    offs = np.arange(0, bags * per_bag, per_bag)
    w = rng.uniform(0.5, 1.5, ids.size).astype(np.float32)
    with warnings.catch_warnings():  # "not writable": torch only reads it here
        warnings.simplefilter("ignore")
        weight = torch.from_numpy(table.numpy())  # the same mapped rows, no copy
    tid, toffs, tw = torch.from_numpy(ids), torch.from_numpy(offs), torch.from_numpy(w)
    torch.set_num_threads(2)
    # Touch every row once on both paths so neither pays the page faults.
    table.embedding_bag(np.arange(rows), np.array([0]), mode="sum")
    results = {}
    for name, mode, weighted in (("sum", "sum", False), ("mean", "mean", False),
                                 ("max", "max", False), ("weighted sum", "sum", True)):
        ours_r, torch_r = [], []
        for _ in range(rounds):
            ours_r.append(median_call(lambda: table.embedding_bag(
                ids, offs, mode=mode, per_sample_weights=w if weighted else None), 5, 1))
            torch_r.append(median_call(lambda: torch.nn.functional.embedding_bag(
                tid, weight, toffs, mode=mode, per_sample_weights=tw if weighted else None),
                5 if mode != "max" else 3, 1))
        ours, theirs = statistics.median(ours_r), statistics.median(torch_r)
        results[name] = {"ours_ms": ours * 1e3, "torch_ms": theirs * 1e3,
                         "ratio": theirs / ours, "ours_rounds_ms": [x * 1e3 for x in ours_r],
                         "torch_rounds_ms": [x * 1e3 for x in torch_r]}
    # The two agree (the check that both did the same work).
    a = table.embedding_bag(ids[:4000], offs[:100], mode="sum")
    b = torch.nn.functional.embedding_bag(tid[:4000], weight, toffs[:100], mode="sum").numpy()
    assert np.allclose(a, b, atol=1e-4)
    return results


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default="build/release")
    p.add_argument("--data", default=None, help="where the store goes (default: a temp dir)")
    p.add_argument("--requests", type=int, default=4096, help="calls per overhead round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="overhead,headline")
    p.add_argument("--out")
    a = p.parse_args()
    bench = os.path.join(a.build, "benchmarks", "side_by_side_bench")
    tmp = a.data or tempfile.mkdtemp(prefix="embstore-pybench-")
    db = os.path.join(tmp, "db")
    store = embstore.Store(db)
    res = {"embstore": embstore.__version__, "torch": torch.__version__,
           "python": sys.version.split()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "loadavg_start": os.getloadavg()[0]}
    parts = a.parts.split(",")
    if "overhead" in parts:
        res["overhead"] = [overhead(store, tmp, bench, db, d, b, n, a.requests, max(a.rounds, 5))
                           for d, b, n in ((16, 1, 1), (16, 64, 20), (128, 64, 20))]
    if "headline" in parts:
        res["headline"] = headline(store, tmp, a.rounds)
    res["loadavg_end"] = os.getloadavg()[0]
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
