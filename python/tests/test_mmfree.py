"""The Python bindings: the C++ path's results bit for bit, the API's shapes, states, threads,
interruption and errors. Run by CTest (python_tests) with PYTHONPATH=build/python."""
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import mmfree

DATA = os.environ.get("MMFREE_TEST_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data"))
MODEL = os.environ.get("MMFREE_MODEL", os.path.join(DATA, "..", "..", "models", "kjv-demo.gguf"))
CLI = os.environ.get("MMFREE_CLI")
TINY = os.path.join(DATA, "kjv-tiny")


@pytest.fixture(scope="module")
def model():
    return mmfree.Model(MODEL, threads=2)


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "I32": np.int32, "I64": np.int64}[t["dtype"]]
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(buf[8 + n + a:8 + n + b], dtype=dtype).reshape(t["shape"])
    return out


def test_logits_equal_the_cli_bit_for_bit(model, tmp_path):
    ids = model.tokenize("In the beginning God created the heaven and the earth.")
    logits = model.prefill(ids)
    assert logits.dtype == np.float32 and logits.shape == (len(ids), model.n_vocab())
    if CLI is None:
        pytest.skip("MMFREE_CLI not set")
    out = tmp_path / "l.safetensors"
    subprocess.run([CLI, "logits", "--ids", ",".join(map(str, ids)), "--out", str(out), "-t", "2"], check=True)
    ref = read_safetensors(out)
    assert np.array_equal(ref["input_ids"], np.array(ids, dtype=np.int32))
    assert np.array_equal(ref["logits"].view(np.uint32), logits.view(np.uint32))  # the same bits


def test_greedy_ids_are_the_goldens():
    # kjv-tiny's golden greedy continuation (from the authors' implementation).
    tiny = mmfree.Model(TINY, threads=1)
    golden = read_safetensors(os.path.join(TINY, "golden.safetensors"))
    want = [int(t) for t in golden["genesis.greedy_ids"]]
    out = tiny.create_completion([1, 1142, 333, 2693], max_tokens=len(want) - 4, temperature=0, stop_at_eos=False)
    assert tiny.tokenize(out["choices"][0]["text"], add_bos=False)  # some text came out
    ids = [1, 1142, 333, 2693]
    state = tiny.new_state()
    logits = tiny.prefill(ids, state, last_only=True)
    while len(ids) < len(want):
        ids.append(int(np.argmax(logits)))
        logits = tiny.step(ids[-1], state)
    assert ids == want


def test_prefill_step_and_step_batch_agree(model):
    ids = model.tokenize("And God said, Let there be light")
    all_rows = model.prefill(ids)
    s = model.new_state()
    for i, t in enumerate(ids):
        row = model.step(t, s)
        assert np.array_equal(row, all_rows[i])
    assert s.position == len(ids)
    # A batch of three sequences, one token each: the rows of each alone.
    states = [model.new_state() for _ in range(3)]
    alone = [model.new_state() for _ in range(3)]
    for step in range(4):
        batch_ids = [ids[(step + k) % len(ids)] for k in range(3)]
        rows = model.step_batch(batch_ids, states)
        assert rows.shape == (3, model.n_vocab())
        for k in range(3):
            assert np.array_equal(rows[k], model.step(batch_ids[k], alone[k]))


