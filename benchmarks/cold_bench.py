#!/usr/bin/python3
"""Tables larger than memory: embstore's page prefetcher against the device and torch.

Run with Debian's interpreter (numpy and torch come from python3-numpy and
python3-torch), as root (it drops the page cache and makes a cgroup-v1 memory
cgroup), with fio installed, after a Release build:

    cmake --build build/release -j2 --target embstore_cli side_by_side_bench
    sudo /usr/bin/python3 benchmarks/cold_bench.py

All in one run, on one table file (8M x 128 f32 = 3.8 GiB, generated at run
time under --data, never in git):
  device   fio random 4 KiB reads (io_uring, O_DIRECT) at queue depth 64 and 2
  cold     `embstore query` (the whole process) over 200k uniform ids in bags of
           20, sum, under a 1 GiB memory cgroup after drop_caches, with
           --prefetch off / auto / on; and torch's F.embedding_bag on an
           np.memmap of the same file under the same limit (the call alone)
  zipf     Zipf(1.05) rounds of 200k fresh ids in one process from cold under
           the limit: lookups/s and the prefetcher's hit rate per round
  latency  64 bags x 20 ids from 2 client threads (max_threads 1): cold (every
           request fresh, under the limit) and warm (table resident)
  warm     the headline warm workload (1M x 128 f32 in memory, 2M lookups in
           bags of 40, sum) with the prefetcher auto vs off, alternated
Prints one line per measurement and writes everything to --out (JSON).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from side_by_side import zipf_ids  # the same Zipf(1.05) ids as the in-memory benchmarks

ROWS, DIM = 8_000_000, 128
CGROUP = "/sys/fs/cgroup/memory/embstore_cold_bench"


def log(msg):
    print(msg, flush=True)


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def run_limited(cmd, limit_bytes, timeout=600):
    """Runs cmd (after drop_caches) in a fresh memory cgroup of limit_bytes,
    page cache included; returns (stdout, wall seconds, peak bytes)."""
    if os.path.isdir(CGROUP):
        os.rmdir(CGROUP)
    os.makedirs(CGROUP)
    with open(os.path.join(CGROUP, "memory.limit_in_bytes"), "w") as f:
        f.write(str(limit_bytes))
    procs = os.path.join(CGROUP, "cgroup.procs")

    def join():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    drop_caches()
    try:
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=join,
                             timeout=timeout)
        wall = time.perf_counter() - t0
        with open(os.path.join(CGROUP, "memory.max_usage_in_bytes")) as f:
            peak = int(f.read())
        return out.stdout + out.stderr, wall, peak
    finally:
        try:
            with open(os.path.join(CGROUP, "memory.force_empty"), "w") as f:
                f.write("0")
        except OSError:
            pass
        os.rmdir(CGROUP)


def setup(args):
    os.makedirs(args.data, exist_ok=True)
    db = os.path.join(args.data, "db")
    info = subprocess.run([args.cli, "info", "--db", db, "--table", "big"], capture_output=True,
                          text=True)
    if info.returncode != 0:
        npy = os.path.join(args.data, "big.npy")
        log(f"setup: writing {ROWS} x {DIM} f32 to {npy} and importing it")
        a = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(ROWS, DIM))
        rng = np.random.default_rng(1)
        for s in range(0, ROWS, 250_000):
            a[s:s + 250_000] = rng.standard_normal((min(250_000, ROWS - s), DIM), dtype=np.float32)
        a.flush()
        del a
        subprocess.run([args.cli, "import", "--db", db, "--table", "big", "--from", npy],
                       check=True)
        os.remove(npy)
    tables = os.path.join(db, "tables")
    files = sorted(f for f in os.listdir(tables) if f.startswith("big."))
    args.table_file = os.path.join(tables, files[-1])
    assert os.path.getsize(args.table_file) == 4096 + ROWS * DIM * 4, args.table_file
    rng = np.random.default_rng(7)
    n = args.lookups
    args.u_ids = os.path.join(args.data, f"u_ids_{n}.npy")
    args.u_off = os.path.join(args.data, f"u_off_{n}.npy")
    np.save(args.u_ids, rng.integers(0, ROWS, n, dtype=np.int64))
    np.save(args.u_off, np.arange(0, n, 20, dtype=np.int64))
    args.z_ids = os.path.join(args.data, f"z_ids_{n}x{args.zipf_rounds}.npy")
    args.z_off = os.path.join(args.data, f"z_off_{n}x{args.zipf_rounds}.npy")
    if not os.path.exists(args.z_ids):
        np.save(args.z_ids, zipf_ids(np.random.default_rng(11), n * args.zipf_rounds, ROWS))
    np.save(args.z_off, np.arange(0, n * args.zipf_rounds, 20, dtype=np.int64))
    # The warm headline table (1M x 128 f32, resident) and its 2M ids.
    warm = subprocess.run([args.cli, "info", "--db", db, "--table", "warm"], capture_output=True)
    if warm.returncode != 0:
        npy = os.path.join(args.data, "warm.npy")
        np.save(npy, np.random.default_rng(2).uniform(-1, 1, (1_000_000, DIM)).astype(np.float32))
        subprocess.run([args.cli, "import", "--db", db, "--table", "warm", "--from", npy],
                       check=True)
        os.remove(npy)
    args.w_ids = os.path.join(args.data, "w_ids.npy")
    args.w_off = os.path.join(args.data, "w_off.npy")
    np.save(args.w_ids, np.random.default_rng(40).integers(0, 1_000_000, 2_000_000, dtype=np.int64))
    np.save(args.w_off, np.arange(0, 2_000_000, 40, dtype=np.int64))
    args.db = db


def fio(args, qd, seconds):
    drop_caches()
    out = subprocess.run(
        ["fio", "--name=randread", f"--filename={args.table_file}", "--readonly",
         "--rw=randread", "--bs=4k", "--ioengine=io_uring", "--direct=1", f"--iodepth={qd}",
         f"--runtime={seconds}", "--time_based", "--output-format=json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)["jobs"][0]["read"]["iops"]


def cli_cold(args, prefetch):
    out_npy = "/dev/shm/embstore_cold_out.npy"
    cmd = [args.cli, "query", "--db", args.db, "--table", "big", "--indices", "@" + args.u_ids,
           "--offsets", "@" + args.u_off, "--mode", "sum", "--prefetch", prefetch, "--stats",
           "--out", out_npy]
    text, wall, peak = run_limited(cmd, args.limit_mb << 20)
    with open(out_npy, "rb") as f:
        digest = hash(f.read())
    os.remove(out_npy)
    # The process's start-up, cold as well: the same query of one id.
    one = [args.cli, "query", "--db", args.db, "--table", "big", "--indices", "5", "--offsets", "0",
           "--mode", "sum", "--prefetch", prefetch, "--out", out_npy]
    _, startup, _ = run_limited(one, args.limit_mb << 20)
    os.remove(out_npy)
    return dict(prefetch=prefetch, wall_s=wall, lookups_per_s=args.lookups / wall, peak_bytes=peak,
                startup_s=startup, net_lookups_per_s=args.lookups / (wall - startup),
                stats=text.strip(), digest=digest)


TORCH_CHILD = r"""
import json, mmap, sys, time
import numpy as np, torch
path, ids, off = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))
table = np.memmap(path, dtype=np.float32, mode="r", offset=4096, shape=(%d, %d))
if sys.argv[5] == "random":  # what a user who knows mmaps adds: no readahead per fault
    table._mmap.madvise(mmap.MADV_RANDOM)
