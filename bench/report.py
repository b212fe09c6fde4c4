#!/usr/bin/env python3
"""Turn bench_e2e's JSON into the README's performance table and a PNG chart.

    build/bench/bench_e2e --benchmark_out=e2e.json --benchmark_out_format=json
    python3 bench/report.py e2e.json --out bench/results      # writes e2e.md, e2e.png, e2e.json

Standard library only; the chart is drawn by gnuplot (Debian package gnuplot-nox) and is
skipped with a message when gnuplot is absent.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys


def load(path):
    with open(path) as f:
        doc = json.load(f)
    rows = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        # e2e/<preset>/<kind>/<phase>/threads:<t>/iterations:<n>/real_time
        parts = b["name"].split("/")
        preset, kind, phase = parts[1], parts[2], parts[3]
        threads = int(parts[4].split(":")[1])
        rows[(preset, kind, phase, threads)] = b
    return doc["context"], rows


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def table(ctx, rows):
    presets = [p for p in ("370m", "1.3b", "2.7b") if any(k[0] == p for k in rows)]
    out = []
    out.append("| model | threads | decode tok/s (TQ2) | of bandwidth floor | decode tok/s (fp32) | speed-up "
               "| prefill 512 tok/s (TQ2) | time to first token | prefill / decode | peak MiB (TQ2) "
               "| peak MiB (fp32) | memory ratio |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in presets:
        for t in (1, 2):
            g = lambda kind, phase, key: rows.get((p, kind, phase, t), {}).get(key)
            dq, df = g("tq2", "decode", "tok_s"), g("fp32", "decode", "tok_s")
            pq = g("tq2", "prefill", "tok_s")
            mq = max(filter(None, [g("tq2", "decode", "peak_MiB"), g("tq2", "prefill", "peak_MiB")]), default=None)
            mf = max(filter(None, [g("fp32", "decode", "peak_MiB"), g("fp32", "prefill", "peak_MiB")]), default=None)
            frac = g("tq2", "decode", "floor_frac")
            out.append("| {} | {} | {} | {} | {} | {} | {} | {} ms | {} | {} | {} | {} |".format(
                p.upper(), t, fmt(dq), "–" if frac is None else f"{frac:.0%}", fmt(df),
                "–" if not (dq and df) else f"{dq / df:.1f}×", fmt(pq), fmt(g("tq2", "prefill", "ttft_ms"), 0),
                "–" if not (pq and dq) else f"{pq / dq:.1f}×", fmt(mq, 0), fmt(mf, 0),
                "–" if not (mq and mf) else f"{mf / mq:.1f}×"))
    caches = ", ".join(f"L{c['level']} {c['size'] // 1024} KiB" for c in ctx.get("caches", []) if c["type"] != "Instruction")
    bw = {t: rows.get(next((k for k in rows if k[3] == t), None), {}).get("bw_GBs") for t in (1, 2)}
    out.append("")
    out.append(f"Machine: {ctx.get('num_cpus')} CPUs at {ctx.get('mhz_per_cpu')} MHz ({caches}); "
               f"measured read bandwidth {fmt(bw[1])} GB/s on 1 thread, {fmt(bw[2])} GB/s on 2; "
               f"kernels {ctx.get('mmfree_kernels', '?')}; run {ctx.get('date', '?')}. Floors: bandwidth / packed bytes per token. "
               "Weights random (init-random presets), TQ2 (2 bits per weight); the fp32 model is the same "
               "model with Eigen float matrix products over the dequantised weights.")
    return "\n".join(out) + "\n"


def chart(rows, png):
    if not shutil.which("gnuplot"):
        print("gnuplot not found: chart skipped (apt-get install gnuplot-nox)", file=sys.stderr)
        return
    presets = [p for p in ("370m", "1.3b", "2.7b") if any(k[0] == p for k in rows)]
    dat = png + ".dat"
    with open(dat, "w") as f:
        # columns: model, TQ2 decode, fp32 decode, TQ2 floor, TQ2 peak MiB, fp32 peak MiB,
        # TQ2 prefill, fp32 prefill
        for p in presets:
            g = lambda kind, phase, key: rows.get((p, kind, phase, 2), {}).get(key) or 0
            peak = lambda kind: max(g(kind, "decode", "peak_MiB"), g(kind, "prefill", "peak_MiB"))
            f.write(f"{p.upper()} {g('tq2', 'decode', 'tok_s'):.2f} {g('fp32', 'decode', 'tok_s'):.2f} "
                    f"{g('tq2', 'decode', 'floor_tok_s'):.2f} {peak('tq2'):.1f} {peak('fp32'):.1f} "
                    f"{g('tq2', 'prefill', 'tok_s'):.2f} {g('fp32', 'prefill', 'tok_s'):.2f}\n")
    script = f"""
set terminal pngcairo size 1500,450 font ",11"
set output "{png}"
set multiplot layout 1,3 title "mmfree, 2 threads: TQ2 ternary model vs the same model in fp32 (Eigen)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top right
set grid ytics
set title "decode tokens/s (higher is better)"
set logscale y
set yrange [1:*]
plot "{dat}" using 2:xtic(1) title "mmfree TQ2" lc rgb "#1b7837", \
     "" using 4 title "TQ2 bandwidth floor" lc rgb "#a6dba0", \
     "" using 3 title "fp32 (Eigen)" lc rgb "#762a83"
set title "prefill of 512 tokens, tokens/s (higher is better)"
plot "{dat}" using 7:xtic(1) title "mmfree TQ2" lc rgb "#1b7837", \
     "" using 8 title "fp32 (Eigen)" lc rgb "#762a83"
set title "peak memory, MiB (lower is better)"
plot "{dat}" using 5:xtic(1) title "mmfree TQ2" lc rgb "#1b7837", \
     "" using 6 title "fp32 (Eigen)" lc rgb "#762a83"
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)
    os.remove(dat)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--out", default="bench/results", help="folder for e2e.md, e2e.png and a copy of the JSON")
    a = ap.parse_args()
    ctx, rows = load(a.json)
    if not rows:
        sys.exit(f"{a.json}: no e2e benchmarks in this file")
    os.makedirs(a.out, exist_ok=True)
    md = table(ctx, rows)
    with open(os.path.join(a.out, "e2e.md"), "w") as f:
        f.write(md)
    if os.path.abspath(a.json) != os.path.abspath(os.path.join(a.out, "e2e.json")):
        shutil.copyfile(a.json, os.path.join(a.out, "e2e.json"))
    chart(rows, os.path.join(a.out, "e2e.png"))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
