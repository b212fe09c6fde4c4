#!/usr/bin/env python3
"""Turn bench_e2e's JSON into the README's performance tables and a PNG chart.

    build/bench/bench_e2e --benchmark_out=e2e.json --benchmark_out_format=json
    python3 bench/report.py e2e.json [rerun.json ...] --out bench/results   # e2e.md, e2e.png, the JSON

Two tables: decoding (TQ2 and TQ1 against their bandwidth floors, TQ1 against the 2-bit floor,
the fp32 model) and prefill with memory (GMAC/s against the int8 dot-product peak of the run).
Standard library only; the chart is drawn by gnuplot (Debian package gnuplot-nox) and is skipped
with a message when gnuplot is absent.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys


def load(paths):
    """Rows of every file; a later file's rows replace an earlier one's (e.g. a rerun of some)."""
    rows, ctx = {}, {}
    for path in paths:
        c, r = load_one(path)
        ctx = ctx or c
        rows.update(r)
    return ctx, rows


def load_one(path):
    with open(path) as f:
        doc = json.load(f)
    rows = {}
    for b in doc["benchmarks"]:
        if b.get("run_type") == "aggregate":
            continue
        # e2e/<preset>/<kind>/<phase>/threads:<t>/iterations:<n>/real_time
        parts = b["name"].split("/")
        preset, kind, phase = parts[1], parts[2], parts[3]
        if phase == "batch":  # batch_report.py's
            continue
        threads = int(parts[4].split(":")[1])
        rows[(preset, kind, phase, threads)] = b
    return doc["context"], rows


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def pct(v):
    return "–" if v is None else f"{v:.0%}"


def kernels(b):
    label = (b or {}).get("label", "")
    return label.split(" | ")[0].replace("kernels: ", "") if label else "–"


def tables(ctx, rows):
    presets = [p for p in ("370m", "1.3b", "2.7b") if any(k[0] == p for k in rows)]
    out = ["**Decoding** (tokens/s; in brackets the share of the bandwidth floor measured just before; "
           "TQ1 also against the floor of the same model at 2 bits per weight)", "",
           "| model | threads | read GB/s | TQ2 | TQ1 | TQ1 vs 2-bit floor | fp32 (Eigen) | TQ1 / fp32 | kernels (TQ2; TQ1) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for p in presets:
        for t in (1, 2):
            g = lambda kind, phase: rows.get((p, kind, phase, t))
            q2, q1, f = g("tq2", "decode"), g("tq1", "decode"), g("fp32", "decode")
            v = lambda b, k: (b or {}).get(k)
            out.append("| {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} | {}; {} |".format(
                p.upper(), t, fmt(v(q2, "bw_GBs") or v(q1, "bw_GBs")), fmt(v(q2, "tok_s")), pct(v(q2, "floor_frac")),
                fmt(v(q1, "tok_s")), pct(v(q1, "floor_frac")),
                "–" if v(q1, "floor2_frac") is None else f"{v(q1, 'floor2_frac'):.2f}×", fmt(v(f, "tok_s")),
                "–" if not (v(q1, "tok_s") and v(f, "tok_s")) else f"{v(q1, 'tok_s') / v(f, 'tok_s'):.1f}×",
                kernels(q2), kernels(q1)))
    out += ["", "**Prefill of 512 tokens and memory** (GMAC/s: ternary multiply-accumulates per second; "
            "in brackets the share of the int8 dot-product peak measured in the run)", "",
            "| model | threads | TQ2 tok/s (GMAC/s) | TQ1 tok/s (GMAC/s) | fp32 tok/s | TQ1 time to first token "
            "| TQ1 prefill / decode | peak MiB TQ2 / TQ1 / fp32 | fp32 / TQ1 memory |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in presets:
        for t in (1, 2):
            g = lambda kind, phase, key: rows.get((p, kind, phase, t), {}).get(key)
            peak = lambda kind: max(filter(None, [g(kind, "decode", "peak_MiB"), g(kind, "prefill", "peak_MiB")]), default=None)
            m2, m1, mf = peak("tq2"), peak("tq1"), peak("fp32")
            cell = lambda kind: "{} ({} GMAC/s, {})".format(fmt(g(kind, "prefill", "tok_s")), fmt(g(kind, "prefill", "GMAC_s"), 0),
                                                            pct(g(kind, "prefill", "peak_frac")))
            p1, d1 = g("tq1", "prefill", "tok_s"), g("tq1", "decode", "tok_s")
            out.append("| {} | {} | {} | {} | {} | {} ms | {} | {} / {} / {} | {} |".format(
                p.upper(), t, cell("tq2"), cell("tq1"), fmt(g("fp32", "prefill", "tok_s")), fmt(g("tq1", "prefill", "ttft_ms"), 0),
                "–" if not (p1 and d1) else f"{p1 / d1:.1f}×", fmt(m2, 0), fmt(m1, 0), fmt(mf, 0),
                "–" if not (m1 and mf) else f"{mf / m1:.1f}×"))
    caches = ", ".join(f"L{c['level']} {c['size'] // 1024} KiB" for c in ctx.get("caches", []) if c["type"] != "Instruction")
    out.append("")
    out.append(f"CPU: {ctx.get('cpu_model', '?')}, {ctx.get('num_cpus')} CPUs ({caches}); kernels this CPU runs: "
               f"{ctx.get('mmfree_kernels_available', '?')}; run {ctx.get('date', '?')}. Weights random (init-random "
               "presets); the fp32 model is the same model with Eigen float matrix products over the dequantised "
               "weights. Floors: read bandwidth measured just before each figure / packed bytes read per token.")
    return "\n".join(out) + "\n"


def chart(ctx, rows, png):
    if not shutil.which("gnuplot"):
        print("gnuplot not found: chart skipped (apt-get install gnuplot-nox)", file=sys.stderr)
        return
    presets = [p for p in ("370m", "1.3b", "2.7b") if any(k[0] == p for k in rows)]
    dat = png + ".dat"
    with open(dat, "w") as f:
        # model, TQ2 decode, TQ1 decode, fp32 decode, 2-bit floor, TQ2 prefill, TQ1 prefill, fp32 prefill,
        # peak MiB TQ2, TQ1, fp32
        for p in presets:
            g = lambda kind, phase, key: rows.get((p, kind, phase, 2), {}).get(key) or 0
            peak = lambda kind: max(g(kind, "decode", "peak_MiB"), g(kind, "prefill", "peak_MiB"))
            floor2 = g("tq2", "decode", "floor_tok_s")
            f.write(f"{p.upper()} {g('tq2', 'decode', 'tok_s'):.2f} {g('tq1', 'decode', 'tok_s'):.2f} "
                    f"{g('fp32', 'decode', 'tok_s'):.2f} {floor2:.2f} {g('tq2', 'prefill', 'tok_s'):.2f} "
                    f"{g('tq1', 'prefill', 'tok_s'):.2f} {g('fp32', 'prefill', 'tok_s'):.2f} "
                    f"{peak('tq2'):.1f} {peak('tq1'):.1f} {peak('fp32'):.1f}\n")
    cpu = ctx.get("cpu_model", "")
    script = f"""
