"""mmfree: MatMul-free language models (Zhu et al., 2024; ``model_type: hgrn_bit``) on the CPU.

The habits of llama-cpp-python over the header-only C++ library::

    import mmfree
    model = mmfree.Model("models/kjv-demo.gguf")
    out = model("In the beginning", max_tokens=32, temperature=0)
    print(out["choices"][0]["text"])

    for chunk in model.create_completion("And God said", max_tokens=32, stream=True):
        print(chunk["choices"][0]["text"], end="", flush=True)

Low level: ``new_state()``, ``prefill``, ``step`` and ``step_batch`` return NumPy arrays (owning the
library's buffers, no copy); states copy, pickle, and save to bytes or files. The model computes
with the GIL released, so Python threads with their own states decode at once. Errors in input
are ``ValueError`` (``mmfree.Error``) naming the file or field; a missing file is
``FileNotFoundError``.
"""
import time
import uuid

from . import _mmfree
from ._mmfree import Error, State, __version__

__all__ = ["Model", "State", "Error", "__version__"]


class Model(_mmfree.Model):
    """A model and its tokenizer: ``Model(path, threads=None, kernels=None, format=None)``.

    ``path`` is a GGUF file or a Hugging Face directory; ``threads`` defaults to every core this
    process may use; ``kernels`` forces kernels by name (default: chosen by measuring on this CPU);
    ``format`` is the ternary layout held in memory ("tq2" or "tq1"; default: the file's).
    ``share_threads_with`` (another Model) runs this one on that model's threads: a draft model
    and its target are used in turn.
    """

    def create_completion(self, prompt, max_tokens=16, temperature=0.8, top_p=0.95, top_k=40, min_p=0.05,
                          repeat_penalty=1.0, seed=None, stop=None, stream=False, presence_penalty=0.0,
                          frequency_penalty=0.0, logit_bias=None, repeat_last_n=64, grammar=None, json_schema=None,
                          draft_model=None, lookup=None, draft_tokens=8, state=None, stop_at_eos=True, add_bos=None,
                          logprobs=None):
        """An OpenAI-shaped completion (a dict), or with ``stream=True`` an iterator of chunks.

        ``prompt`` is text or a list of token ids. ``stop``: a string or strings that end the text
        (not included). ``grammar`` (GBNF) or ``json_schema`` (a dict or JSON text) restrict the
        output. ``draft_model`` (a smaller Model of the same vocabulary) or ``lookup`` (n-gram
        length) decode speculatively: the same output, faster when the drafts are right.
        ``state``: continue a conversation held in a State (it reads the prompt and every token
        returned; without one, each call starts afresh). ``seed`` None draws one at random.
        ``logprobs`` (0-20): OpenAI's logprobs object for the generated tokens (log-softmax of
        the model's raw logits, with that many alternatives), plus ``token_ids``.
        """
        if isinstance(prompt, (str, bytes)):
            ids = self.tokenize(prompt, add_bos=(state is None or state.position == 0) if add_bos is None else add_bos)
        else:
            ids = [int(t) for t in prompt]
        if isinstance(stop, (str, bytes)):
            stop = [stop]
        stop = [s.decode() if isinstance(s, bytes) else str(s) for s in (stop or [])]
        if json_schema is not None and not isinstance(json_schema, (str, bytes)):
            import json
            json_schema = json.dumps(json_schema)
        if seed is None or seed < 0:
            seed = uuid.uuid4().int & ((1 << 63) - 1)
        gen = _mmfree.Generation(self, ids, int(max_tokens), float(temperature), int(top_k), float(top_p), float(min_p),
                                 float(repeat_penalty), int(repeat_last_n), int(seed), float(presence_penalty),
                                 float(frequency_penalty), {int(k): float(v) for k, v in (logit_bias or {}).items()},
                                 stop, bool(stop_at_eos), grammar, json_schema, draft_model, int(lookup or 0),
                                 int(draft_tokens), state, -1 if logprobs is None else int(logprobs))
        cid = "cmpl-" + uuid.uuid4().hex
        created = int(time.time())
        if stream:
            return self._stream(gen, cid, created, logprobs is not None)
        pieces = []
        lp = _Logprobs(self) if logprobs is not None else None
        try:
            for item in gen.all():
                pieces.append(item[1])
                if lp is not None:
                    lp.add(item)
        finally:
            gen.cancel()
        st = gen.stats()
        text = b"".join(pieces).decode("utf-8", errors="replace")
        return {
            "id": cid, "object": "text_completion", "created": created, "model": self.path,
            "choices": [{"text": text, "index": 0, "logprobs": lp.result(len(text)) if lp is not None else None,
                         "finish_reason": st["finish_reason"]}],
            "usage": {"prompt_tokens": st["prompt_tokens"], "completion_tokens": st["completion_tokens"],
                      "total_tokens": st["prompt_tokens"] + st["completion_tokens"]},
            "timings": st,
        }

    def _stream(self, gen, cid, created, want_logprobs):
        def chunk(text, finish, lp=None):
            return {"id": cid, "object": "text_completion", "created": created, "model": self.path,
                    "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}]}
        offset = 0
        try:
            while (item := gen.next()) is not None:
                if want_logprobs and item[0] >= 0:  # one chunk per token, with its log-probability
                    one = _Logprobs(self)
                    one.add(item, offset)
                    text = item[1].decode("utf-8", errors="replace")
                    yield chunk(text, None, one.result(None))
                    offset += len(text)
                elif item[1]:
                    yield chunk(item[1].decode("utf-8", errors="replace"), None)  # whole characters only
            yield chunk("", gen.stats()["finish_reason"])
        finally:
            gen.cancel()  # the consumer stopped early (break, close, Ctrl-C): the generation ends

    __call__ = create_completion


class _Logprobs:
    """OpenAI's completion logprobs object, built token by token."""

    def __init__(self, model):
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset, self.token_ids = [], [], [], [], []
        self.model = model
        self.offset = 0

    def add(self, item, offset=None):
        token_id, _, piece, lp = item
        if token_id < 0 or lp is None:
            return
        text = piece.decode("utf-8", errors="replace")
        self.tokens.append(text)
        self.token_ids.append(token_id)
        self.token_logprobs.append(lp[0])
        self.top_logprobs.append({self.model.detokenize([t]).decode("utf-8", errors="replace"): v for t, v in lp[1]})
        self.text_offset.append(self.offset if offset is None else offset)
        self.offset += len(text)

    def result(self, text_length):
        n = len(self.tokens)
        if text_length is not None:  # tokens cut by a stop string are not part of the text
            while n and self.text_offset[n - 1] >= text_length:
                n -= 1
        return {"tokens": self.tokens[:n], "token_logprobs": self.token_logprobs[:n], "top_logprobs": self.top_logprobs[:n],
                "text_offset": self.text_offset[:n], "token_ids": self.token_ids[:n]}
