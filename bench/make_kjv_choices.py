#!/usr/bin/env python3
"""A multiple-choice set from held-out KJV text (tests/data/kjv-val.txt, which no model saw in
training): the first 8 words of a sentence as the context, its next 6 words as the right choice,
and the same 6 words' place in 3 other sentences as the wrong ones. JSONL, one item a line:
{"context": ..., "choices": [...], "answer": index}. Deterministic (seed 1).

    python3 bench/make_kjv_choices.py tests/data/kjv-val.txt 300 > tests/data/kjv-choices.jsonl
"""
import json
import random
import re
import sys

path, count = sys.argv[1], int(sys.argv[2])
text = open(path, encoding="utf-8").read()
chapters = [c.split("\n", 1)[1] for c in text.split("\n\n") if "\n" in c]
sentences = []
for ch in chapters:
    for s in re.split(r"(?<=[.;:?!])\s+", ch.replace("\n", " ")):
        words = s.split()
        if len(words) >= 14:
            sentences.append(words)
rng = random.Random(1)
rng.shuffle(sentences)
items, used = [], 0
for words in sentences:
    if len(items) == count:
        break
    context, right = " ".join(words[:8]), " " + " ".join(words[8:14])
    others = set()
    while len(others) < 3:
        o = rng.choice(sentences)
        cand = " " + " ".join(o[8:14])
        if cand != right:
            others.add(cand)
    choices = [right] + sorted(others)
    rng.shuffle(choices)
    items.append({"context": context, "choices": choices, "answer": choices.index(right)})
for it in items:
    print(json.dumps(it, ensure_ascii=False))
