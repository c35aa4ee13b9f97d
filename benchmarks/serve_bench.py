#!/usr/bin/python3
"""`embstore serve` over loopback, open loop at fixed rates, against the library in-process.

Issue [serve], item 7. Run with Debian's Python (/usr/bin/python3, numpy from python3-numpy);
it needs the CLI and benchmarks/serve_bench.cc built, e.g.

    export CCACHE_DIR=/work/.ccache CCACHE_BASEDIR=/work
    cmake -S . -B build/bench-serve -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DEMBSTORE_BUILD_TESTS=OFF -DEMBSTORE_CUDA=OFF -DCMAKE_CXX_COMPILER_LAUNCHER=ccache
    cmake --build build/bench-serve -j1 --target serve_bench embstore_cli
    /usr/bin/python3 benchmarks/serve_bench.py --build build/bench-serve

What it does:
 1. Creates the table at run time (never committed): --rows x --dim f32 uniform in [-1, 1)
    as a .npy, `embstore import`ed into a store under --data (default /work/bench_data/serve;
    reused when already there).
 2. The in-process baseline: `serve_bench inproc` (embstore::EmbeddingBag on a Store snapshot,
    closed loop, --threads threads, pinned to the server's CPUs), the same 256 requests of
    64 bags x 20 uniform ids, sum mode, max_threads 1. Its throughput and per-call p50/p99.
 3. Starts `embstore serve --db ... --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --threads N`
    (under `taskset -c --server-cpus` when given), reads the port from its stdout line
    `embstore serve: listening on 127.0.0.1:PORT`.
 4. `serve_bench open` (under `taskset -c --client-cpus` when given) at rising rates until
    the achieved rate falls under 95 % of the offered one (as scheduled in the window), or
    more than 1 % of the requests fail, or p99 exceeds --p99-limit-us; saturation = the
    highest achieved rate seen.
 5. The same at half the saturation rate (the p99 target), --half-repeats times.
 6. The ideal server (`serve_bench inproc-open`, on the server's CPUs): the library in-process
    under the same open-loop schedule, at half the server's saturation rate and at half the
    in-process throughput: what queueing alone costs when every request takes the library's time.
 7. SIGTERM to the server; writes --out (benchmarks/results_serve.json) and prints a table.

Per rate it also records the server's CPU time (/proc/PID/stat) per request.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TABLE = "emb"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_store(cli, data, rows, dim):
    db = os.path.join(data, f"db_{rows}x{dim}")
    if os.path.isdir(db) and subprocess.run([cli, "info", "--db", db, "--table", TABLE],
                                            capture_output=True).returncode == 0:
        log(f"store {db}: reused")
        return db
    os.makedirs(data, exist_ok=True)
    npy = os.path.join(data, f"table_{rows}x{dim}.npy")
    rng = np.random.default_rng(7)
    log(f"writing {npy} ({rows} x {dim} f32)")
    arr = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(rows, dim))
    step = 1 << 16
    for s in range(0, rows, step):
        e = min(rows, s + step)
        arr[s:e] = rng.uniform(-1, 1, size=(e - s, dim)).astype(np.float32)
    arr.flush()
    del arr
    subprocess.run([cli, "import", "--db", db, "--table", TABLE, "--from", npy], check=True)
    os.remove(npy)
    return db


def taskset(cpus):
    return ["taskset", "-c", cpus] if cpus else []


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick  # utime, stime


def proc_ctxsw(pid):
    """Context switches (voluntary + involuntary) of all the process's threads so far."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for l in f:
                    if "ctxt_switches" in l:
                        n += int(l.split()[1])
        except FileNotFoundError:
            pass
    return n


