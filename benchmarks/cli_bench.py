#!/usr/bin/python3
"""The CLI around the engine: `embstore query` as a whole process against torch's call.

Run with Debian's interpreter (python3-numpy, python3-torch) after a Release build and
cold_bench.py's set-up (it uses the `warm` table, 1M x 128 f32, in --data):

    /usr/bin/python3 benchmarks/cli_bench.py [--cli LABEL=PATH ...]

For sum and weighted sum over 5,242,880 uniform ids (131,072 bags of 40), output to a
.npy in /dev/shm, per round and binary: the whole process (wall), its start-up (the same
command with one id), and torch's F.embedding_bag in-process on the same rows in memory
(the call alone); also the library's call alone (side_by_side_bench pool). Binaries
alternate within a round. Each full run passes --stats and records the CLI's own time per
phase (inputs, open, validate, copy, pool, write, commit). And the bytes it must move, timed
here in-process each round: reading the inputs from the page cache (a copy of the ids,
offsets and weights) and writing the [B, dim] f32 result as a .npy to the same directory
(a temporary file renamed over the previous output, as the CLI does). Prints medians and
ratios, and the CLI's cost net of start-up against library + bytes moved; writes --out.
"""
import argparse
import re
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

BAGS, POOL = 131_072, 40


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/bench_data/cold")
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--cli", action="append", default=[],
                    help="LABEL=PATH of an embstore binary (repeatable; default: --build's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results_cli.json")
    args = ap.parse_args()
    clis = dict(c.split("=", 1) for c in args.cli) or {
        "this": os.path.join(args.build, "tools", "embstore")}
    driver = os.path.join(args.build, "benchmarks", "side_by_side_bench")
    db = os.path.join(args.data, "db")
    tables = os.path.join(db, "tables")
    table_file = os.path.join(tables, sorted(f for f in os.listdir(tables) if f.startswith("warm."))[-1])
    n = BAGS * POOL
    rng = np.random.default_rng(3)
    ids = os.path.join(args.data, "c_ids.npy")
    off = os.path.join(args.data, "c_off.npy")
    wts = os.path.join(args.data, "c_w.npy")
    np.save(ids, rng.integers(0, 1_000_000, n, dtype=np.int64))
    np.save(off, np.arange(0, n, POOL, dtype=np.int64))
    np.save(wts, rng.random(n, dtype=np.float32))
    out = "/dev/shm/embstore_cli_bench.npy"
    torch.set_num_threads(os.cpu_count())
    weight = torch.from_numpy(np.array(np.memmap(table_file, dtype=np.float32, mode="r",
                                                 offset=4096, shape=(1_000_000, 128))))
    t_ids, t_off, t_w = (torch.from_numpy(np.load(f)) for f in (ids, off, wts))

    def run(cli, weighted, one=False, phases=None):
        cmd = [cli, "query", "--db", db, "--table", "warm", "--mode", "sum", "--out", out]
        cmd += ["--indices", "5", "--offsets", "0"] if one else ["--indices", "@" + ids,
                                                                  "--offsets", "@" + off]
        if weighted and not one:
            cmd += ["--weights", "@" + wts]
        if phases is not None:
            cmd.append("--stats")
        t0 = time.perf_counter()
        p = subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        wall = time.perf_counter() - t0
        if phases is not None:
            line = next(l for l in p.stderr.splitlines() if l.startswith("time:"))
            for name, ms in re.findall(r"(\w+)=([0-9.]+)ms", line):
                phases.setdefault(name, []).append(float(ms) / 1e3)
        return wall

    result = np.zeros((BAGS, 128), dtype=np.float32)
    floor_out = "/dev/shm/embstore_cli_bench_floor.npy"

    def bytes_moved(weighted):
        """Reading the inputs from the page cache and writing the result file."""
        t0 = time.perf_counter()
        for f in (ids, off) + ((wts,) if weighted else ()):
            np.array(np.load(f, mmap_mode="r"))
        t1 = time.perf_counter()
        tmp = floor_out + ".tmp"
        np.save(tmp, result)
        os.replace(tmp + ".npy", floor_out)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    def torch_call(weighted):
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            torch.nn.functional.embedding_bag(t_ids, weight, t_off, mode="sum",
                                              per_sample_weights=t_w if weighted else None)
            best.append(time.perf_counter() - t0)
        return statistics.median(best)

    def library(weighted):
        cmd = [driver, "pool", "--db", db, "--table", "warm", "--ids", ids, "--offsets", off,
               "--mode", "sum", "--reps", "5", "--warmup", "1"]
        if weighted:
            cmd += ["--weights", wts]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        return r["median_s"]

    res = dict(command=" ".join(sys.argv), torch=torch.__version__, lookups=n, bags=BAGS,
               clis=clis, loadavg_start=os.getloadavg(), cases=[])
    for weighted in (False, True):
        rec = {label: dict(full=[], startup=[], phases={}) for label in clis}
        rec["torch"], rec["library"], rec["read_inputs"], rec["write_output"] = [], [], [], []
        bytes_moved(weighted)  # the floor file exists, as the CLI's output does
        for label, cli in clis.items():
            run(cli, weighted)  # warm the page cache and the binary
        for r in range(args.rounds):
            order = list(clis.items()) if r % 2 == 0 else list(reversed(clis.items()))
            for label, cli in order:
                rec[label]["startup"].append(run(cli, weighted, one=True))
                rec[label]["full"].append(run(cli, weighted, phases=rec[label]["phases"]))
            rec["torch"].append(torch_call(weighted))
            rec["library"].append(library(weighted))
            r_in, w_out = bytes_moved(weighted)
            rec["read_inputs"].append(r_in)
            rec["write_output"].append(w_out)
        t = statistics.median(rec["torch"])
        lib = statistics.median(rec["library"])
        moved = statistics.median(rec["read_inputs"]) + statistics.median(rec["write_output"])
        line = (f"{'weighted sum' if weighted else 'sum':12s} torch {t * 1e3:.1f} ms, library "
                f"{lib * 1e3:.1f} ms, bytes moved {moved * 1e3:.1f} ms (read inputs "
                f"{statistics.median(rec['read_inputs']) * 1e3:.1f}, write output "
                f"{statistics.median(rec['write_output']) * 1e3:.1f})")
        for label in clis:
            f = statistics.median(rec[label]["full"])
            s = statistics.median(rec[label]["startup"])
            ph = {k: statistics.median(v) for k, v in rec[label]["phases"].items()}
            rec[label].update(full_s=f, startup_s=s, net_s=f - s, ratio_vs_torch=t / (f - s),
                              phase_medians_s=ph,
                              net_over_library_plus_moved=(f - s) / (lib + moved))
            line += (f"\n  {label}: full {f * 1e3:.1f} ms, start-up {s * 1e3:.1f}, net "
                     f"{(f - s) * 1e3:.1f} = {t / (f - s):.2f}x torch, "
                     f"{(f - s) / (lib + moved):.2f}x (library + bytes moved); phases: " +
                     ", ".join(f"{k} {v * 1e3:.1f}" for k, v in ph.items()))
        print(line, flush=True)
        res["cases"].append(dict(weighted=weighted, **rec))
    os.remove(out)
    os.remove(floor_out)
    res["loadavg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
