#!/usr/bin/env python3
"""Turn bench_kernels' JSON into the README's kernel tables: every kernel side by side.

    build/bench/bench_kernels --benchmark_repetitions=5 --benchmark_out=kernels.json --benchmark_out_format=json
    python3 bench/kernel_report.py kernels.json --threads 2 > bench/results/kernels.md
(with --benchmark_repetitions=5)

On a shared machine the bandwidth and the cores' availability move by tens of percent within a
minute. bench_kernels therefore probes the ceiling (read bandwidth, int8 peak) between runs of
about 20 ms of each kernel and reports the median of the paired ratios; this report takes, per
benchmark, the repetition with the median ratio (run without --benchmark_report_aggregates_only).
"""
import argparse
import json
import sys


def load(path):
    """Per benchmark, the repetition with the median share of its ceiling."""
    with open(path) as f:
        doc = json.load(f)
    reps = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        parts = b["name"].split("/")
        if parts[0] == "ternary":  # ternary/<fmt>/<kernel>/<shape>/tokens:N/threads:T/...
            key = ("ternary", parts[1], parts[2], parts[3], int(parts[4].split(":")[1]), int(parts[5].split(":")[1]))
        elif parts[0] == "eigen_f32":  # eigen_f32/<shape>/tokens:N/threads:T
            key = ("eigen", "f32", "eigen", parts[1], int(parts[2].split(":")[1]), int(parts[3].split(":")[1]))
        elif parts[0] == "peak":
            key = ("peak", parts[1], "", "", 0, int(parts[2].split(":")[1]))
        else:
            continue
        reps.setdefault(key, []).append(b)
    rows = {}
    for key, bs in reps.items():
        share = lambda b: b.get("floor_frac", b.get("peak_frac", b.get("GMAC/s", b.get("GB/s", 0))))
        bs = sorted(bs, key=share)
        rows[key] = bs[len(bs) // 2]
    return doc["context"], rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    a = ap.parse_args()
    ctx, rows = load(a.json)
    t = a.threads
    shapes = []
    for k in rows:
        if k[0] in ("ternary", "eigen") and k[3] not in shapes:
            shapes.append(k[3])
    cols = []  # (format, kernel) in first-seen order
    for k in rows:
        if k[0] == "ternary" and (k[1], k[2]) not in cols:
            cols.append((k[1], k[2]))
    out = []
    for phase, n in (("decode, 1 token", 1), (f"prefill, {a.prefill_tokens} tokens", a.prefill_tokens)):
        cs = [c for c in cols if any(k[:3] == ("ternary",) + c and k[4] == n and k[5] == t for k in rows)]
        if not cs:
            continue
        unit = ("GB/s of packed weights (share of the read bandwidth probed alongside)" if n == 1
                else "GMAC/s (share of the int8 dot-product peak probed alongside)")
        out.append(f"**{phase}, {t} thread(s)**: {unit}; Eigen fp32 in the same run")
        out.append("")
        out.append("| shape | " + " | ".join(f"{f} {k}" for f, k in cs) + " | Eigen fp32 |")
        out.append("|---" * (len(cs) + 2) + "|")
        for s in shapes:
            cells = []
            for f, k in cs:
                b = rows.get(("ternary", f, k, s, n, t))
                if not b:
                    cells.append("–")
                elif n == 1:
                    cells.append(f"{b['GB/s'] / 1e9:.1f} ({b['floor_frac']:.0%})")
                else:
                    cells.append(f"{b['GMAC/s']:.0f} ({b['peak_frac']:.0%})")
            e = rows.get(("eigen", "f32", "eigen", s, n, t))
            cells.append("–" if not e else (f"{e['GB/s'] / 1e9:.1f} GB/s" if n == 1 else f"{e['GMAC/s']:.0f} GMAC/s"))
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
    lut = rows.get(("peak", "table_lookup_best_case", "", "", 0, t))
    vnni = rows.get(("peak", "vpdpbusd_12_chains", "", "", 0, t))
    if lut and vnni:
        out.append(f"int8 peak ({t} threads, the best of 8, 12 and 16 vpdpbusd chains each): {vnni['GMAC/s']:.0f} GMAC/s; a table-lookup GEMM's most "
                   f"favourable inner loop (`peak/table_lookup_best_case`): {lut['GMAC/s']:.0f} G multiply-accumulate "
                   f"equivalents/s, {lut['vs_vpdpbusd']:.2f}x the peak.")
        out.append("")
    out.append(f"CPU: {ctx.get('cpu_model', '?')}; {ctx.get('date', '?')}; kernels this CPU runs: {ctx.get('mmfree_kernels', '?')}.")
    sys.stdout.write("\n".join(x for x in out) + "\n")


if __name__ == "__main__":
    main()
