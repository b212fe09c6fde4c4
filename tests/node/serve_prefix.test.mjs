// The prefix cache and the state API of `mmfree-cli serve`: prompts that share a beginning read
// it once, results are the same with and without the cache, completions can be continued and
// branched from ("continue_from"), the cache survives kill -9 on --state-dir without ever using a
// corrupt entry, and replicas behind nginx (round robin) share it through Redis.
// Run by CTest: node --test serve_prefix.test.mjs (MMFREE_CLI in the environment).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawn, spawnSync } from "node:child_process";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { serve } from "./serve_helper.mjs";

const kill9 = (s) => new Promise((ok) => { s.proc.removeAllListeners("exit"); s.proc.on("exit", ok); s.proc.kill("SIGKILL"); });
const stop = (s) => new Promise((ok) => { s.proc.removeAllListeners("exit"); s.proc.on("exit", ok); s.proc.kill("SIGTERM"); });

async function complete(url, body) {
  const r = await fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify({ temperature: 0, return_tokens: true, ...body }) });
  return { status: r.status, json: await r.json() };
}
async function metrics(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = {};
  for (const line of text.split("\n")) if (line && !line.startsWith("#")) { const [k, v] = line.split(" "); m[k] = Number(v); }
  return m;
}
const cached = (r) => r.json.usage.prompt_tokens_details.cached_tokens;

// A document of `n` token ids (deterministic, within the bundled model's 4096), after BOS.
const doc = (n, seed = 1) => [1, ...Array.from({ length: n - 1 }, (_, i) => 3 + ((i * 7919 + seed * 104729) % 4000))];
// Prompts sharing doc's first `shared` ids, then their own.
const branch = (shared, tail, k) => [...doc(700).slice(0, shared), ...doc(tail + 1, 1000 + k).slice(1)];

test("shared beginnings are read once, wherever they end; outputs are identical to a server without the cache", { timeout: 240000 }, async () => {
  const [s, plain] = await Promise.all([serve(["--prefix-interval", "128"]), serve(["--prefix-cache", "0"])]);
  try {
    // Groups of requests sharing the first L ids of one document, L anywhere (not at a checkpoint).
    let k = 0, saved = 0;
    for (const L of [300, 77, 523, 301, 5]) {
      const results = [];
      for (let j = 0; j < 4; ++j) {
        const prompt = branch(L, 20 + j, ++k);
        const body = { prompt, max_tokens: 6, temperature: 0.9, seed: k };
        const [r, ref] = await Promise.all([complete(s.url, body), complete(plain.url, body)]);
        assert.equal(r.status, 200);
        assert.deepEqual(r.json.tokens, ref.json.tokens, `prompt ${k}: the cache changed the output`);
        assert.equal(cached(ref), 0);
        results.push(r);
        saved += cached(r);
      }
      // The second request of a group starts at most half its shared part (and at most the
      // interval) before the point of parting; from the third on, exactly there.
      assert.ok(cached(results[1]) >= Math.min(L / 2, L - 128), `L=${L}: second request cached ${cached(results[1])}`);
      for (const r of results.slice(2)) assert.equal(cached(r), L, `L=${L}`);
    }
    // The same prompt again reads only its last token.
    const again = await complete(s.url, { prompt: branch(300, 20, 1), max_tokens: 6, temperature: 0.9, seed: 1 });
    assert.equal(cached(again), branch(300, 20, 1).length - 1);
    saved += cached(again);
    const m = await metrics(s.url);
    assert.equal(m.mmfree_prefix_cache_misses_total, 1, "only the very first request misses");
    assert.equal(m.mmfree_prefix_cache_hits_total, 20);
    assert.equal(m.mmfree_prefix_cache_tokens_saved_total, saved);
    assert.ok(saved > 4000, `${saved} tokens not read again`);
    assert.ok(m.mmfree_prefix_cache_bytes > 0 && m.mmfree_prefix_cache_entries > 0);
    // Text prompts too: the usage says what was not read again.
    const t = "In the beginning God created the heaven and the earth. And the earth was without form, and void.";
    const t1 = await complete(s.url, { prompt: t + " And God said", max_tokens: 4 });
    const t2 = await complete(s.url, { prompt: t + " And the Spirit", max_tokens: 4 });
    const t2ref = await complete(plain.url, { prompt: t + " And the Spirit", max_tokens: 4 });
    assert.ok(cached(t1) <= 1);  // BOS at most (every document above begins with it)
    assert.ok(cached(t2) > 10);
    assert.equal(t2.json.choices[0].text, t2ref.json.choices[0].text);
  } finally {
    await Promise.all([stop(s), stop(plain)]);
  }
});

