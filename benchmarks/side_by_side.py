#!/usr/bin/python3
"""embstore vs torch.nn.functional.embedding_bag, side by side, on the CPU.

Run with Debian's interpreter (it has torch 1.13 and numpy):

    /usr/bin/python3 benchmarks/side_by_side.py --build build/release \
        --data /work/bench_data/sbs --out benchmarks/results.json

What it does, in one run:
  * generates the tables (rows x dim float32 .npy, uniform in [-1, 1)) and the
    index files (.npy int64 ids + offsets, float32 per-sample weights; ids
    uniform or Zipf(1.05) over rows, hot ranks scattered over the table) under
    --data, outside the repository, once (kept for later runs);
  * imports each table once into a store with `embstore import` (f32, and at
    the headline dim also f16, bf16 and int8 rowwise);
  * measures the machine's memory read bandwidth (side_by_side_bench
    bandwidth, all cores, 1 GiB buffer = 32x the LLC) at the start, middle and
    end of the run;
  * for each workload alternates A (side_by_side_bench pool: our engine over
    the store's mmapped table file, all cores) and B (torch in this process:
    torch.from_numpy(np.load(table.npy, mmap_mode='r')), the same ids and
    offsets, torch.set_num_threads(all cores)), --rounds times, each side
    taking the median of --reps timed calls after one warm-up; the figure is
    the median over rounds, and the ratio torch_time / our_time;
  * the CLI end to end (`embstore query` on 5M ids read from .npy, output to
    a .npy on tmpfs) minus its start-up time (the same command on one id);
  * serving latency (side_by_side_bench latency);
  * prints everything and writes it as JSON (--out) for make_results.py.

torch's max_norm renormalizes the weight in place (and the mmapped .npy is
read-only), so for those runs torch gets a fresh clone of the table before
every call and only the embedding_bag call itself is timed. torch supports
per_sample_weights only with mode='sum': weighted mean/max are ours only.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

ROWS = 1_000_000
HEADLINE_DIM = 128
HEADLINE_POOL = 40
LOOKUPS = 2_000_000  # per call at the headline (50k bags x 40)
CLI_LOOKUPS = 5_000_000  # the CLI target: 5M lookups (125k bags x 40)
SWEEP_LOOKUPS = 1_000_000
BIG_DB = "/work/bench_data/db"  # holds big_f32: 8M x 128 f32 (4.1 GB), imported from big.npy
BIG_TABLE, BIG_ROWS = "big_f32", 8_000_000
CGROUP = "/sys/fs/cgroup/memory/embstore_side_by_side"
MAX_NORM = 4.0  # uniform [-1,1) rows of dim d have L2 norm ~ sqrt(d/3): about half exceed at d=48


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def table_npy(data, dim):
    path = os.path.join(data, f"table_{ROWS}x{dim}.npy")
    if not os.path.exists(path):
        log(f"generating {path}")
        rng = np.random.default_rng(dim)
        arr = np.lib.format.open_memmap(path + ".tmp.npy", mode="w+", dtype=np.float32,
                                        shape=(ROWS, dim))
        step = 1 << 17
        for r in range(0, ROWS, step):
            n = min(step, ROWS - r)
            arr[r:r + n] = rng.random((n, dim), dtype=np.float32) * 2 - 1
        arr.flush()
        del arr
        os.rename(path + ".tmp.npy", path)
    return path


def import_table(args, dim, dtype):
    name = f"t{dim}_{dtype}"
    db = os.path.join(args.data, "db")
    listing = subprocess.run([args.cli, "list", "--db", db], capture_output=True, text=True).stdout \
        if os.path.exists(db) else ""
    if not any(line.split("\t")[0] == name for line in listing.splitlines()):
        log(f"importing {name}")
        subprocess.run([args.cli, "import", "--db", db, "--table", name, "--from",
                        table_npy(args.data, dim), "--dtype", dtype], check=True,
                       stdout=subprocess.DEVNULL)
    return name


def zipf_ids(rng, n, rows, s=1.05):
    # P(rank k) ~ k^-s over k = 1..rows, ranks mapped to rows by a fixed permutation.
    ranks = np.arange(1, rows + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -s)
    cdf /= cdf[-1]
    r = np.searchsorted(cdf, rng.random(n))
    perm = np.random.default_rng(7).permutation(rows)
    return perm[r].astype(np.int64)


def index_files(args, dist, pool, lookups, rows=ROWS, tag=""):
    base = os.path.join(args.data, f"ids_{tag}{dist}_p{pool}_n{lookups}_r{rows}")
    files = {k: f"{base}_{k}.npy" for k in ("ids", "offsets", "weights")}
    if not all(os.path.exists(f) for f in files.values()):
        rng = np.random.default_rng(pool * 1000 + (dist == "zipf"))
        bags = lookups // pool
        n = bags * pool
        ids = rng.integers(0, rows, n, dtype=np.int64) if dist == "uniform" else zipf_ids(rng, n, rows)
        np.save(files["ids"], ids)
        np.save(files["offsets"], np.arange(bags, dtype=np.int64) * pool)
        np.save(files["weights"], rng.random(n, dtype=np.float32))
    return files


def run_ours(args, table, files, mode, weighted, max_norm, reps, extra=()):
    cmd = [args.driver, "pool", "--db", os.path.join(args.data, "db"), "--table", table,
           "--ids", files["ids"], "--offsets", files["offsets"], "--mode", mode,
           "--reps", str(reps), "--warmup", "1"]
    if weighted:
        cmd += ["--weights", files["weights"]]
    if max_norm:
        cmd += ["--max-norm", str(max_norm)]
    cmd += list(extra)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


_weights_cache = {}


def torch_inputs(files):
    if files["ids"] not in _weights_cache:
        _weights_cache.clear()
        _weights_cache[files["ids"]] = (torch.from_numpy(np.load(files["ids"])),
                                        torch.from_numpy(np.load(files["offsets"])),
                                        torch.from_numpy(np.load(files["weights"])))
    return _weights_cache[files["ids"]]


def run_torch(npy, files, mode, weighted, max_norm, reps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "non-writable array": we never write it
        weight = torch.from_numpy(np.load(npy, mmap_mode="r"))
    ids, offsets, psw = torch_inputs(files)
    times = []
    for i in range(reps + 1):
        w = weight.clone() if max_norm else weight
        t0 = time.perf_counter()
        out = F.embedding_bag(ids, w, offsets, mode=mode, max_norm=max_norm,
                              per_sample_weights=psw if weighted else None)
        dt = time.perf_counter() - t0
        if i > 0:  # first call is the warm-up
            times.append(dt)
        del out, w
    return statistics.median(times)


def bandwidth(args):
    out = subprocess.run([args.driver, "bandwidth", "--mb", "1024", "--reps", "7"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["median_gbps"]


def side_by_side(args, results, section, dim, pool, dist, dtype, mode, weighted, max_norm,
                 lookups, rounds, reps):
    table = import_table(args, dim, dtype)
    npy = table_npy(args.data, dim)
    files = index_files(args, dist, pool, lookups)
    ours, theirs = [], []
    torch_ok = not (weighted and mode != "sum")
    for _ in range(rounds):  # A B A B ...
        r = run_ours(args, table, files, mode, weighted, max_norm, reps)
        ours.append(r["median_s"])
        if torch_ok:  # torch's max and max_norm take seconds a call: fewer reps
            slow = mode == "max" or max_norm
            theirs.append(run_torch(npy, files, mode, weighted, max_norm, min(reps, 3) if slow else reps))
    n = r["lookups"]
    o = statistics.median(ours)
    t = statistics.median(theirs) if theirs else None
    rec = dict(section=section, dim=dim, pool=pool, dist=dist, dtype=dtype, mode=mode,
               weighted=weighted, max_norm=max_norm, lookups=n, ours_s=o, torch_s=t,
               ours_rounds=ours, torch_rounds=theirs,
               ours_gbps=n * r["row_bytes"] / o / 1e9,
               torch_gbps=(n * dim * 4 / t / 1e9) if t else None,
               ours_mlookups=n / o / 1e6, torch_mlookups=(n / t / 1e6) if t else None,
               ratio=(t / o) if t else None, row_bytes=r["row_bytes"])
    results["runs"].append(rec)
    log(f"{section:9s} dim={dim:3d} pool={pool:3d} {dist:7s} {dtype:4s} {mode:4s} "
        f"w={int(weighted)} mn={max_norm} ours={o*1e3:8.1f}ms ({rec['ours_gbps']:.2f} GB/s) "
        + (f"torch={t*1e3:8.1f}ms ratio={t/o:6.2f}x" if t else "torch=n/a"))
    return rec


def torch_f32_sum_reference(results):
    """torch's time for the headline f32 sum: the median of every round of it in this run (the
    headline row and the dtypes rows, which time torch f32 next to each of our dtypes)."""
    rounds = [t for r in results["runs"] if r["section"] in ("headline", "dtypes")
              and r["mode"] == "sum" and not r["weighted"] and not r["max_norm"]
              and r["dim"] == HEADLINE_DIM and r["pool"] == HEADLINE_POOL
              and r["dist"] == "uniform" for t in r["torch_rounds"] if t]
    return statistics.median(rounds) if rounds else None


def ceilings(args, results, rounds):
    """The random-row roofline of each row layout at the headline: `side_by_side_bench gather`
    reads the cache lines of every looked-up row (prefetched 16 ids ahead, no arithmetic) over
    the headline's 2M ids. int8 rows are 3 lines (128 codes + scale/bias); "int8, codes only"
    reads 2; "int8, scale/bias apart" reads those 2 plus 8 bytes per row from a separate
    rows x 8 array, what a table format keeping scale/bias out of the row would read.
    vs_torch_sum = torch's f32 sum time (torch_f32_sum_reference) / this time: the most any
    kernel reading those lines could reach."""
    files = index_files(args, "uniform", HEADLINE_POOL, LOOKUPS)
    db = os.path.join(args.data, "db")
    torch_sum = torch_f32_sum_reference(results)
    out = []
    for label, dtype, lines, apart in [("f32", "f32", None, False), ("int8", "int8", None, False),
                                       ("int8, codes only", "int8", 2, False),
                                       ("int8, scale/bias apart", "int8", 2, True)]:
        table = import_table(args, HEADLINE_DIM, dtype)
        times = []
        for _ in range(rounds):
            cmd = [args.driver, "gather", "--db", db, "--table", table, "--ids", files["ids"],
                   "--reps", str(args.reps)]
            if lines:
                cmd += ["--lines", str(lines)]
            if apart:
                cmd += ["--params-apart"]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            times.append(r["median_s"])
        t = statistics.median(times)
        rec = dict(label=label, torch_sum_s=torch_sum, dtype=dtype, lines=r["lines"], params_apart=apart, lookups=r["lookups"], median_s=t,
                   rounds=times, mlookups=r["lookups"] / t / 1e6,
                   line_gbps=r["lookups"] * r["lines"] * 64 / t / 1e9,
                   vs_torch_sum=(torch_sum / t) if torch_sum else None)
        out.append(rec)
        log(f"ceiling {label:16s} lines={r['lines']} {t*1e3:7.1f} ms {rec['mlookups']:.1f} M rows/s"
            + (f" = {rec['vs_torch_sum']:.2f}x torch f32 sum" if torch_sum else ""))
    results["ceilings"] = out


def cli_end_to_end(args, results, rounds):
    dim = HEADLINE_DIM
    table = import_table(args, dim, "f32")
    files = index_files(args, "uniform", HEADLINE_POOL, CLI_LOOKUPS)
    tiny = index_files(args, "uniform", 1, 1, tag="tiny_")
    db = os.path.join(args.data, "db")
    out = "/dev/shm/embstore_sbs_out.npy"

    def cli(f):
        t0 = time.perf_counter()
        subprocess.run([args.cli, "query", "--db", db, "--table", table, "--indices", "@" + f["ids"],
                        "--offsets", "@" + f["offsets"], "--mode", "sum", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0

    full, start, theirs = [], [], []
    cli(files)  # warm
    for _ in range(rounds):
        start.append(cli(tiny))
        full.append(cli(files))
        theirs.append(run_torch(table_npy(args.data, dim), files, "sum", False, None, 3))
    os.unlink(out)
    f, s, t = statistics.median(full), statistics.median(start), statistics.median(theirs)
    rec = dict(full_s=f, startup_s=s, net_s=f - s, torch_s=t, ratio=t / (f - s),
               full_rounds=full, startup_rounds=start, torch_rounds=theirs, lookups=CLI_LOOKUPS)
    results["cli"] = rec
    log(f"cli: full={f*1e3:.1f}ms startup={s*1e3:.1f}ms net={(f-s)*1e3:.1f}ms "
        f"torch={t*1e3:.1f}ms ratio={t/(f-s):.2f}x")


def latency(args, results):
    table = import_table(args, HEADLINE_DIM, "f32")
    out = subprocess.run([args.driver, "latency", "--db", os.path.join(args.data, "db"), "--table",
                          table, "--clients", "1,2,4,8", "--requests", "3000", "--bags", "64",
                          "--ids-per-bag", "20"], check=True, capture_output=True, text=True).stdout
    results["latency"] = json.loads(out)
    for r in results["latency"]["runs"]:
        log(f"latency clients={r['clients']} p50={r['p50_us']:.1f}us p99={r['p99_us']:.1f}us "
            f"{r['requests_per_s']:.0f} req/s")


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def run_limited(cmd, limit_bytes, timeout=None):
    """Runs cmd inside a cgroup-v1 memory cgroup limited to limit_bytes (page
    cache included: a mapped file's pages are charged to the cgroup that faults
    them in), or unlimited when limit_bytes is None."""
    if limit_bytes is None:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    os.makedirs(CGROUP, exist_ok=True)
    with open(os.path.join(CGROUP, "memory.limit_in_bytes"), "w") as f:
        f.write(str(limit_bytes))
    procs = os.path.join(CGROUP, "cgroup.procs")

    def join():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=join,
                              timeout=timeout).stdout
    finally:
        try:
            with open(os.path.join(CGROUP, "memory.force_empty"), "w") as f:
                f.write("0")
            os.rmdir(CGROUP)
        except OSError:
            pass


def big_table(args, results):
    """Table larger than the page cache may keep: 8M x 128 f32 (4.1 GB) with the
    driver confined to a memory cgroup of args.big_limit_mb (page cache
    included). Each limited case starts after drop_caches; rep 1 is cold, and
    every later rep pools the same ids shifted to fresh rows (so none are
    cached by an earlier rep of the same ids; the cache fills towards the
    limit as reps go on)."""
    limit = args.big_limit_mb << 20
    out = []
    n = args.big_lookups
    cases = [  # (label, dist, advise, page_prefetch, limit, lookups)
        ("fits in RAM, warm", "uniform", "random", False, None, n),
        ("limited, MADV_RANDOM (default)", "uniform", "random", False, limit, n),
        ("limited, MADV_RANDOM + page prefetch", "uniform", "random", True, limit, n),
        ("limited, Zipf(1.05), MADV_RANDOM", "zipf", "random", False, limit, n),
        ("limited, Zipf(1.05), MADV_RANDOM + page prefetch", "zipf", "random", True, limit, n),
        # Readahead on random faults reads ~32x the bytes used: 1/10 of the lookups.
        ("limited, no advice (kernel readahead)", "uniform", "normal", False, limit, n // 10),
        ("limited, MADV_WILLNEED whole table", "uniform", "willneed", False, limit, n // 10),
    ]
    for label, dist, advise, pp, lim, lookups in cases:
        files = index_files(args, dist, HEADLINE_POOL, lookups, rows=BIG_ROWS, tag="big_")
        if lim is not None:
            drop_caches()
        cmd = [args.driver, "pool", "--db", BIG_DB, "--table", BIG_TABLE, "--ids", files["ids"],
               "--offsets", files["offsets"], "--mode", "sum", "--reps", str(args.big_reps),
               "--warmup", "1" if lim is None else "0", "--advise", advise]
        if lim is not None:  # fresh pages every rep: steady state is not the first rep's cache
            cmd += ["--shift-per-rep", str(BIG_ROWS // 7 + 12345)]
        if pp:
            cmd += ["--page-prefetch", "--chunk", "256"]
        t0 = time.perf_counter()
        try:
            r = json.loads(run_limited(cmd, lim, args.big_timeout))
        except subprocess.TimeoutExpired:
            log(f"big: {label}: over {args.big_timeout} s, skipped")
            out.append(dict(label=label, timed_out=args.big_timeout))
            continue
        r.update(label=label, dist=dist, limit_mb=(lim >> 20) if lim else None,
                 wall_s=time.perf_counter() - t0)
        r["rep_gbps"] = [r["lookups"] * r["row_bytes"] / t / 1e9 for t in r["times_s"]]
        out.append(r)
        log(f"big: {label:50s} reps " + " ".join(f"{t*1e3:8.1f}ms" for t in r["times_s"])
            + "  GB/s " + " ".join(f"{g:.3f}" for g in r["rep_gbps"]))
    results["big"] = dict(table=BIG_TABLE, rows=BIG_ROWS, dim=128, table_bytes=BIG_ROWS * 512,
                          limit_mb=args.big_limit_mb, lookups=args.big_lookups, runs=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--data", default="/work/bench_data/sbs")
    ap.add_argument("--out", default="benchmarks/results.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sweep-rounds", type=int, default=3)
    ap.add_argument("--sections", default="headline,dtypes,ceilings,dims,pool,zipf,cli,latency,big")
    ap.add_argument("--big-limit-mb", type=int, default=2048)
    ap.add_argument("--big-lookups", type=int, default=100_000)
    ap.add_argument("--big-reps", type=int, default=4)
    ap.add_argument("--big-timeout", type=int, default=90)
    args = ap.parse_args()
    args.cli = os.path.join(args.build, "tools", "embstore")
    args.driver = os.path.join(args.build, "benchmarks", "side_by_side_bench")
    os.makedirs(args.data, exist_ok=True)
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    sections = args.sections.split(",")
    results = dict(threads=threads, torch=torch.__version__, numpy=np.__version__,
                   loadavg_start=os.getloadavg(), started=time.strftime("%Y-%m-%d %H:%M:%S"),
                   command=" ".join(sys.argv), bandwidth_gbps=[], runs=[])
    results["bandwidth_gbps"].append(bandwidth(args))
    log(f"read bandwidth {results['bandwidth_gbps'][-1]:.2f} GB/s, torch {torch.__version__} "
        f"threads={threads} load={os.getloadavg()}")
    R, S = args.rounds, args.sweep_rounds
    H = dict(dim=HEADLINE_DIM, pool=HEADLINE_POOL, dist="uniform", dtype="f32")
    if "headline" in sections:
        for mode, weighted, mn in [("sum", False, None), ("sum", True, None), ("mean", False, None),
                                   ("max", False, None), ("sum", False, MAX_NORM),
                                   ("mean", False, MAX_NORM), ("max", False, MAX_NORM),
                                   ("mean", True, None), ("max", True, None)]:
            side_by_side(args, results, "headline", **H, mode=mode, weighted=weighted, max_norm=mn,
                         lookups=LOOKUPS, rounds=R, reps=args.reps)
    if "dtypes" in sections:
        for dtype in ("int8", "f16", "bf16"):
            side_by_side(args, results, "dtypes", **{**H, "dtype": dtype}, mode="sum",
                         weighted=False, max_norm=None, lookups=LOOKUPS, rounds=R, reps=args.reps)
    if "ceilings" in sections:
        ceilings(args, results, R)
    results["bandwidth_gbps"].append(bandwidth(args))
    if "dims" in sections:
        for dim in (32, 64, 128, 256):
            for mode, weighted, mn in [("sum", False, None), ("sum", True, None),
                                       ("mean", False, None), ("max", False, None),
                                       ("sum", False, MAX_NORM)]:
                side_by_side(args, results, "dims", **{**H, "dim": dim}, mode=mode,
                             weighted=weighted, max_norm=mn, lookups=SWEEP_LOOKUPS, rounds=S, reps=3)
    if "pool" in sections:
        for pool in (1, 10, 40, 100):
            for mode in ("sum", "max"):
                side_by_side(args, results, "pool", **{**H, "pool": pool}, mode=mode, weighted=False,
                             max_norm=None, lookups=SWEEP_LOOKUPS, rounds=S, reps=3)
    if "zipf" in sections:
        for mode, weighted, mn in [("sum", False, None), ("sum", True, None), ("max", False, None),
                                   ("sum", False, MAX_NORM)]:
            side_by_side(args, results, "zipf", **{**H, "dist": "zipf"}, mode=mode, weighted=weighted,
                         max_norm=mn, lookups=LOOKUPS, rounds=S, reps=3)
    if "cli" in sections:
        cli_end_to_end(args, results, R)
    if "latency" in sections:
        latency(args, results)
    results["bandwidth_gbps"].append(bandwidth(args))
    if "big" in sections:  # last: it drops the page cache
        big_table(args, results)
    results["loadavg_end"] = os.getloadavg()
    bw = statistics.median(results["bandwidth_gbps"])
    results["bandwidth_median_gbps"] = bw
    print(f"\nmemory read bandwidth (median of {len(results['bandwidth_gbps'])}): {bw:.2f} GB/s")
    print(f"{'section':9s} {'dim':>4s} {'pool':>4s} {'dist':7s} {'dtype':5s} {'mode':5s} {'w':1s} "
          f"{'max_norm':8s} {'ours ms':>9s} {'torch ms':>9s} {'ratio':>7s} {'ours GB/s':>9s} "
          f"{'torch GB/s':>10s} {'%bw':>5s}")
    for r in results["runs"]:
        t = f"{r['torch_s']*1e3:9.1f}" if r["torch_s"] else f"{'n/a':>9s}"
        ra = f"{r['ratio']:6.2f}x" if r["ratio"] else f"{'n/a':>7s}"
        tg = f"{r['torch_gbps']:10.2f}" if r["torch_gbps"] else f"{'n/a':>10s}"
        print(f"{r['section']:9s} {r['dim']:4d} {r['pool']:4d} {r['dist']:7s} {r['dtype']:5s} "
              f"{r['mode']:5s} {int(r['weighted'])} {str(r['max_norm']):8s} {r['ours_s']*1e3:9.1f} "
              f"{t} {ra} {r['ours_gbps']:9.2f} {tg} {100*r['ours_gbps']/bw:4.0f}%")
    if "cli" in results:
        c = results["cli"]
        print(f"cli: embstore query 5M lookups {c['full_s']*1e3:.1f} ms - start-up "
              f"{c['startup_s']*1e3:.1f} ms = {c['net_s']*1e3:.1f} ms; torch in-process "
              f"{c['torch_s']*1e3:.1f} ms; ratio {c['ratio']:.2f}x")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
