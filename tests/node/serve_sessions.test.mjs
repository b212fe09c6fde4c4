// Sessions on `mmfree-cli serve` ("session": ID): a conversation continues from its saved state
// without re-reading it, survives kill -9 with --state-dir, and is never used by two requests at
// once. Run by CTest: node --test serve_sessions.test.mjs (MMFREE_CLI in the environment).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { spawn } from "node:child_process";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { cli, serve, stop } from "./serve_helper.mjs";

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
    // The session, and the prefix cache's folders; no temporary files left.
    assert.deepEqual(readdirSync(dir).sort(), ["alias", "conv-1.state", "prefix"]);
    assert.ok(readdirSync(join(dir, "prefix")).every((f) => !f.startsWith(".")));
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
      await stop(s.proc);
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
    await stop(s.proc);
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
    assert.equal(readdirSync(dir).filter((f) => f.endsWith(".state")).length, N);
    for (const k of [0, 1, 7, 500, 1999]) {  // the oldest are on disk only
      const id = `s${k}`;
      const r = await complete(s.url, { prompt: [5], max_tokens: 3, session: id });
      const ref = await complete(s.url, { prompt: [1, 1 + (k * 37) % 4000, ...first.get(id), 5], max_tokens: 3 });
      assert.deepEqual(r.json.tokens, ref.json.tokens, id);
      assert.equal(r.json.session_position, 2 + 1 + 1 + 3);
    }
  } finally {
    await stop(s.proc);
    rmSync(dir, { recursive: true, force: true });
  }
});

// One streamed request on a session: the tokens received, and the position the server reported
// at the end (undefined when the stream broke off).
async function streamed(url, session, prompt, n) {
  const tokens = [];
  let position;
  try {
    const r = await fetch(`${url}/v1/completions`, { method: "POST",
      body: JSON.stringify({ prompt, max_tokens: n, temperature: 0, stream: true, return_tokens: true, session }) });
    if (r.status !== 200) return { tokens, status: r.status };
    const text = await r.text();
    for (const ev of text.split("\n\n")) {
      if (!ev.startsWith("data: {")) continue;
      const j = JSON.parse(ev.slice(6));
      if (j.tokens) tokens.push(...j.tokens);
      if (j.session_position !== undefined) position = j.session_position;
    }
  } catch {}
  return { tokens, position };
}

test("kill -9 at random moments during 50 streamed requests over 10 sessions: every session continues from its last persisted point", { timeout: 240000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mmfree-crash-"));
  let s = await serve(["--state-dir", dir]);
  try {
    const K = 10;
    const hist = Array.from({ length: K }, () => []);  // what each session has read, as far as we know
    const pending = Array(K).fill(null);                // a request cut off by a kill: persisted or not
    const greedy = async (ids, n) => (await complete(s.url, { prompt: ids, max_tokens: n })).json.tokens ?? [];
    let requests = 0, kills = 0, round = 0, cut = 0, persisted = 0;
    while (requests < 50) {
      round++;
      const kill = round % 2 === 0;  // every other wave is cut off by kill -9 at a random moment
      const wave = Array.from({ length: K }, async (_, k) => {
        const prompt = [1 + ((round * 31 + k * 17) % 4000)], n = 6 + ((round + k) % 7);
        const r = await streamed(s.url, `c${k}`, prompt, n);
        return { k, prompt, n, r };
      });
      if (kill) setTimeout(() => s.proc.kill("SIGKILL"), 5 + Math.floor(Math.random() * 60));
      const results = await Promise.all(wave);
      requests += K;
      if (kill) {
        await new Promise((ok) => (s.proc.exitCode !== null || s.proc.signalCode !== null ? ok() : s.proc.on("exit", ok)));
        kills++;
        s = await serve(["--state-dir", dir]);
      }
      for (const { k, prompt, n, r } of results) {
        // The session's position before this request: resolve an earlier cut-off request first.
        if (r.position === undefined) {
          cut++;
          if (pending[k] === null) pending[k] = { prompt, n };  // else: still unknown, an older one pending
          else pending[k] = { prompt, n, after: pending[k] };
          continue;
        }
        let base = hist[k];
        // Unknown requests before this one: each either persisted or not; the position decides.
        const chain = [];
        for (let p = pending[k]; p; p = p.after) chain.unshift(p);
        const options = [[...base]];
        for (const p of chain) {
          const next = [];
          for (const h of options) {
            next.push(h);
            const t = await greedy([...h, ...p.prompt], p.n);
            next.push([...h, ...p.prompt, ...t]);
          }
          options.splice(0, options.length, ...next);
        }
        const before = r.position - prompt.length - r.tokens.length;
        const h = options.find((o) => o.length === before);
        assert.ok(h, `session c${k}: position ${r.position} matches no persisted point`);
        persisted += chain.length ? (h.length > base.length ? 1 : 0) : 0;
        assert.deepEqual(r.tokens, await greedy([...h, ...prompt], n), `session c${k} after ${kills} kills`);
        hist[k] = [...h, ...prompt, ...r.tokens];
        pending[k] = null;
      }
    }
    // Every state file is whole: each session continues once more, exactly.
    for (let k = 0; k < K; k++) {
      const r = await streamed(s.url, `c${k}`, [5], 4);
      assert.ok(r.position !== undefined, `session c${k} did not continue`);
      const before = r.position - 1 - r.tokens.length;
      if (pending[k] === null) assert.equal(before, hist[k].length);
    }
    console.log(`${kills} kills, ${cut} streams cut off (${persisted} of them had been persisted before the kill)`);
    assert.ok(kills >= 2);
    // Sessions and the prefix cache's folders; no temporary files.
    assert.ok(readdirSync(dir).every((f) => f.endsWith(".state") || f === "prefix" || f === "alias"), readdirSync(dir).join(" "));
  } finally {
    await stop(s.proc);
    rmSync(dir, { recursive: true, force: true });
  }
});

