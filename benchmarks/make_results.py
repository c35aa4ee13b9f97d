#!/usr/bin/python3
"""Turns benchmarks/results.json (written by side_by_side.py) into the
markdown tables of RESULTS.md (printed on stdout) and benchmarks/gbps_vs_dim.png.

    /usr/bin/python3 benchmarks/make_results.py benchmarks/results.json
"""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def mode_label(r):
    s = r["mode"]
    if r["weighted"]:
        s = "weighted " + s
    if r["max_norm"]:
        s += f" + max_norm={r['max_norm']:g}"
    return s


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json"
    res = json.load(open(path))
    bw = res["bandwidth_median_gbps"]
    print(f"Memory read bandwidth, same run: {', '.join(f'{g:.2f}' for g in res['bandwidth_gbps'])}"
          f" GB/s (median {bw:.2f} GB/s). Load average at start {res['loadavg_start'][0]:.2f}, "
          f"end {res['loadavg_end'][0]:.2f}. torch {res['torch']}, {res['threads']} threads.\n")
    sections = {}
    for r in res["runs"]:
        sections.setdefault(r["section"], []).append(r)
    for name, runs in sections.items():
        print(f"#### {name}\n")
        print("| dim | ids/bag | ids | table | mode | ours ms | torch ms | ours / torch | "
              "ours GB/s | torch GB/s | ours % of read BW | ours rounds (ms) |")
        print("|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in runs:
            print(f"| {r['dim']} | {r['pool']} | {r['dist']} | {r['dtype']} | {mode_label(r)} | "
                  f"{r['ours_s']*1e3:.1f} | {fmt(r['torch_s'] and r['torch_s']*1e3, '.1f')} | "
                  f"{fmt(r['ratio'], '.2f')}{'x' if r['ratio'] else ''} | {r['ours_gbps']:.2f} | "
                  f"{fmt(r['torch_gbps'], '.2f')} | {100*r['ours_gbps']/bw:.0f}% | "
                  f"{' '.join(f'{t*1e3:.0f}' for t in r['ours_rounds'])} |")
        print()
    if "ceilings" in res:
        # torch's f32 sum: the median of all its rounds in the run (headline + dtypes rows),
        # as side_by_side.torch_f32_sum_reference computes it.
        ref_rounds = [t for r in res["runs"] if r["section"] in ("headline", "dtypes")
                      and r["mode"] == "sum" and not r["weighted"] and not r["max_norm"]
                      and r["dim"] == 128 and r["pool"] == 40 and r["dist"] == "uniform"
                      for t in r["torch_rounds"] if t]
        ref = statistics.median(ref_rounds)
        print("#### Random-row ceilings (`side_by_side_bench gather`, headline ids, no arithmetic)\n")
        print(f"torch's f32 sum, the reference: {ref*1e3:.1f} ms (median of its {len(ref_rounds)} "
              "rounds in this run).\n")
        print("| rows | cache lines read per row | ms | M rows/s | GB/s of lines | "
              "torch f32 sum / this |")
        print("|---|---:|---:|---:|---:|---:|")
        for c in res["ceilings"]:
            lines = f"{c['lines']} + 8 B apart" if c.get("params_apart") else c["lines"]
            print(f"| {c['label']} | {lines} | {c['median_s']*1e3:.1f} | {c['mlookups']:.1f} | "
                  f"{c['line_gbps']:.2f} | {ref / c['median_s']:.2f}x |")
        print()
    if "cli" in res:
        c = res["cli"]
        print("#### CLI end to end\n")
        print("| lookups | `embstore query` wall ms | start-up ms (1 id) | net ms | torch in-process ms | "
              "torch / net |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| {c['lookups']} | {c['full_s']*1e3:.1f} | {c['startup_s']*1e3:.1f} | "
              f"{c['net_s']*1e3:.1f} | {c['torch_s']*1e3:.1f} | {c['ratio']:.2f}x |\n")
    if "latency" in res:
        lat = res["latency"]
        print(f"#### Serving latency ({lat['bags']} bags x {lat['ids_per_bag']} ids, "
              f"max_threads = 1 per request)\n")
        print("| client threads | p50 us | p90 us | p99 us | p99.9 us | requests/s | Mlookups/s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in lat["runs"]:
            print(f"| {r['clients']} | {r['p50_us']:.1f} | {r['p90_us']:.1f} | {r['p99_us']:.1f} | "
                  f"{r['p999_us']:.1f} | {r['requests_per_s']:.0f} | {r['lookups_per_s']/1e6:.1f} |")
        print()
    if "big" in res:
        b = res["big"]
        print(f"#### Table larger than the page cache may keep: {b['rows']} x {b['dim']} f32 "
              f"({b['table_bytes']/1e9:.1f} GB), cgroup memory limit {b['limit_mb']} MiB, "
              f"{b['lookups']} uniform lookups per call, sum\n")
        timed_out = [r for r in b["runs"] if "timed_out" in r]
        b["runs"] = [r for r in b["runs"] if "timed_out" not in r]
        n = len(b["runs"][0]["rep_gbps"])
        print("| case | " + " | ".join(f"rep {i+1} GB/s" for i in range(n)) + " | rep 1 ms | "
              f"rep {n} ms | Mlookups/s last rep |")
        print("|---|" + "---:|" * (n + 3))
        for r in b["runs"]:
            g, t = r["rep_gbps"], r["times_s"]
            print(f"| {r['label']} | " + " | ".join(f"{x:.3f}" for x in g) +
                  f" | {t[0]*1e3:.0f} | {t[-1]*1e3:.0f} | {r['lookups']/t[-1]/1e6:.3f} |")
        for r in timed_out:
            print(f"| {r['label']} | did not finish in {r['timed_out']} s |" + " |" * (n + 2))
        print()

    # GB/s against dim, one panel per mode: ours, torch, the read-bandwidth roofline.
    dims = [r for r in res["runs"] if r["section"] == "dims"]
    modes = []
    for r in dims:
        if mode_label(r) not in modes:
            modes.append(mode_label(r))
    if dims:
        fig, axes = plt.subplots(1, len(modes), figsize=(3.2 * len(modes), 3.2), sharey=True)
        for ax, m in zip(axes, modes):
            rs = sorted((r for r in dims if mode_label(r) == m), key=lambda r: r["dim"])
            x = [r["dim"] for r in rs]
            ax.plot(x, [r["ours_gbps"] for r in rs], "o-", label="embstore")
            ax.plot(x, [r["torch_gbps"] or 0 for r in rs], "s-", label="torch 1.13")
            ax.axhline(bw, color="k", ls="--", lw=1, label=f"read BW {bw:.1f}")
            ax.axhline(0.8 * bw, color="gray", ls=":", lw=1, label="80% target")
            ax.set_xscale("log", base=2)
            ax.set_xticks(x)
            ax.set_xticklabels([str(v) for v in x])
            ax.set_title(m, fontsize=9)
            ax.set_xlabel("dim")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("GB/s of row data pooled")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"1M-row f32 table, 40 uniform ids/bag, {res['threads']} threads", fontsize=9)
        fig.tight_layout()
        out = os.path.join(os.path.dirname(os.path.abspath(path)), "gbps_vs_dim.png")
        fig.savefig(out, dpi=80)
        print(f"<!-- plot: {out} ({os.path.getsize(out)} bytes) -->")


if __name__ == "__main__":
    main()
