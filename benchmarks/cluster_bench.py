#!/usr/bin/python3
"""The cluster path on ONE machine (issue [scale-out], item 7), against the local engine and
against one `embstore serve` node: latency and throughput of 64 bags x 20 ids, closed loop,
one call at a time, and the bytes on the wire per query (partials against raw rows).

Run with Debian's Python (/usr/bin/python3, numpy from python3-numpy); it needs etcd
(etcd-server) and the CLI and benchmarks/serve_bench.cc built, e.g.

    cmake --build build/bench-serve -j2 --target serve_bench embstore_cli
    /usr/bin/python3 benchmarks/cluster_bench.py

What it does:
 1. Writes a --rows x --dim f32 table (uniform in [-1, 1)) as a .npy under --data, at run time
    (never committed), and imports it into a local store there.
 2. `serve_bench inproc --threads 1`: the library in-process, the baseline.
 3. One stand-alone `embstore serve --threads 1` on that store: `serve_bench rtt` (closed loop,
    the client polling without sleeping).
 4. etcd on free loopback ports (data in a temporary directory), --nodes `embstore serve
    --cluster` nodes, `embstore publish --shards S --replicas R`, then `serve_bench cluster`
    (closed loop through serve::ClusterClient).
 5. Stops everything it started; writes --out (benchmarks/results_cluster.json); prints a table.

All on one 2-core machine: every process shares the same cores, so this measures the cluster
path's overhead, not a cluster's capacity.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TABLE = "emb"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_line(proc, pattern, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(pattern, line)
        if m:
            return m
    raise SystemExit(f"no line matching {pattern!r} from {proc.args}")


def run_json(cmd):
    log("$ " + " ".join(cmd))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build/bench-serve"))
    ap.add_argument("--data", default="/work/bench_data/cluster")
    ap.add_argument("--rows", type=int, default=1 << 18)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--shards", type=int, default=6)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the three measurements, interleaved; medians are reported")
    ap.add_argument("--out", default=os.path.join(HERE, "results_cluster.json"))
    a = ap.parse_args()
    cli = os.path.join(a.build, "tools/embstore")
    bench = os.path.join(a.build, "benchmarks/serve_bench")
    if shutil.which("etcd") is None:
        raise SystemExit("etcd not found (apt-get install etcd-server)")
    os.makedirs(a.data, exist_ok=True)
    npy = os.path.join(a.data, f"table_{a.rows}x{a.dim}.npy")
    if not os.path.exists(npy):
        rng = np.random.default_rng(1)
        np.save(npy, rng.uniform(-1, 1, size=(a.rows, a.dim)).astype(np.float32))
    db = os.path.join(a.data, f"db_{a.rows}x{a.dim}")
    if not os.path.isdir(db):
        subprocess.run([cli, "import", "--db", db, "--table", TABLE, "--from", npy], check=True)
    common = ["--table", TABLE, "--bags", "64", "--ids-per-bag", "20", "--distinct", "256",
              "--duration", str(a.duration), "--warmup", "1"]
    result = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(),
              "load_before": os.getloadavg(),
              "config": {"rows": a.rows, "dim": a.dim, "nodes": a.nodes, "shards": a.shards,
                         "replicas": a.replicas, "bags": 64, "ids_per_bag": 20, "mode": "sum"}}

    procs = []
    tmp = tempfile.mkdtemp(prefix="cluster-bench-")
    try:
        single = subprocess.Popen([cli, "serve", "--db", db, "--listen", "127.0.0.1:0",
                                   "--threads", "1"], stdout=subprocess.PIPE, text=True)
        procs.append(single)
        port = wait_line(single, r"listening on 127\.0\.0\.1:(\d+)").group(1)

        cport, pport = free_port(), free_port()
        c = f"http://127.0.0.1:{cport}"
        p = f"http://127.0.0.1:{pport}"
        etcd = subprocess.Popen(["etcd", "--name", "bench", "--data-dir", tmp + "/etcd",
                                 "--listen-client-urls", c, "--advertise-client-urls", c,
                                 "--listen-peer-urls", p, "--initial-advertise-peer-urls", p,
                                 "--initial-cluster", "bench=" + p, "--logger", "zap",
                                 "--log-outputs", tmp + "/etcd.log"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(etcd)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", cport), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        for n in range(a.nodes):
            node = subprocess.Popen([cli, "serve", "--db", f"{tmp}/n{n}", "--listen",
                                     "127.0.0.1:0", "--cluster", c, "--node", f"n{n}",
                                     "--threads", "1"], stdout=subprocess.PIPE, text=True)
            procs.append(node)
            wait_line(node, r"listening on")
        t0 = time.time()
        subprocess.run([cli, "publish", "--cluster", c, "--table", TABLE, "--from", npy,
                        "--shards", str(a.shards), "--replicas", str(a.replicas)], check=True,
                       stderr=subprocess.DEVNULL)
        result["publish_s"] = time.time() - t0
        rounds = {"inproc": [], "one_node": [], "cluster": []}
        for r in range(a.repeat):
            rounds["inproc"].append(
                run_json([bench, "inproc", "--db", db, "--threads", "1"] + common)[0])
            rtt = run_json([bench, "rtt", "--target", f"127.0.0.1:{port}", "--table", TABLE,
                            "--calls", "4000"])
            rounds["one_node"].append([x for x in rtt if x["rpc"] == "EmbeddingBag"][0])
            rounds["cluster"].append(run_json([bench, "cluster", "--cluster", c] + common)[0])
        result["rounds"] = rounds
        for k, rs in rounds.items():
            # The round with the median p50 stands for the path.
            result[k] = sorted(rs, key=lambda x: x["p50_us"])[len(rs) // 2]
    finally:
        for pr in reversed(procs):
            pr.send_signal(signal.SIGTERM)
        for pr in procs:
            try:
                pr.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pr.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    i, o, k = result["inproc"], result["one_node"], result["cluster"]
    print(f"\nmedian of {a.repeat} rounds (by p50)")
    print(f"| path | p50 us | p90 us | p99 us | calls/s (one at a time) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| library in-process (1 thread) | {i['p50_us']:.0f} | {i['p90_us']:.0f} | "
          f"{i['p99_us']:.0f} | {i['throughput_rps']:.0f} |")
    print(f"| one `embstore serve` node | {o['p50_us']:.0f} | {o['p90_us']:.0f} | "
          f"{o['p99_us']:.0f} | {1e6 / o['p50_us']:.0f} (1/p50) |")
    print(f"| cluster: {a.nodes} nodes, {a.shards} shards x {a.replicas} | {k['p50_us']:.0f} | "
          f"{k['p90_us']:.0f} | {k['p99_us']:.0f} | {k['throughput_rps']:.0f} |")
    print(f"\ncluster p50 / in-process p50 = {k['p50_us'] / i['p50_us']:.2f}x, "
          f"/ one node p50 = {k['p50_us'] / o['p50_us']:.2f}x; "
          f"{k['sub_requests_per_call']:.1f} sub-requests per call, {k['retries']} retries")
    print(f"bytes on the wire per query: partials {k['wire_bytes_partials']:.0f}, raw rows "
          f"{k['wire_bytes_raw_rows']:.0f} "
          f"({k['wire_bytes_raw_rows'] / k['wire_bytes_partials']:.1f}x more)")
    print(f"publish of {a.rows} x {a.dim} f32: {result['publish_s']:.1f} s")


if __name__ == "__main__":
    main()