test("continue_from: a completion continues or branches exactly; 404 once evicted", { timeout: 120000 }, async () => {
  const s = await serve(["--prefix-cache", "1"]);  // 1 MiB: a few dozen kjv-demo states
  try {
    const A = doc(40);
    const r1 = await complete(s.url, { prompt: A, max_tokens: 8 });
    assert.match(r1.json.id, /^cmpl-[0-9a-f]{16}$/);
    // Two branches from one state at once, each equal to reading everything from the start.
    const B = [2693, 464], C = [5, 6, 7];
    const [b, c] = await Promise.all([
      complete(s.url, { prompt: B, max_tokens: 8, continue_from: r1.json.id }),
      complete(s.url, { prompt: C, max_tokens: 8, continue_from: r1.json.id }),
    ]);
    for (const [r, P] of [[b, B], [c, C]]) {
      assert.equal(r.status, 200);
      assert.equal(r.json.usage.prompt_tokens, A.length + 8 + P.length);
      assert.equal(cached(r), A.length + 8);
      const ref = await complete(s.url, { prompt: [...A, ...r1.json.tokens, ...P], max_tokens: 8, temperature: 0.9, seed: 3 });
      const same = await complete(s.url, { prompt: P, max_tokens: 8, temperature: 0.9, seed: 3, continue_from: r1.json.id });
      assert.deepEqual(same.json.tokens, ref.json.tokens);
      const greedy = await complete(s.url, { prompt: [...A, ...r1.json.tokens, ...P], max_tokens: 8 });
      assert.deepEqual(r.json.tokens, greedy.json.tokens);
    }
    // A chain: continue the continuation (streamed: its id is the one the chunks carry).
    const sse = await fetch(`${s.url}/v1/completions`, {
      method: "POST", body: JSON.stringify({ prompt: [9], max_tokens: 4, temperature: 0, stream: true, return_tokens: true, continue_from: b.json.id }),
    });
    const events = (await sse.text()).split("\n\n").filter((e) => e.startsWith("data: {")).map((e) => JSON.parse(e.slice(6)));
    const streamed = events.flatMap((e) => e.tokens ?? []);
    const chainRef = await complete(s.url, { prompt: [...A, ...r1.json.tokens, ...B, ...b.json.tokens, 9], max_tokens: 4 });
    assert.deepEqual(streamed, chainRef.json.tokens);
    const d = await complete(s.url, { prompt: [11], max_tokens: 3, continue_from: events[0].id });
    assert.equal(d.status, 200);
    assert.equal(cached(d), A.length + 8 + B.length + 8 + 1 + 4);
    // Unknown ids and bad requests.
    const unknown = await complete(s.url, { prompt: [5], max_tokens: 2, continue_from: "cmpl-0123456789abcdef" });
    assert.equal(unknown.status, 404);
    assert.match(unknown.json.error.message, /not held/);
    assert.equal((await complete(s.url, { prompt: [5], continue_from: "x" })).status, 400);
    assert.equal((await complete(s.url, { prompt: [5], continue_from: r1.json.id, session: "s" })).status, 400);
    // Enough other completions push r1 out of 1 MiB: then 404, with a clear message.
    for (let k = 0; k < 60; ++k) await complete(s.url, { prompt: doc(30, 50 + k), max_tokens: 2 });
    const gone = await complete(s.url, { prompt: B, max_tokens: 2, continue_from: r1.json.id });
    assert.equal(gone.status, 404);
    assert.match(gone.json.error.message, /evicted/);
    const m = await metrics(s.url);
    assert.ok(m.mmfree_prefix_cache_evicted_total > 0);
    assert.ok(m.mmfree_prefix_cache_bytes <= 1 << 20, `${m.mmfree_prefix_cache_bytes} bytes held under a 1 MiB cap`);
  } finally {
    await stop(s);
  }
});

