#!/usr/bin/env python3
"""Turn `mmfree-cli bench --batch ... --json` output into the README's table and an SVG chart.

    mmfree-cli bench -m 1.3b-tq2.gguf --batch 1,2,4,8,16,32,64 -t 2 -r 5 --json > 1.3b-tq2.json
    python3 bench/batch_report.py 1.3b-tq2.json 1.3b-tq1.json ... --out bench/results/batch

Writes batch.md (tokens/s and the share of the roofline for every model and B, the prefill line,
the ceilings of each run) and batch.svg (tokens/s against B on a log scale, each model's roofline
dashed, the CPU named). Standard library only.
"""
import argparse
import json
import math
import os

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def load(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            doc = json.load(f)
        runs.extend(doc if isinstance(doc, list) else [doc])
    return runs


def label(r):
    return "%s, %d threads" % (r["desc"], r["threads"])


def source(r, key, probe_key):
    """" (set by the chooser's samples; probe 748)" where a ceiling is not its probe's reading
    (runs before 2026-12-06 have no such keys: their ceilings are the probes)."""
    src = r.get(key, "probe")
    if src == "probe":
        return ""
    return " (set by %s; probe %.0f)" % ("the chooser's kernel samples" if src == "chooser" else "the run's passes",
                                         r[probe_key])


def table(runs):
    bs = sorted({b["batch"] for r in runs for b in r["batches"]})
    out = ["CPU: %s" % runs[0]["cpu"], ""]
    out.append("| model | " + " | ".join("B = %d" % b for b in bs) + " | prefill %d tok |" % runs[0]["prefill"]["tokens"])
    out.append("| --- " * (len(bs) + 2) + "|")
    for r in runs:
        cells = {b["batch"]: "%.0f (%.0f%%)" % (b["tok_s"], 100 * b["roofline_frac"]) for b in r["batches"]}
        p = r["prefill"]
        out.append("| %s | %s | %.0f tok/s, %.0f GMAC/s (%.0f%% of peak) |" % (
            label(r), " | ".join(cells.get(b, "") for b in bs), p["tok_s"], p["gmac_s"], 100 * p["peak_frac"]))
    out.append("")
    out.append("Aggregate tokens/s of `Model::step_batch` over B sequences (in brackets: the share of the roofline "
               "min(B x read bandwidth / weight bytes per token, int8 peak / MACs per token), both measured in the "
               "same run). Ceilings of each run:")
    out.append("")
    for r in runs:
        out.append("- %s: read %.1f GB/s%s, int8 peak %.0f GMAC/s%s, %.1f MB and %.2f GMAC per token; kernels: %s" % (
            label(r), r["read_gbs"], source(r, "read_from", "read_probe_gbs"), r["int8_peak_gmacs"],
            source(r, "int8_peak_from", "int8_probe_gmacs"), r["weight_bytes_per_token"] / 1e6,
            r["macs_per_token"] / 1e9, r["kernels"]))
    return "\n".join(out) + "\n"


def svg(runs):
    W, H, L, R, T, B = 760, 440, 70, 230, 50, 50
    bs = sorted({b["batch"] for r in runs for b in r["batches"]})
    ymax = max(max(b["roofline_tok_s"], b["tok_s"]) for r in runs for b in r["batches"]) * 1.08
    x0, x1 = math.log2(bs[0]), math.log2(bs[-1])
    X = lambda b: L + (math.log2(b) - x0) / max(x1 - x0, 1e-9) * (W - L - R)
    Y = lambda v: H - B - v / ymax * (H - T - B)
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="20" font-size="14">Batched decoding: tokens/s against B, with the roofline (dashed)</text>' % L,
         '<text x="%d" y="38" fill="#555">%s, %d threads</text>' % (L, runs[0]["cpu"], runs[0]["threads"])]
    step = 10 ** math.floor(math.log10(ymax / 5))
    step *= 2 if ymax / step > 10 else 1
    v = 0
    while v <= ymax:
        s.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>' % (L, Y(v), W - R, Y(v)))
        s.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (L - 6, Y(v) + 4, v))
        v += step
    for b in bs:
        s.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>' % (X(b), T, X(b), H - B))
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (X(b), H - B + 16, b))
    s.append('<text x="%d" y="%d" text-anchor="middle">B (sequences per step)</text>' % ((L + W - R) / 2, H - 12))
    s.append('<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">aggregate tokens/s</text>' % ((T + H - B) / 2, (T + H - B) / 2))
    for i, r in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        pts = sorted(r["batches"], key=lambda b: b["batch"])
        s.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
            c, " ".join("%.1f,%.1f" % (X(b["batch"]), Y(b["tok_s"])) for b in pts)))
        s.append('<polyline fill="none" stroke="%s" stroke-width="1.2" stroke-dasharray="5,4" points="%s"/>' % (
            c, " ".join("%.1f,%.1f" % (X(b["batch"]), Y(b["roofline_tok_s"])) for b in pts)))
        for b in pts:
            s.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (X(b["batch"]), Y(b["tok_s"]), c))
        y = T + 10 + 34 * i
        s.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>' % (W - R + 14, y, W - R + 38, y, c))
        s.append('<text x="%d" y="%d">%s</text>' % (W - R + 44, y + 4, r["desc"]))
        s.append('<text x="%d" y="%d" fill="#555" font-size="10">read %.0f GB/s, peak %.0f GMAC/s</text>' % (
            W - R + 44, y + 17, r["read_gbs"], r["int8_peak_gmacs"]))
    s.append("</svg>")
    return "\n".join(s) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", default="bench/results/batch")
    a = ap.parse_args()
    runs = load(a.json)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "batch.md"), "w") as f:
        f.write(table(runs))
    with open(os.path.join(a.out, "batch.svg"), "w") as f:
        f.write(svg(runs))
    with open(os.path.join(a.out, "batch.json"), "w") as f:
        json.dump(runs, f, indent=1)
    print(table(runs))


if __name__ == "__main__":
    main()
