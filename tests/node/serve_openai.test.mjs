// The official `openai` npm client against `mmfree-cli serve` (bundled model, 127.0.0.1, a free
// port). Run by CTest: node --test serve_openai.test.mjs MMFREE_CLI
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";

import { cli, serve } from "./serve_helper.mjs";
const { default: OpenAI } = await import("openai").catch(() => {
  console.error("the openai package is not installed: run scripts/setup.sh (or npm ci in tests/node)");
  process.exit(1);
});

// Starts a server; resolves with { url, proc } once it prints its port.

let server, client;
before(async () => {
  server = await serve(["--parallel", "16"]);
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
after(() => server.proc.kill("SIGTERM"));

const greedy = { model: "kjv-demo", prompt: "In the beginning", max_tokens: 24, temperature: 0 };

test("a greedy completion equals mmfree-cli generate", async () => {
  const r = await client.completions.create(greedy);
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices[0].finish_reason, "length");
  assert.deepEqual(r.usage, { prompt_tokens: 4, completion_tokens: 24, total_tokens: 28, prompt_tokens_details: { cached_tokens: 0 } });
  const out = execFileSync(cli, ["generate", "-p", greedy.prompt, "-n", "24", "--temperature", "0", "--no-stats"], { encoding: "utf8" });
  assert.equal(greedy.prompt + r.choices[0].text + "\n", out);
});

test("the streamed text equals the non-streamed text", async () => {
  for (const body of [greedy, { ...greedy, temperature: 0.9, seed: 7, max_tokens: 40 }]) {
    const whole = (await client.completions.create(body)).choices[0].text;
    let streamed = "", chunks = 0, last;
    for await (const c of await client.completions.create({ ...body, stream: true })) {
      streamed += c.choices[0]?.text ?? "";
      chunks++;
      last = c;
    }
    assert.equal(streamed, whole);
    assert.ok(chunks > 10, `${chunks} chunks`);
    assert.equal(last.choices[0].finish_reason, "length");
  }
});

test("return_tokens and usage in the stream", async () => {
  const whole = await client.completions.create({ ...greedy, return_tokens: true });
  assert.equal(whole.tokens.length, 24);
  const ids = [];
  let usage;
  for await (const c of await client.completions.create({ ...greedy, stream: true, return_tokens: true, stream_options: { include_usage: true } })) {
    if (c.tokens) ids.push(...c.tokens);
    if (c.usage) usage = c.usage;
  }
  assert.deepEqual(ids, whole.tokens);
  assert.equal(usage.completion_tokens, 24);
  // Token ids as the prompt are used verbatim (no BOS added).
  const again = await client.completions.create({ ...greedy, prompt: [1, 1142, 333, 2693], return_tokens: true });
  assert.deepEqual(again.tokens, whole.tokens);
});

test("stop strings end the text before them, streamed or not", async () => {
  const full = (await client.completions.create({ ...greedy, max_tokens: 40 })).choices[0].text;
  const stop = full.slice(10, 14);
  const r = await client.completions.create({ ...greedy, max_tokens: 40, stop: [stop] });
  assert.equal(r.choices[0].text, full.slice(0, full.indexOf(stop)));
  assert.equal(r.choices[0].finish_reason, "stop");
  let streamed = "";
  for await (const c of await client.completions.create({ ...greedy, max_tokens: 40, stop: stop, stream: true }))
    streamed += c.choices[0]?.text ?? "";
  assert.equal(streamed, r.choices[0].text);
});

test("8 concurrent requests give exactly the sequential results", async () => {
  const bodies = Array.from({ length: 8 }, (_, i) => ({
    model: "kjv-demo", prompt: ["And God said", "In the beginning", "Blessed are", "The LORD is"][i % 4],
    max_tokens: 20 + i, temperature: i % 2 ? 0.8 : 0, seed: 100 + i, top_k: 40,
  }));
  const sequential = [];
  for (const b of bodies) sequential.push((await client.completions.create(b)).choices[0].text);
  const concurrent = await Promise.all(bodies.map(async (b, i) => {
    if (i % 2) {  // half of them streamed
      let s = "";
      for await (const c of await client.completions.create({ ...b, stream: true })) s += c.choices[0]?.text ?? "";
      return s;
    }
    return (await client.completions.create(b)).choices[0].text;
  }));
  assert.deepEqual(concurrent, sequential);
});

async function raw(path, body, headers = {}) {
  const r = await fetch(server.url + path, { method: body === undefined ? "GET" : "POST", body, headers: { "Content-Type": "application/json", ...headers } });
  const text = await r.text();
  return { status: r.status, text, json: (() => { try { return JSON.parse(text); } catch { return undefined; } })() };
}

test("malformed requests get 4xx naming the problem, and the server stays healthy", async () => {
  const cases = [
    ["{not json", 400, "not valid JSON"],
    ["[1,2]", 400, "JSON object"],
    [JSON.stringify({}), 400, "'prompt' is required"],
    [JSON.stringify({ prompt: 5 }), 400, "'prompt' must be a string or an array"],
    [JSON.stringify({ prompt: [1, 99999] }), 400, "'prompt[1]' is out of range"],
    [JSON.stringify({ prompt: [1, 2.5] }), 400, "'prompt[1]' must be an integer"],
    [JSON.stringify({ prompt: "x", max_tokens: "9" }), 400, "'max_tokens' must be an integer"],
    [JSON.stringify({ prompt: "x", max_tokens: 1e12 }), 400, "'max_tokens' is out of range"],
    [JSON.stringify({ prompt: "x", temperature: -1 }), 400, "'temperature' is out of range"],
    [JSON.stringify({ prompt: "x", top_p: 0 }), 400, "'top_p' is out of range"],
    [JSON.stringify({ prompt: "x", stop: [1] }), 400, "'stop[0]' must be a string"],
    [JSON.stringify({ prompt: "x", n: 17 }), 400, "'n' is out of range"],
    [JSON.stringify({ prompt: "x", suffix: "y" }), 400, "'suffix' is not supported"],
    [JSON.stringify({ prompt: "x", n: 2, best_of: 1 }), 400, "'best_of' must be at least 'n'"],
    [JSON.stringify({ prompt: "x", stream: "yes" }), 400, "'stream' must be true or false"],
    [JSON.stringify({ prompt: "x".repeat(2 << 20) }), 413, "larger than the server allows"],
  ];
  for (const [body, status, msg] of cases) {
    const r = await raw("/v1/completions", body);
    assert.equal(r.status, status, `${body.slice(0, 60)} -> ${r.status} ${r.text.slice(0, 200)}`);
    assert.ok(r.json?.error?.message?.includes(msg), `${body.slice(0, 60)}: ${r.text.slice(0, 200)}`);
  }
  const chat = await raw("/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "hi" }] }));
  assert.equal(chat.status, 400);
  assert.match(chat.json.error.message, /base model/);
  await assert.rejects(client.completions.create({ ...greedy, max_tokens: -1 }), (e) => e.status === 400);
  assert.equal((await raw("/health")).status, 200);
  assert.equal((await client.completions.create(greedy)).usage.completion_tokens, 24);
});

test("models, tokenize, detokenize, metrics", async () => {
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  const t = await raw("/tokenize", JSON.stringify({ content: "In the beginning" }));
  assert.deepEqual(t.json.tokens, [1, 1142, 333, 2693]);
  const d = await raw("/detokenize", JSON.stringify({ tokens: [1, 1142, 333, 2693] }));
  assert.equal(d.json.content, "In the beginning");
  assert.equal((await raw("/detokenize", JSON.stringify({ tokens: [99999] }))).status, 400);
  const m = (await raw("/metrics")).text;
  for (const k of ["mmfree_generated_tokens_total", "mmfree_active_sequences", "mmfree_queued_sequences", "mmfree_generated_tokens_per_second"])
    assert.match(m, new RegExp(`^${k} [0-9.e+]+$`, "m"));
  assert.ok(Number(/^mmfree_generated_tokens_total (\S+)$/m.exec(m)[1]) > 100);
});

test("with --api-key, a request without the key gets 401", async () => {
  const s = await serve(["--api-key", "s3cret"]);
  try {
    const anon = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "wrong", maxRetries: 0 });
    await assert.rejects(anon.completions.create(greedy), (e) => e.status === 401);
    const r = await fetch(`${s.url}/v1/completions`, { method: "POST", body: JSON.stringify(greedy) });
    assert.equal(r.status, 401);
    const ok = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "s3cret", maxRetries: 0 });
    assert.equal((await ok.completions.create(greedy)).usage.completion_tokens, 24);
    assert.equal((await fetch(`${s.url}/health`)).status, 200);  // health needs no key
  } finally {
    s.proc.kill("SIGTERM");
  }
});
