// Sessions on `mmfree-cli serve` ("session": ID): a conversation continues from its saved state
// without re-reading it, survives kill -9 with --state-dir, and is never used by two requests at
// once. Run by CTest: node --test serve_sessions.test.mjs (MMFREE_CLI in the environment).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { cli, serve } from "./serve_helper.mjs";

const kill9 = (s) => new Promise((ok) => { s.proc.removeAllListeners("exit"); s.proc.on("exit", ok); s.proc.kill("SIGKILL"); });

async function complete(url, body) {
  const r = await fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify({ temperature: 0, return_tokens: true, ...body }) });
  const json = await r.json();
  return { status: r.status, json };
}

test("a session continues exactly after kill -9 and a restart on the same --state-dir", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mmfree-sessions-"));
  try {
    const A = [1, 1142, 333], B = [2693, 464];
    let s = await serve(["--state-dir", dir]);
    const r1 = await complete(s.url, { prompt: A, max_tokens: 8, session: "conv-1" });
    assert.equal(r1.status, 200);
    assert.equal(r1.json.session_position, A.length + 8);
    assert.deepEqual(readdirSync(dir), ["conv-1.state"]);  // no temporary files left
    await kill9(s);
    s = await serve(["--state-dir", dir]);
    try {
      const r2 = await complete(s.url, { prompt: B, max_tokens: 8, session: "conv-1" });
      assert.equal(r2.status, 200);
      assert.equal(r2.json.session_position, A.length + 8 + B.length + 8);
      // The same as one uninterrupted greedy run over A, its 8 tokens, and B.
      const whole = await complete(s.url, { prompt: [...A, ...r1.json.tokens, ...B], max_tokens: 8 });
      assert.deepEqual(r2.json.tokens, whole.json.tokens);
      // Streamed continuation of the same session continues where r2 ended.
      const r3 = await complete(s.url, { prompt: [5], max_tokens: 4, session: "conv-1" });
      const ref = await complete(s.url, { prompt: [...A, ...r1.json.tokens, ...B, ...r2.json.tokens, 5], max_tokens: 4 });
      assert.deepEqual(r3.json.tokens, ref.json.tokens);
    } finally {
      s.proc.kill("SIGTERM");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("text sessions continue without BOS; two requests on one session: the second gets 409", async () => {
  const s = await serve([]);
  try {
    const t1 = await complete(s.url, { prompt: "In the beginning", max_tokens: 6, session: "t" });
    const t2 = await complete(s.url, { prompt: "And God said", max_tokens: 6, session: "t" });
    const tok = async (content, add_special) =>
      (await (await fetch(`${s.url}/tokenize`, { method: "POST", body: JSON.stringify({ content, add_special }) })).json()).tokens;
    const ids = [...(await tok("In the beginning", true)), ...t1.json.tokens, ...(await tok("And God said", false))];
    const ref = await complete(s.url, { prompt: ids, max_tokens: 6 });
    assert.deepEqual(t2.json.tokens, ref.json.tokens);
    assert.equal(t2.json.session_position, ids.length + 6);
    // Two at once: one is served, the other refused (the state is never interleaved).
    const both = await Promise.all([0, 1].map(() => complete(s.url, { prompt: [5], max_tokens: 200, session: "busy" })));
    assert.deepEqual(both.map((r) => r.status).sort(), [200, 409]);
    assert.match(both.find((r) => r.status === 409).json.error.message, /in use by another request/);
    for (const bad of ["", "../x", "a/b", "x".repeat(200), ".hidden", 5])
      assert.equal((await complete(s.url, { prompt: [5], max_tokens: 1, session: bad })).status, 400, String(bad));
  } finally {
    s.proc.kill("SIGTERM");
  }
});

test("with --sessions-memory, 2,000 sessions work: the least recently used wait on disk and continue exactly", { timeout: 240000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mmfree-sessions-"));
  const s = await serve(["--state-dir", dir, "--sessions-memory", "1"]);
  try {
    const N = 2000, first = new Map();
    for (let k = 0; k < N; k += 16)
      await Promise.all(Array.from({ length: 16 }, async (_, j) => {
        const id = `s${k + j}`;
        const r = await complete(s.url, { prompt: [1, 1 + ((k + j) * 37) % 4000], max_tokens: 1, session: id });
        assert.equal(r.status, 200);
        first.set(id, r.json.tokens);
      }));
    const m = await (await fetch(`${s.url}/metrics`)).text();
    const inMemory = Number(/^mmfree_sessions_in_memory (\S+)$/m.exec(m)[1]);
    const evicted = Number(/^mmfree_sessions_evicted_total (\S+)$/m.exec(m)[1]);
    assert.ok(inMemory <= 120 && inMemory > 50, `${inMemory} in memory`);  // 1 MiB of 9 KB states
    assert.ok(evicted >= N - 120, `${evicted} evicted`);
    assert.equal(readdirSync(dir).length, N);
    for (const k of [0, 1, 7, 500, 1999]) {  // the oldest are on disk only
      const id = `s${k}`;
      const r = await complete(s.url, { prompt: [5], max_tokens: 3, session: id });
      const ref = await complete(s.url, { prompt: [1, 1 + (k * 37) % 4000, ...first.get(id), 5], max_tokens: 3 });
      assert.deepEqual(r.json.tokens, ref.json.tokens, id);
      assert.equal(r.json.session_position, 2 + 1 + 1 + 3);
    }
  } finally {
    s.proc.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  }
});