// A free TCP port on 127.0.0.1 (for redis-server, which cannot pick one itself).
const freePort = () => new Promise((ok) => {
  const srv = net.createServer().listen(0, "127.0.0.1", () => { const p = srv.address().port; srv.close(() => ok(p)); });
});

test("two replicas sharing Redis: a session begun on one continues on the other with identical ids", { timeout: 120000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mmfree-redis-"));
  const port = await freePort();
  const redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
                      { stdio: ["ignore", "pipe", "pipe"] });
  try {
    await new Promise((ok, fail) => {
      let out = "";
      redis.stdout.on("data", (d) => { out += d; if (/Ready to accept connections/.test(out)) ok(); });
      redis.on("exit", (c) => fail(new Error(`redis-server exited (${c}): ${out}`)));
    });
    const store = ["--session-store", `redis://127.0.0.1:${port}`];
    const [a, b] = await Promise.all([serve(store), serve(store)]);
    try {
      const A = [1, 1142, 333], B = [2693, 464], C = [5];
      const r1 = await complete(a.url, { prompt: A, max_tokens: 8, session: "shared" });
      const r2 = await complete(b.url, { prompt: B, max_tokens: 8, session: "shared" });
      const r3 = await complete(a.url, { prompt: C, max_tokens: 5, session: "shared" });
      assert.equal(r3.json.session_position, A.length + 8 + B.length + 8 + C.length + 5);
      const whole = await complete(b.url, { prompt: [...A, ...r1.json.tokens, ...B], max_tokens: 8 });
      assert.deepEqual(r2.json.tokens, whole.json.tokens);
      const whole3 = await complete(a.url, { prompt: [...A, ...r1.json.tokens, ...B, ...r2.json.tokens, ...C], max_tokens: 5 });
      assert.deepEqual(r3.json.tokens, whole3.json.tokens);
      // One session, two replicas at once: one is served, the other gets 409.
      const both = await Promise.all([a, b].map((s) => complete(s.url, { prompt: [5], max_tokens: 200, session: "race" })));
      assert.deepEqual(both.map((r) => r.status).sort(), [200, 409]);
    } finally {
      await Promise.all([stop(a.proc), stop(b.proc)]);
    }
  } finally {
    await stop(redis);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("--persist-every: a stream killed in mid-flight continues from its last persisted token", { timeout: 120000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mmfree-midstream-"));
  let s = await serve(["--state-dir", dir, "--persist-every", "4"]);
  try {
    const A = [1, 1142, 333];
    const got = [];
    const r = await fetch(`${s.url}/v1/completions`, { method: "POST",
      body: JSON.stringify({ prompt: A, max_tokens: 4000, temperature: 0, stream: true, return_tokens: true, session: "m" }) });
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of r.body) {
      buf += dec.decode(chunk, { stream: true });
      for (const m of buf.matchAll(/"tokens":\[([0-9,]*)\]/g)) if (m[1]) got.push(...m[1].split(",").map(Number));
      buf = buf.slice(buf.lastIndexOf("\n\n") + 2);
      if (got.length >= 40) break;
    }
    await new Promise((ok) => { s.proc.removeAllListeners("exit"); s.proc.on("exit", ok); s.proc.kill("SIGKILL"); });
    s = await serve(["--state-dir", dir]);
    const c = await complete(s.url, { prompt: [5], max_tokens: 6, session: "m" });
    const k = c.json.session_position - 1 - 6 - A.length;  // tokens of the killed stream the state had read
    assert.ok(k >= 4 && k % 4 === 0, `persisted after ${k} tokens`);
    const ref = await complete(s.url, { prompt: [...A, ...(await complete(s.url, { prompt: A, max_tokens: k })).json.tokens, 5], max_tokens: 6 });
    assert.deepEqual(c.json.tokens, ref.json.tokens);
    console.log(`killed after ${got.length} tokens received; the session continued from token ${k}`);
  } finally {
    await stop(s.proc);
    rmSync(dir, { recursive: true, force: true });
  }
});
