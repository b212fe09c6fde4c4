#!/usr/bin/env python3
"""Projects speculative decoding's speedup for a draft model on a target of the published family.

Inputs, both measured on one machine: `mmfree-cli bench --speculate ... --json` on the target
(the cost of a verification pass of k + 1 tokens in steps, and the step time) and
`mmfree-cli bench --json` on the draft (its decode tokens/s). Assumed: the rate alpha at which the
draft's tokens are right, independently per token. For each alpha, the best draft length k gives
  speedup = (1 - alpha^(k+1)) / (1 - alpha) / (pass_cost(k) + k * draft_cost)
with costs in target steps (k = 0: plain decoding, 1).

usage: speculative_projection.py TARGET_SPECULATE.json DRAFT_BENCH.json [alpha ...]
"""
import json
import sys


def main():
    spec = json.load(open(sys.argv[1]))
    draft = json.load(open(sys.argv[2]))
    alphas = [float(a) for a in sys.argv[3:]] or [0.5, 0.6, 0.7, 0.8, 0.9]
    step_s = spec[0]["step_ms"] / 1e3
    cost = {0: 1.0}
    for c in spec[0]["pass_cost"]:
        cost[c["k"]] = c["of_step"]
    d = (1.0 / max(r["decode_tps"] for r in draft)) / step_s
    print(f"target step {step_s * 1e3:.2f} ms ({spec[0]['desc']}, {spec[0]['cpu']}); "
          f"draft {d:.3f} steps per drafted token")
    print("| alpha | best k | tokens per pass | speedup with the draft model | speedup with a free drafter (lookup) |")
    print("| --- | --- | --- | --- | --- |")
    for a in alphas:
        def tokens(k):
            return (1 - a ** (k + 1)) / (1 - a) if a < 1 else k + 1
        best = max(cost, key=lambda k: tokens(k) / (cost[k] + k * d))
        free = max(tokens(k) / cost[k] for k in cost)
        print(f"| {a:.2f} | {best} | {tokens(best):.2f} | {tokens(best) / (cost[best] + best * d):.2f}x | {free:.2f}x |")


if __name__ == "__main__":
    main()