w = torch.from_numpy(table)  # no copy: torch reads the mapping
i = torch.from_numpy(np.load(ids)); o = torch.from_numpy(np.load(off))
t0 = time.perf_counter()
r = torch.nn.functional.embedding_bag(i, w, o, mode="sum")
t = time.perf_counter() - t0
print(json.dumps(dict(call_s=t, checksum=float(r[:, 0].sum()))))
""" % (ROWS, DIM)


def torch_cold(args, advice, lookups, timeout):
    """torch on an np.memmap of the table file under the limit. advice
    "normal": np.memmap as it comes (the kernel reads ahead around every
    fault); "random": MADV_RANDOM on the mapping first."""
    ids, off = args.u_ids, args.u_off
    if lookups != args.lookups:
        ids = os.path.join(args.data, f"u_ids_{lookups}.npy")
        off = os.path.join(args.data, f"u_off_{lookups}.npy")
        np.save(ids, np.load(args.u_ids)[:lookups])
        np.save(off, np.arange(0, lookups, 20, dtype=np.int64))
    cmd = [sys.executable, "-W", "ignore", "-c", TORCH_CHILD, args.table_file, ids, off,
           str(os.cpu_count()), advice]
    try:
        text, wall, peak = run_limited(cmd, args.limit_mb << 20, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(advice=advice, lookups=lookups, timed_out_s=timeout)
    r = json.loads(text.strip().splitlines()[-1])
    return dict(advice=advice, lookups=lookups, call_s=r["call_s"],
                lookups_per_s=lookups / r["call_s"], peak_bytes=peak, process_wall_s=wall)


def zipf(args, prefetch):
    cmd = [args.driver, "pool", "--db", args.db, "--table", "big", "--ids", args.z_ids,
           "--offsets", args.z_off, "--mode", "sum", "--reps", str(args.zipf_rounds),
           "--warmup", "0", "--split", str(args.zipf_rounds), "--prefetch", prefetch,
           "--prefetch-depth", "64"]
    text, wall, peak = run_limited(cmd, args.limit_mb << 20, timeout=900)
    r = json.loads(text.strip().splitlines()[0])
    return dict(prefetch=prefetch, round_s=r["times_s"], hit_rates=r["rep_hit_rates"],
                round_lookups_per_s=[n / t for n, t in zip(r["rep_lookups"], r["times_s"])],
                peak_bytes=peak)


def latency(args, cold, prefetch):
    n = args.latency_requests if cold else 3000
    cmd = [args.driver, "latency", "--db", args.db, "--table", "big", "--clients", "2",
           "--threads", "1", "--requests", str(n), "--distinct", str(n if cold else 64),
           "--prefetch", prefetch]
    if cold:
        text, _, peak = run_limited(cmd, args.limit_mb << 20)
    else:
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        peak = None
    r = json.loads(text)["runs"][0]
    r.update(cold=cold, prefetch=prefetch, peak_bytes=peak)
    return r


def warm_headline(args, prefetch):
    cmd = [args.driver, "pool", "--db", args.db, "--table", "warm", "--ids", args.w_ids,
           "--offsets", args.w_off, "--mode", "sum", "--reps", "5", "--warmup", "1",
           "--prefetch", prefetch]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--data", default="/work/bench_data/cold")
    ap.add_argument("--out", default="benchmarks/results_cold.json")
    ap.add_argument("--limit-mb", type=int, default=1024)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--zipf-rounds", type=int, default=6)
    ap.add_argument("--latency-requests", type=int, default=150)
    ap.add_argument("--fio-seconds", type=int, default=10)
    ap.add_argument("--sections", default="device,cold,zipf,latency,warm")
    args = ap.parse_args()
    args.cli = os.path.join(args.build, "tools", "embstore")
    args.driver = os.path.join(args.build, "benchmarks", "side_by_side_bench")
    sections = args.sections.split(",")
    setup(args)
    import torch  # the baseline's version, for the record
    res = dict(command=" ".join(sys.argv), started=time.strftime("%Y-%m-%d %H:%M:%S"),
               loadavg_start=os.getloadavg(), torch=torch.__version__, rows=ROWS, dim=DIM,
               table_bytes=ROWS * DIM * 4, limit_mb=args.limit_mb, lookups=args.lookups,
               cpus=os.cpu_count())
    if "device" in sections:
        res["fio_qd64_iops"] = [fio(args, 64, args.fio_seconds)]
        res["fio_qd2_iops"] = [fio(args, 2, args.fio_seconds)]
        log(f"fio QD64 {res['fio_qd64_iops'][0]:.0f} reads/s, QD2 {res['fio_qd2_iops'][0]:.0f}")
    if "cold" in sections:
        res["cold"] = []
        for r in range(args.rounds):
            for prefetch in ("off", "auto", "on"):
                c = cli_cold(args, prefetch)
                c["round"] = r
                res["cold"].append(c)
                log(f"cold cli prefetch={prefetch:4s} {c['lookups_per_s']:8.0f} lookups/s "
                    f"({c['net_lookups_per_s']:.0f} start-up of {c['startup_s'] * 1e3:.0f} ms "
                    f"subtracted) wall {c['wall_s']:.2f}s peak {c['peak_bytes'] >> 20} MiB  "
                    f"{c['stats']}")
            for advice, n in (("random", args.lookups), ("normal", args.lookups // 100)):
                if advice == "normal" and r > 0:
                    continue  # once: it thrashes
                t = torch_cold(args, advice, n, timeout=240)
                t["round"] = r
                res.setdefault("torch_cold", []).append(t)
                if "timed_out_s" in t:
                    log(f"cold torch memmap ({advice}) {n} lookups: over {t['timed_out_s']} s")
                else:
                    log(f"cold torch memmap ({advice}) {t['lookups_per_s']:8.0f} lookups/s "
                        f"call {t['call_s']:.2f}s peak {t['peak_bytes'] >> 20} MiB")
        if "device" in sections:  # the device again, after: its rate drifts
            res["fio_qd64_iops"].append(fio(args, 64, args.fio_seconds))
            log(f"fio QD64 {res['fio_qd64_iops'][-1]:.0f} reads/s (after)")
        digests = {c["digest"] for c in res["cold"]}
        res["cold_results_identical"] = len(digests) == 1
        log(f"cold: the {len(res['cold'])} outputs are {'identical' if len(digests) == 1 else 'DIFFERENT'}")
    if "zipf" in sections:
        res["zipf"] = [zipf(args, p) for p in ("auto", "off")]
        for z in res["zipf"]:
            log(f"zipf prefetch={z['prefetch']:4s} lookups/s per round " +
                " ".join(f"{x:.0f}" for x in z["round_lookups_per_s"]) + "  hit rate " +
                " ".join(f"{h:.3f}" for h in z["hit_rates"]) + f"  peak {z['peak_bytes'] >> 20} MiB")
    if "latency" in sections:
        res["latency"] = [latency(args, True, "auto"), latency(args, True, "off")]
        subprocess.run(["cat", args.table_file], stdout=subprocess.DEVNULL, check=True)  # resident
        res["latency"] += [latency(args, False, "auto"), latency(args, False, "off")]
        for l in res["latency"]:
            log(f"latency {'cold' if l['cold'] else 'warm'} prefetch={l['prefetch']:4s} "
                f"p50 {l['p50_us']:.0f}us p99 {l['p99_us']:.0f}us "
                f"{l['lookups_per_s']:.0f} lookups/s")
    if "warm" in sections:
        res["warm"] = []
        for r in range(args.rounds + 2):
            for prefetch in (("off", "auto") if r % 2 == 0 else ("auto", "off")):
                w = warm_headline(args, prefetch)
                res["warm"].append(dict(prefetch=prefetch, median_s=w["median_s"],
                                        times_s=w["times_s"]))
        med = {p: statistics.median(w["median_s"] for w in res["warm"] if w["prefetch"] == p)
               for p in ("off", "auto")}
        res["warm_ratio_auto_over_off"] = med["auto"] / med["off"]
        log(f"warm headline: off {med['off'] * 1e3:.2f} ms, auto {med['auto'] * 1e3:.2f} ms, "
            f"auto/off {med['auto'] / med['off']:.4f}")
    res["loadavg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