set terminal pngcairo size 1600,460 font ",11"
set output "{png}"
set multiplot layout 1,3 title "mmfree on {cpu}, 2 threads: ternary TQ2 / TQ1 vs the same model in fp32 (Eigen)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top right
set grid ytics
set logscale y
set yrange [1:*]
set title "decode tokens/s (higher is better)"
plot "{dat}" using 2:xtic(1) title "TQ2" lc rgb "#1b7837", \\
     "" using 3 title "TQ1" lc rgb "#00441b", \\
     "" using 5 title "2-bit bandwidth floor" lc rgb "#a6dba0", \\
     "" using 4 title "fp32 (Eigen)" lc rgb "#762a83"
set title "prefill of 512 tokens, tokens/s (higher is better)"
plot "{dat}" using 6:xtic(1) title "TQ2" lc rgb "#1b7837", \\
     "" using 7 title "TQ1" lc rgb "#00441b", \\
     "" using 8 title "fp32 (Eigen)" lc rgb "#762a83"
set title "peak memory, MiB (lower is better)"
plot "{dat}" using 9:xtic(1) title "TQ2" lc rgb "#1b7837", \\
     "" using 10 title "TQ1" lc rgb "#00441b", \\
     "" using 11 title "fp32 (Eigen)" lc rgb "#762a83"
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)
    os.remove(dat)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="bench_e2e JSON files; later ones replace rows of earlier ones")
    ap.add_argument("--out", default="bench/results", help="folder for e2e.md, e2e.png and a copy of the JSON")
    a = ap.parse_args()
    ctx, rows = load(a.json)
    if not rows:
        sys.exit(f"{a.json}: no e2e benchmarks")
    os.makedirs(a.out, exist_ok=True)
    md = tables(ctx, rows)
    with open(os.path.join(a.out, "e2e.md"), "w") as f:
        f.write(md)
    for i, path in enumerate(a.json):
        dst = os.path.join(a.out, "e2e.json" if i == 0 else f"e2e-{i + 1}.json")
        if os.path.abspath(path) != os.path.abspath(dst):
            shutil.copyfile(path, dst)
    chart(ctx, rows, os.path.join(a.out, "e2e.png"))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