def proc_threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def start_server(cli, db, threads, cpus, extra):
    cmd = taskset(cpus) + [cli, "serve", "--db", db, "--listen", "127.0.0.1:0",
                           "--metrics", "127.0.0.1:0", "--threads", str(threads)] + extra
    log("$ " + " ".join(cmd))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    port = None
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        m = re.match(r"embstore serve: listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        p.kill()
        raise SystemExit("embstore serve did not print its port: " + p.stderr.read())
    # Keep reading its stdout (the metrics line) so the pipe never fills.
    return p, port, cmd


def stop_server(p):
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    err = p.stderr.read()
    return rc, err


def run_json(cmd):
    log("$ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build/bench-serve"))
    ap.add_argument("--data", default="/work/bench_data/serve")
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="server --threads and baseline threads")
    ap.add_argument("--server-cpus", default="0", help="taskset -c list for the server and the "
                    "baseline ('' = unpinned)")
    ap.add_argument("--client-cpus", default="1", help="taskset -c list for the load generator")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--api", default="poll", help="serve_bench open --api: poll, cq or callback")
    ap.add_argument("--spin-us", type=int, default=5000, help="serve_bench open --spin-us (the "
                    "sender spins this long before each send instead of sleeping to it)")
    ap.add_argument("--append", action="store_true", help="add this run to --out's "
                    "`other_runs` instead of replacing the file")
    ap.add_argument("--arrival", default="poisson")
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--rates", default="500,1000,1500,2000,2500,3000,3500,4000,5000,6000,7000,"
                    "8000,10000,12000,15000,20000,25000,30000")
    ap.add_argument("--p99-limit-us", type=float, default=20000)
    ap.add_argument("--half-repeats", type=int, default=2)
    ap.add_argument("--baseline-threads", default="", help="extra baseline thread counts, e.g. 2")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `embstore serve` arg")
    ap.add_argument("--out", default=os.path.join(HERE, "results_serve.json"))
    ap.add_argument("--label", default="")
    a = ap.parse_args()

    cli = os.path.join(a.build, "tools/embstore")
    bench = os.path.join(a.build, "benchmarks/serve_bench")
    for f in (cli, bench):
        if not os.access(f, os.X_OK):
            raise SystemExit(f"{f} not built (see the docstring)")
    db = make_store(cli, a.data, a.rows, a.dim)
    common = ["--table", TABLE, "--bags", "64", "--ids-per-bag", "20", "--distinct", "256",
              "--max-threads", "1", "--duration", str(a.duration), "--warmup", str(a.warmup)]

    result = {
        "label": a.label,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                 if l.startswith("model name")), "?"),
                    "cores": os.cpu_count(), "load_before": os.getloadavg()},
        "config": {"rows": a.rows, "dim": a.dim, "dtype": "f32", "bags": 64, "ids_per_bag": 20,
                   "mode": "sum", "distinct_requests": 256, "max_threads": 1,
                   "server_threads": a.threads, "server_cpus": a.server_cpus,
                   "client_cpus": a.client_cpus, "channels": a.channels, "api": a.api, "spin_us": a.spin_us, "arrival": a.arrival,
                   "duration_s": a.duration, "warmup_s": a.warmup},
    }

    # 2. In-process baseline, on the server's CPUs.
    baselines = []
    for t in [a.threads] + [int(x) for x in a.baseline_threads.split(",") if x]:
        cpus = a.server_cpus if t == a.threads else ""
        r = run_json(taskset(cpus) + [bench, "inproc", "--db", db, "--threads", str(t)] + common)[0]
        r["cpus"] = cpus
        baselines.append(r)
        log(f"inproc threads={t} cpus={cpus or 'all'}: {r['throughput_rps']:.0f} calls/s, "
            f"p50 {r['p50_us']:.1f} us, p99 {r['p99_us']:.1f} us")
    result["baseline"] = baselines
    base = baselines[0]

    # 3. Server.
    server, port, server_cmd = start_server(cli, db, a.threads, a.server_cpus, a.server_arg)
    result["server_cmd"] = server_cmd
    result["server_threads_os"] = proc_threads(server.pid)
    target = f"127.0.0.1:{port}"
    gen = taskset(a.client_cpus) + [bench, "open", "--target", target, "--arrival", a.arrival,
                                    "--channels", str(a.channels), "--api", a.api, "--spin-us", str(a.spin_us)] + common

    def at_rate(rate):
        c0, s0 = proc_cpu_s(server.pid), proc_ctxsw(server.pid)
        t0 = time.time()
        r = run_json(gen + ["--rate", str(rate)])[0]
        c1, s1 = proc_cpu_s(server.pid), proc_ctxsw(server.pid)
        wall = time.time() - t0
        r["server_cpu_s"] = c1 - c0
        # Over the whole run (warm-up included): every request sent.
        sent = r["measured"] + r["rate"] * a.warmup
        r["server_cpu_per_req_us"] = (c1 - c0) / sent * 1e6
        r["server_ctxsw_per_req"] = (s1 - s0) / sent
        r["server_cpu_util"] = (c1 - c0) / wall
        errs = sum(r["errors"].values())
        log(f"rate {rate:>7}: achieved {r['achieved_rps']:8.0f}/s  p50 {r['p50_us']:8.1f}  "
            f"p99 {r['p99_us']:9.1f}  p99.9 {r['p999_us']:9.1f} us  errors {errs}  "
            f"lag p99 {r['lag_p99_us']:.0f} us  server cpu {r['server_cpu_util']:.2f} "
            f"({r['server_cpu_per_req_us']:.0f} us/req, {r['server_ctxsw_per_req']:.1f} cs/req), "
            f"client {r['client_cpu_per_req_us']:.0f} us/req")
        return r

    try:
        # 4. Rising rates.
        runs = []
        for rate in [float(x) for x in a.rates.split(",")]:
            r = at_rate(rate)
            runs.append(r)
            errs = sum(r["errors"].values())
            if (r["achieved_rps"] < 0.95 * r["scheduled_rps"] or errs > 0.01 * r["measured"]
                    or r["p99_us"] > a.p99_limit_us):
                break
        result["rising"] = runs
        sat = max(r["achieved_rps"] for r in runs)
        result["saturation_rps"] = sat
        # 5. Half the saturation rate.
        half = round(sat / 2)
        result["half_rate"] = half
        result["half"] = [at_rate(half) for _ in range(a.half_repeats)]
        result["server_cpu_idle_check"] = proc_cpu_s(server.pid)
    finally:
        rc, err = stop_server(server)
        result["server_exit"] = rc
        result["server_stderr"] = err.strip().splitlines()[-3:]
    # 6. The ideal server at the same rates, on the server's CPUs.
    ideal_rates = [half, round(base["throughput_rps"] / 2)]
    result["ideal"] = run_json(taskset(a.server_cpus) + [
        bench, "inproc-open", "--db", db, "--arrival", a.arrival,
        "--rate", ",".join(str(r) for r in ideal_rates)] + common)
    for r in result["ideal"]:
        log(f"ideal server (library in-process, open loop) at {r['rate']:.0f}/s: "
            f"achieved {r['achieved_rps']:.0f}/s  p50 {r['p50_us']:.1f}  p99 {r['p99_us']:.1f}  "
            f"p99.9 {r['p999_us']:.1f} us (service p50 {r['service_p50_us']:.1f}, "
            f"p99 {r['service_p99_us']:.1f})")
    result["load_after"] = os.getloadavg()

    half_p99 = max(r["p99_us"] for r in result["half"])
    result["targets"] = {
        "p99_at_half_saturation_us": half_p99,
        "p99_under_300us": half_p99 < 300,
        "saturation_over_inproc": sat / base["throughput_rps"],
        "saturation_at_least_70pct": sat >= 0.7 * base["throughput_rps"],
    }

    if a.append:
        with open(a.out) as f:
            main_result = json.load(f)
        main_result.setdefault("other_runs", []).append(result)
    else:
        main_result = result
    with open(a.out, "w") as f:
        json.dump(main_result, f, indent=1)
        f.write("\n")

    print(f"\nin-process baseline ({base['threads']} thread(s), cpus {base['cpus'] or 'all'}): "
          f"{base['throughput_rps']:.0f} calls/s, p50 {base['p50_us']:.1f} us, "
          f"p99 {base['p99_us']:.1f} us")
    for b in baselines[1:]:
        print(f"in-process, {b['threads']} threads, unpinned: {b['throughput_rps']:.0f} calls/s, "
              f"p50 {b['p50_us']:.1f} us, p99 {b['p99_us']:.1f} us")
    print(f"\n| offered/s | achieved/s | p50 us | p99 us | p99.9 us | errors | server CPU |")
    print("|---:|---:|---:|---:|---:|---|---:|")
    for r in result["rising"] + result["half"]:
        e = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        print(f"| {r['rate']:.0f} | {r['achieved_rps']:.0f} | {r['p50_us']:.0f} | "
              f"{r['p99_us']:.0f} | {r['p999_us']:.0f} | {e} | {r['server_cpu_util']:.2f} |")
    t = result["targets"]
    print(f"\nsaturation {sat:.0f}/s = {100 * t['saturation_over_inproc']:.0f} % of in-process "
          f"({'met' if t['saturation_at_least_70pct'] else 'NOT met'}: >= 70 %)")
    print(f"p99 at half saturation ({half}/s): {half_p99:.0f} us "
          f"({'met' if t['p99_under_300us'] else 'NOT met'}: < 300 us)")
    for r in result["ideal"]:
        print(f"ideal server (the library in-process, same open loop) at {r['rate']:.0f}/s: "
              f"p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us, p99.9 {r['p999_us']:.0f} us")


if __name__ == "__main__":
    main()