test("kill -9 under a shared-prefix load: after a restart hits continue and a corrupt entry is never used", { timeout: 180000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mmfree-prefix-"));
  try {
    let s = await serve(["--state-dir", dir]);
    const first = await complete(s.url, { prompt: branch(400, 10, 0), max_tokens: 4 });
    assert.equal(first.status, 200);
    // Keep requests coming and kill the server in the middle of them.
    const load = Array.from({ length: 12 }, (_, k) => complete(s.url, { prompt: branch(400, 10, k + 1), max_tokens: 4 }).catch(() => null));
    await new Promise((ok) => setTimeout(ok, 300));
    await kill9(s);
    await Promise.all(load);
    const files = readdirSync(join(dir, "prefix")).filter((f) => f.endsWith(".prefix"));
    assert.ok(files.length > 3, `${files.length} entries on disk`);
    // Corrupt one entry: a flipped byte in its state.
    const victim = join(dir, "prefix", files[0]);
    const bytes = readFileSync(victim);
    bytes[bytes.length - 100] ^= 0x55;
    writeFileSync(victim, bytes);
    s = await serve(["--state-dir", dir]);
    try {
      const m0 = await metrics(s.url);
      assert.equal(m0.mmfree_prefix_cache_rejected_total, 1, "the corrupt entry is refused at start");
      assert.ok(!readdirSync(join(dir, "prefix")).includes(files[0]), "and removed");
      assert.ok(readdirSync(join(dir, "prefix")).every((f) => !f.startsWith(".")), "no temporary files survive a restart");
      const plain = await serve(["--prefix-cache", "0"]);
      try {
        for (let k = 20; k < 24; ++k) {
          const body = { prompt: branch(400, 10, k), max_tokens: 6 };
          const [r, ref] = await Promise.all([complete(s.url, body), complete(plain.url, body)]);
          assert.ok(cached(r) >= 256, `request ${k} after the restart: ${cached(r)} cached`);
          assert.deepEqual(r.json.tokens, ref.json.tokens);
        }
      } finally {
        await stop(plain);
      }
      const m = await metrics(s.url);
      assert.equal(m.mmfree_prefix_cache_misses_total, 0);
    } finally {
      await stop(s);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// A free TCP port on 127.0.0.1 (for redis-server and nginx, which cannot pick one themselves).
const freePort = () => new Promise((ok) => {
  const srv = net.createServer().listen(0, "127.0.0.1", () => { const p = srv.address().port; srv.close(() => ok(p)); });
});
// A replica writes its entries to Redis in the background, within milliseconds of making them:
// give them that long before the next request (it may land on the other replica).
const settle = () => new Promise((ok) => setTimeout(ok, 100));
const nginx = spawnSync("sh", ["-c", "command -v nginx || ls /usr/sbin/nginx"], { encoding: "utf8" }).stdout.trim().split("\n")[0];

test("two replicas behind nginx (round robin) share the prefix cache and sessions through Redis", { timeout: 180000, skip: !nginx && "nginx is not installed (scripts/setup.sh installs nginx-light)" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "mmfree-replicas-"));
  const redisPort = await freePort();
  const redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
                      { stdio: ["ignore", "pipe", "pipe"] });
  let lb = null;
  try {
    await new Promise((ok, fail) => {
      let out = "";
      redis.stdout.on("data", (d) => { out += d; if (/Ready to accept connections/.test(out)) ok(); });
      redis.on("exit", (c) => fail(new Error(`redis-server exited (${c}): ${out}`)));
    });
    const store = ["--session-store", `redis://127.0.0.1:${redisPort}`];
    const replicas = await Promise.all([serve(store), serve(store)]);
    const lbPort = await freePort();
    writeFileSync(join(dir, "nginx.conf"), `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream mmfree { ${replicas.map((r) => `server 127.0.0.1:${r.port};`).join(" ")} }
  server {
    listen 127.0.0.1:${lbPort};
    location / { proxy_pass http://mmfree; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}`);
    lb = spawn(nginx, ["-p", dir, "-c", join(dir, "nginx.conf")], { stdio: ["ignore", "ignore", "pipe"] });
    const url = `http://127.0.0.1:${lbPort}`;
    for (let t = 0; ; ++t) {
      try { if ((await fetch(`${url}/health`)).ok) break; } catch { /* not yet listening */ }
      if (t > 100) throw new Error("nginx did not start: " + readFileSync(join(dir, "error.log"), "utf8"));
      await new Promise((ok) => setTimeout(ok, 50));
    }
    // A shared-prefix workload through the balancer: after the first request every one hits, on
    // both replicas, and gives what a server without the cache gives.
    const plain = await serve(["--prefix-cache", "0"]);
    try {
      for (let k = 0; k < 8; ++k) {
        await settle();
        const body = { prompt: branch(350, 12, 300 + k), max_tokens: 5 };
        const [r, ref] = await Promise.all([complete(url, body), complete(plain.url, body)]);
        assert.equal(r.status, 200);
        assert.deepEqual(r.json.tokens, ref.json.tokens);
        if (k > 0) assert.ok(cached(r) > 0, `request ${k} missed`);
        if (k > 1) assert.equal(cached(r), 350, `request ${k}`);
      }
    } finally {
      await stop(plain);
    }
    const ms = await Promise.all(replicas.map((r) => metrics(r.url)));
    for (const m of ms) assert.ok(m.mmfree_prefix_cache_hits_total >= 3, `a replica hit ${m.mmfree_prefix_cache_hits_total} times`);
    assert.equal(ms[0].mmfree_prefix_cache_misses_total + ms[1].mmfree_prefix_cache_misses_total, 1);
    // continue_from and sessions, whichever replica a request lands on.
    const A = doc(30, 9);
    const r1 = await complete(url, { prompt: A, max_tokens: 6 });
    for (let k = 0; k < 2; ++k) {  // round robin: once on each replica
      await settle();
      const c = await complete(url, { prompt: [7], max_tokens: 4, continue_from: r1.json.id });
      assert.equal(c.status, 200, JSON.stringify(c.json));
      const ref = await complete(url, { prompt: [...A, ...r1.json.tokens, 7], max_tokens: 4 });
      assert.deepEqual(c.json.tokens, ref.json.tokens);
    }
    let ids = [], position = 0;
    for (let k = 0; k < 4; ++k) {
      const P = [100 + k, 200 + k];
      const r = await complete(url, { prompt: P, max_tokens: 3, session: "conv" });
      assert.equal(r.status, 200);
      const ref = await complete(url, { prompt: [...ids, ...P], max_tokens: 3 });
      assert.deepEqual(r.json.tokens, ref.json.tokens, `turn ${k}`);
      ids = [...ids, ...P, ...r.json.tokens];
      position += P.length + 3;
      assert.equal(r.json.session_position, position);
    }
    await Promise.all(replicas.map(stop));
  } finally {
    if (lb) lb.kill("SIGTERM");
    redis.kill("SIGTERM");
    rmSync(dir, { recursive: true, force: true });
  }
});