def test_prefill_states_rolls_back_exactly(model):
    # The verification pass: one pass's logits are prefill's, and the state after any token
    # continues exactly as a plain run to that token does.
    ids = model.tokenize("In the beginning God created the heaven and the earth")
    s = model.new_state()
    logits, after = model.prefill_states(ids, s)
    assert logits.shape == (len(ids), model.n_vocab())
    assert np.array_equal(logits, model.prefill(ids))
    assert len(after) == len(ids) and s.position == len(ids)
    nxt = model.tokenize(" light", add_bos=False)[0]
    for t in (0, len(ids) // 2, len(ids) - 1):
        assert after[t].position == t + 1
        plain = model.prefill(ids[: t + 1] + [nxt])
        assert np.array_equal(model.step(nxt, after[t].copy()), plain[-1])
    with pytest.raises(ValueError, match="no tokens"):
        model.prefill_states([], s)
    with pytest.raises(ValueError, match="out of range"):
        model.prefill_states([model.n_vocab()], s)


def test_interleaved_copies_change_no_bit(model):
    # The same logits with and without the interleaved copy, whichever kernels read it.
    ids = model.tokenize("And God said, Let there be light: and there was light")
    off = mmfree.Model(MODEL, threads=2, interleaved=False)
    on = mmfree.Model(MODEL, threads=2, interleaved=True)
    assert off.kernel_choice["interleaved_bytes"] == 0
    assert np.array_equal(off.prefill(ids), on.prefill(ids))
    a = [off.new_state() for _ in range(5)]
    b = [on.new_state() for _ in range(5)]
    assert np.array_equal(off.step_batch(ids[:5], a), on.step_batch(ids[:5], b))


def test_wide_copies_change_no_bit(model):
    # TQ1 with its wide copy read for prompts: the same logits; a TQ2 model takes none.
    ids = model.tokenize("And God said, Let there be light: and there was light, and it was good")
    plain = mmfree.Model(MODEL, threads=2, format="tq1", interleaved=False, wide=False)
    try:
        wide = mmfree.Model(MODEL, threads=2, format="tq1", wide=True,
                            kernels="avx512-vbmi,avx512-vbmi-interleaved,avx512-wide")
    except Exception as e:  # not an x86-64 build, or no AVX-512 VBMI here
        pytest.skip(f"no kernel reads wide copies on this CPU: {e}")
    assert plain.kernel_choice["wide_bytes"] == 0 and wide.kernel_choice["wide_bytes"] > 0
    assert wide.kernel_choice["prefill"] == "avx512-wide"
    assert np.array_equal(plain.prefill(ids), wide.prefill(ids))
    assert mmfree.Model(MODEL, threads=1, format="tq2", wide=True).kernel_choice["wide_bytes"] == 0


def test_completion_shape_and_streaming_equal_non_streaming(model):
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 7}):
        out = model.create_completion("In the beginning", max_tokens=24, **kw)
        assert out["object"] == "text_completion"
        c = out["choices"][0]
        assert c["finish_reason"] in ("length", "stop")
        assert out["usage"]["completion_tokens"] <= 24
        assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
        chunks = list(model.create_completion("In the beginning", max_tokens=24, stream=True, **kw))
        assert "".join(ch["choices"][0]["text"] for ch in chunks) == c["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == c["finish_reason"]
        assert model("In the beginning", max_tokens=24, **kw)["choices"][0]["text"] == c["text"]  # __call__


def test_same_text_as_the_cli(model):
    if CLI is None:
        pytest.skip("MMFREE_CLI not set")
    r = subprocess.run([CLI, "generate", "-m", MODEL, "-p", "And God said", "-n", "30", "--temperature", "1.1",
                        "--seed", "5", "--no-stats", "-t", "2"], check=True, capture_output=True, text=True)
    out = model.create_completion("And God said", max_tokens=30, temperature=1.1, seed=5)
    assert "And God said" + out["choices"][0]["text"] + "\n" == r.stdout


def test_stop_strings_end_the_text_and_are_not_included(model):
    full = model.create_completion("And God said", max_tokens=40, temperature=0)["choices"][0]["text"]
    word = full.split()[3]
    out = model.create_completion("And God said", max_tokens=40, temperature=0, stop=[word])
    assert out["choices"][0]["text"] == full[:full.index(word)]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_states_copy_pickle_and_save(model, tmp_path):
    s = model.new_state()
    model.prefill(model.tokenize("In the beginning God"), s)
    c = s.copy()
    p = pickle.loads(pickle.dumps(s))
    b = model.state_from_bytes(s.to_bytes())
    s.save(str(tmp_path / "s.state"))
    f = model.load_state(str(tmp_path / "s.state"))
    want = model.step(42, s)
    for other in (c, p, b, f):
        assert other.position == s.position - 1
        assert np.array_equal(model.step(42, other), want)
    with pytest.raises(ValueError, match="no model"):
        pickle.loads(pickle.dumps(c)).to_bytes()


def test_a_conversation_continues_in_a_state(model):
    s = model.new_state()
    a = model.create_completion("In the beginning", max_tokens=8, temperature=0, state=s)
    b = model.create_completion(" And God", max_tokens=8, temperature=0, state=s)
    whole = model.tokenize("In the beginning") + model.tokenize(a["choices"][0]["text"], add_bos=False)
    assert s.position >= len(whole)
    assert b["usage"]["prompt_tokens"] == len(model.tokenize(" And God", add_bos=False))


def test_speculative_decoding_gives_the_same_text(model):
    prompt = "In the beginning God created the heaven and the earth. In the beginning God"
    want = model.create_completion(prompt, max_tokens=40, temperature=0)["choices"][0]["text"]
    draft = mmfree.Model(TINY, share_threads_with=model)
    for kw in ({"lookup": 3}, {"draft_model": draft}, {"draft_model": draft, "draft_tokens": 3}):
        out = model.create_completion(prompt, max_tokens=40, temperature=0, **kw)
        assert out["choices"][0]["text"] == want
        assert out["timings"]["passes"] > 0


def test_json_schema_output_parses(model):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"]}
    for seed in range(5):
        out = model.create_completion("A person:", max_tokens=60, temperature=1.0, seed=seed, json_schema=schema)
        doc = json.loads(out["choices"][0]["text"])
        assert isinstance(doc["name"], str)


def test_the_gil_is_free_while_the_model_computes(model):
    # While one thread runs a long prefill, a Python loop in another keeps counting: the model
    # computes with the GIL released.
    ids = model.tokenize("And God said, Let there be light: and there was light. " * 60)
    counter = [0]
    busy = threading.Event()
    done = threading.Event()

    def count():
        busy.wait()
        while not done.is_set():
            counter[0] += 1

    t = threading.Thread(target=count)
    t.start()
    before = counter[0]
    busy.set()
    for _ in range(5):
        model.prefill(ids)
    during = counter[0] - before
    done.set()
    t.join()
    assert during > 1000


def test_threads_with_their_own_states_get_their_own_results(model):
    prompts = ["In the beginning", "And God said", "The LORD is my shepherd", "And it came to pass"]
    want = [model.create_completion(p, max_tokens=20, temperature=0)["choices"][0]["text"] for p in prompts]
    got = [None] * len(prompts)

    def run(i):
        got[i] = model.create_completion(prompts[i], max_tokens=20, temperature=0)["choices"][0]["text"]

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert got == want


def test_ctrl_c_stops_a_long_generation_cleanly():
    code = ("import mmfree, sys\n"
            f"m = mmfree.Model({MODEL!r}, threads=2)\n"
            "print('started', flush=True)\n"
            "try:\n"
            "    m.create_completion('In the beginning', max_tokens=10**6, temperature=1.0, stop_at_eos=False)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n"
            "    sys.exit(3)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ)
    assert p.stdout.readline().strip() == "started"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 3 and "interrupted" in out


def test_bad_input_raises_exceptions_naming_it(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="/nonexistent/model.gguf"):
        mmfree.Model("/nonexistent/model.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(open(MODEL, "rb").read()[:1000])
    with pytest.raises(ValueError, match="bad.gguf"):
        mmfree.Model(str(bad))
    with pytest.raises(ValueError, match="out of range"):
        model.prefill([1, model.n_vocab()])
    with pytest.raises(ValueError, match="out of range"):
        model.detokenize([-1])
    with pytest.raises(ValueError, match="does not belong"):
        model.step(1, mmfree.Model(TINY, threads=1).new_state())
    with pytest.raises(ValueError, match="2 ids for 1 states"):
        model.step_batch([1, 2], [model.new_state()])
    with pytest.raises(ValueError, match="temperature"):
        model.create_completion("x", temperature=-1)
    with pytest.raises(ValueError, match="prompt"):
        model.create_completion([], max_tokens=2)
    with pytest.raises(ValueError, match="json_schema|grammar"):
        model.create_completion("x", grammar="root ::= (")
    assert isinstance(mmfree.Error("x"), ValueError)


def test_logprobs_are_the_log_softmax_of_the_logits(model):
    out = model.create_completion("And God said", max_tokens=12, temperature=0, logprobs=3)
    lp = out["choices"][0]["logprobs"]
    ids = model.tokenize("And God said")
    rows = model.prefill(ids + lp["token_ids"])
    for i, (t, v) in enumerate(zip(lp["token_ids"], lp["token_logprobs"])):
        row = rows[len(ids) - 1 + i].astype(np.float64)
        want = row[t] - (row.max() + np.log(np.exp(row - row.max()).sum()))
        assert abs(v - want) < 1e-4
        assert len(lp["top_logprobs"][i]) <= 3 and max(lp["top_logprobs"][i].values()) >= v - 1e-9  # greedy: its own is the top
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    streamed = [c["choices"][0]["logprobs"] for c in model.create_completion("And God said", max_tokens=12, temperature=0,
                                                                            logprobs=3, stream=True)]
    assert [s["token_ids"][0] for s in streamed if s] == lp["token_ids"]
