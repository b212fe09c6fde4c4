#!/usr/bin/env python3
"""The Python bindings' cost and concurrency, each against its baseline in the same run.

1. Overhead: decode tokens/s of a streamed create_completion (timed in Python, from the first
   chunk to the last) against `mmfree-cli generate` on the same model, prompt and token count.
2. Threads: two Python threads, each decoding its own sequence on a 1-thread model, against one
   thread decoding both one after the other.

usage: PYTHONPATH=build/python bench/python_bench.py MODEL.gguf [MMFREE_CLI] [-n 128] [-r 3]
"""
import argparse
import re
import statistics
import subprocess
import threading
import time

import mmfree


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("cli", nargs="?", default="build/cli/mmfree-cli")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", type=int, default=2)
    a = ap.parse_args()

    m = mmfree.Model(a.model, threads=a.t)
    prompt = [1] + [1 + (i * 7919) % (m.n_vocab() - 1) for i in range(31)]
    ids = ",".join(map(str, prompt))
    py, cli, whole = [], [], []
    for _ in range(a.r):
        times = []
        for ch in m.create_completion(prompt, max_tokens=a.n, temperature=0, stop_at_eos=False, stream=True):
            times.append(time.perf_counter())
        py.append((a.n - 1) / (times[-2] - times[0]))  # the last chunk only carries finish_reason
        r = subprocess.run([a.cli, "generate", "-m", a.model, "--ids", ids, "-n", str(a.n), "--temperature", "0",
                            "--print-ids", "-t", str(a.t)], capture_output=True, text=True, check=True)
        cli.append(float(re.search(r"decode ([0-9.]+) tok/s", r.stderr).group(1)))
        t0 = time.perf_counter()
        out = m.create_completion(prompt, max_tokens=a.n, temperature=0, stop_at_eos=False)
        wall = time.perf_counter() - t0
        t = out["timings"]
        whole.append(wall / (t["time_to_first_token"] + t["decode_seconds"]))
    p, c, w = statistics.median(py), statistics.median(cli), statistics.median(whole)
    print(f"decode, {a.n} tokens, {a.t} threads: streamed to Python {p:.1f} tok/s, CLI {c:.1f} tok/s: "
          f"Python-side overhead {100 * (c / p - 1):+.1f}%; a whole create_completion takes {100 * (w - 1):+.1f}% "
          f"over the library's own time for it")

    one = mmfree.Model(a.model, threads=1)

    def decode(n):
        s = one.new_state()
        one.prefill(prompt, s)
        for _ in range(n):
            one.step(5, s)

    k = max(16, a.n // 2)
    serial, parallel = [], []
    for _ in range(a.r):
        t0 = time.perf_counter()
        decode(k)
        decode(k)
        serial.append(time.perf_counter() - t0)
        ts = [threading.Thread(target=decode, args=(k,)) for _ in range(2)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        parallel.append(time.perf_counter() - t0)
    s, q = statistics.median(serial), statistics.median(parallel)
    print(f"two sequences of {k} tokens on a 1-thread model: one Python thread {s:.2f} s, two threads {q:.2f} s "
          f"({s / q:.2f}x)")


if __name__ == "__main__":
    main()
