// The rest of the completions API through the official `openai` client: logprobs and echo
// (checked against `mmfree-cli logits`), n and best_of, logit_bias and the penalties (checked
// against `mmfree-cli generate`), and structured output (every one of 200 seeds parses).
// Run by CTest: node --test serve_completions_api.test.mjs (MMFREE_CLI set).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { cli, serve } from "./serve_helper.mjs";
const { default: OpenAI } = await import("openai").catch(() => {
  console.error("the openai package is not installed: run scripts/setup.sh (or npm ci in tests/node)");
  process.exit(1);
});

let server, client;
const dir = mkdtempSync(join(tmpdir(), "mmfree-api-"));
before(async () => {
  server = await serve(["--parallel", "32", "--queue", "256"]);
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
after(() => server.proc.kill("SIGTERM"));

// Log-softmax rows of `mmfree-cli logits` for ids (safetensors: input_ids [T], logits [T, V] F32).
function library_logprobs(ids) {
  const out = join(dir, "l.safetensors");
  execFileSync(cli, ["logits", "--ids", ids.join(","), "--out", out, "-t", "2"]);
  const buf = readFileSync(out);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const t = header.logits;
  const [T, V] = t.shape;
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + 8 + n + t.data_offsets[0], buf.byteOffset + 8 + n + t.data_offsets[1]));
  const rows = [];
  for (let i = 0; i < T; i++) {
    const row = data.subarray(i * V, (i + 1) * V);
    let mx = -Infinity;
    for (const v of row) mx = Math.max(mx, v);
    let z = 0;
    for (const v of row) z += Math.exp(v - mx);
    const lse = mx + Math.log(z);
    rows.push((id) => row[id] - lse);
  }
  return rows;
}

const base = { model: "kjv-demo", temperature: 0 };

test("echo with logprobs and max_tokens 0 scores a text as the library does", async () => {
  const prompt = "In the beginning God created the heaven and the earth.";
  const r = await client.completions.create({ ...base, prompt, max_tokens: 0, echo: true, logprobs: 2 });
  const c = r.choices[0];
  assert.equal(c.text, prompt);
  const lp = c.logprobs;
  assert.equal(lp.token_logprobs[0], null);  // the first token has no context
  assert.equal(lp.top_logprobs[0], null);
  const ids = lp.token_ids;
  assert.equal(ids.length, r.usage.prompt_tokens);
  const rows = library_logprobs(ids);
  let sum = 0, lib = 0;
  for (let i = 1; i < ids.length; i++) {
    assert.ok(Math.abs(lp.token_logprobs[i] - rows[i - 1](ids[i])) < 1e-4, `token ${i}: ${lp.token_logprobs[i]} vs ${rows[i - 1](ids[i])}`);
    sum += lp.token_logprobs[i];
    lib += rows[i - 1](ids[i]);
    // top_logprobs: the 2 most likely, the best at least as likely as the token itself
    const tops = Object.values(lp.top_logprobs[i]);
    assert.ok(tops.length >= 1 && tops.length <= 2);
    assert.ok(Math.max(...tops) >= lp.token_logprobs[i] - 1e-12);
  }
  assert.ok(Math.abs(sum - lib) < 1e-4, `${sum} vs ${lib}`);
  // text_offset: each token's text begins where the previous one's ended
  for (let i = 1; i < ids.length; i++) assert.equal(lp.text_offset[i], lp.text_offset[i - 1] + lp.tokens[i - 1].length);
  assert.equal(lp.tokens.join(""), prompt);
  assert.equal(r.usage.completion_tokens, 0);
});

test("logprobs of generated tokens, streamed or not, are the model's before sampling", async () => {
  const body = { ...base, prompt: "And God said", max_tokens: 12, logprobs: 3, temperature: 0.7, seed: 11, return_tokens: true };
  const r = await client.completions.create(body);
  const lp = r.choices[0].logprobs;
  assert.equal(lp.token_logprobs.length, 12);
  assert.deepEqual(lp.token_ids, r.tokens);
  const prompt_ids = (await (await fetch(`${server.url}/tokenize`, { method: "POST", body: JSON.stringify({ content: body.prompt }) })).json()).tokens;
  const all = [...prompt_ids, ...r.tokens];
  const rows = library_logprobs(all);
  for (let i = 0; i < 12; i++) {
    const want = rows[prompt_ids.length - 1 + i](r.tokens[i]);
    assert.ok(Math.abs(lp.token_logprobs[i] - want) < 1e-4, `token ${i}: ${lp.token_logprobs[i]} vs ${want}`);
    assert.equal(Object.keys(lp.top_logprobs[i]).length <= 3, true);
  }
  assert.equal(lp.tokens.join(""), r.choices[0].text);
  const streamed = { tokens: [], token_logprobs: [], text_offset: [] };
  for await (const c of await client.completions.create({ ...body, stream: true })) {
    const l = c.choices[0]?.logprobs;
    if (!l) continue;
    streamed.tokens.push(...l.tokens);
    streamed.token_logprobs.push(...l.token_logprobs);
    streamed.text_offset.push(...l.text_offset);
  }
  assert.deepEqual(streamed.tokens, lp.tokens);
  assert.deepEqual(streamed.token_logprobs, lp.token_logprobs);
  assert.deepEqual(streamed.text_offset, lp.text_offset);
});

test("n choices: each is the single completion with seed + index", async () => {
  const body = { ...base, prompt: "Blessed are", max_tokens: 16, temperature: 0.9, seed: 40, top_k: 0 };
  const r = await client.completions.create({ ...body, n: 4 });
  assert.equal(r.choices.length, 4);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2, 3]);
  let total = 0;
  for (let i = 0; i < 4; i++) {
    const one = await client.completions.create({ ...body, seed: 40 + i, return_tokens: true });
    assert.equal(r.choices[i].text, one.choices[0].text, `choice ${i}`);
    total += one.usage.completion_tokens;
  }
  assert.equal(r.usage.completion_tokens, total);
  assert.equal(r.usage.prompt_tokens, 3);  // read once
  assert.ok(new Set(r.choices.map((c) => c.text)).size > 1);
  // Streamed: every choice's text arrives under its index.
  const texts = ["", "", "", ""];
  const finished = new Set();
  for await (const c of await client.completions.create({ ...body, n: 4, stream: true })) {
    for (const ch of c.choices) {
      texts[ch.index] += ch.text;
      if (ch.finish_reason) finished.add(ch.index);
    }
  }
  assert.deepEqual(texts, r.choices.map((c) => c.text));
  assert.equal(finished.size, 4);
});

test("best_of keeps the choices of highest summed log-probability", async () => {
  const body = { ...base, prompt: "The LORD is", max_tokens: 10, temperature: 1, seed: 7, logprobs: 0 };
  const all = await client.completions.create({ ...body, n: 5 });
  const sums = all.choices.map((c) => c.logprobs.token_logprobs.reduce((a, b) => a + b, 0));
  const best = [...sums.keys()].sort((a, b) => sums[b] - sums[a]).slice(0, 2).sort((a, b) => a - b);
  const r = await client.completions.create({ ...body, n: 2, best_of: 5 });
  assert.deepEqual(r.choices.map((c) => c.text), best.map((i) => all.choices[i].text));
});

test("logit_bias and the penalties: the same text as mmfree-cli generate with the same options", async () => {
  const sampling = { temperature: 0.8, top_k: 0, top_p: 1, min_p: 0, seed: 3 };
  const cases = [
    { logit_bias: { 333: -100, 343: 5 } },
    { presence_penalty: 1.5 },
    { frequency_penalty: 2, presence_penalty: -0.5 },
  ];
  for (const extra of cases) {
    const r = await client.completions.create({ ...base, ...sampling, prompt: "And it came to pass", max_tokens: 24, ...extra, return_tokens: true });
    const args = ["generate", "-p", "And it came to pass", "-n", "24", "--no-stats", "--temperature", "0.8", "--top-k", "0", "--top-p", "1",
                  "--min-p", "0", "--seed", "3", "--print-ids"];
    if (extra.logit_bias) args.push("--logit-bias", Object.entries(extra.logit_bias).map(([k, v]) => `${k}:${v}`).join(","));
    if (extra.presence_penalty !== undefined) args.push("--presence-penalty", String(extra.presence_penalty));
    if (extra.frequency_penalty !== undefined) args.push("--frequency-penalty", String(extra.frequency_penalty));
    const ids = execFileSync(cli, args, { encoding: "utf8" }).trim().split(/[ ,\n]+/).map(Number);
    const generated = ids.slice(r.usage.prompt_tokens, r.usage.prompt_tokens + r.tokens.length);  // the CLI goes on past EOS
    assert.deepEqual(r.tokens, generated, JSON.stringify(extra));
    if (extra.logit_bias) assert.ok(!r.tokens.includes(333));
  }
  // The penalties change the text: without them, the same seed gives another.
  const plain = await client.completions.create({ ...base, ...sampling, prompt: "And it came to pass", max_tokens: 24, return_tokens: true });
  const pen = await client.completions.create({ ...base, ...sampling, prompt: "And it came to pass", max_tokens: 24, frequency_penalty: 2, return_tokens: true });
  assert.notDeepEqual(plain.tokens, pen.tokens);
});

test("structured output: 200 seeds of a JSON schema all parse and fit the schema", async () => {
  const schema = {
    type: "object",
    properties: {
      book: { enum: ["Genesis", "Exodus", "Psalms"] },
      chapter: { type: "integer" },
      words: { type: "array", items: { type: "string", maxLength: 12 }, minItems: 1, maxItems: 3 },
      holy: { type: "boolean" },
    },
    required: ["book", "chapter", "words"],
  };
  const jobs = [];
  for (let k = 0; k < 25; k++)
    jobs.push(client.completions.create({
      model: "kjv-demo", prompt: "And God said", max_tokens: 200, temperature: 1, seed: 1000 + 8 * k, n: 8,
      response_format: { type: "json_schema", json_schema: { name: "verse", schema } },
    }));
  let parsed = 0;
  for (const r of await Promise.all(jobs))
    for (const c of r.choices) {
      const j = JSON.parse(c.text);
      assert.ok(["Genesis", "Exodus", "Psalms"].includes(j.book), c.text);
      assert.ok(Number.isInteger(j.chapter), c.text);
      assert.ok(Array.isArray(j.words) && j.words.length >= 1 && j.words.length <= 3, c.text);
      assert.deepEqual(Object.keys(j).filter((k) => k !== "holy"), ["book", "chapter", "words"]);
      assert.equal(c.finish_reason, "stop");
      parsed++;
    }
  assert.equal(parsed, 200);
  // json_object, and a GBNF grammar (llama.cpp's notation) with the same text as mmfree-cli generate --grammar
  const obj = await client.completions.create({ model: "kjv-demo", prompt: "And God said", max_tokens: 300, temperature: 0.7, seed: 5, response_format: { type: "json_object" } });
  if (obj.choices[0].finish_reason === "stop") assert.equal(typeof JSON.parse(obj.choices[0].text), "object");
  const gbnf = 'root ::= " " who " said" ("." | ", " [A-Z][a-z]+ ".")\nwho ::= "Moses" | "Aaron" | "the LORD"\n';
  writeFileSync(join(dir, "g.gbnf"), gbnf);
  for (const seed of [1, 2, 3]) {
    const r = await client.completions.create({ model: "kjv-demo", prompt: "And", max_tokens: 40, temperature: 1, seed, grammar: gbnf });
    assert.match(r.choices[0].text, /^ (Moses|Aaron|the LORD) said(\.|, [A-Z][a-z]+\.)$/);
    const out = execFileSync(cli, ["generate", "-p", "And", "-n", "40", "--temperature", "1", "--top-k", "0", "--top-p", "1", "--min-p", "0",
                                   "--seed", String(seed), "--grammar", join(dir, "g.gbnf"), "--no-stats"], { encoding: "utf8" });
    assert.equal(out, "And" + r.choices[0].text + "\n");
  }
});

test("what is still refused is named", async () => {
  const post = async (body) => {
    const r = await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify(body) });
    return { status: r.status, json: await r.json() };
  };
  const cases = [
    [{ prompt: "x", suffix: "y" }, "'suffix' is not supported"],
    [{ prompt: "x", n: 2, best_of: 3, stream: true }, "cannot be streamed"],
    [{ prompt: "x", logit_bias: { abc: 1 } }, "'logit_bias' key 'abc'"],
    [{ prompt: "x", logit_bias: { 5: 101 } }, "'logit_bias[5]' is out of range"],
    [{ prompt: "x", presence_penalty: 3 }, "'presence_penalty' is out of range"],
    [{ prompt: "x", response_format: { type: "json_schema", json_schema: { schema: { type: "string", pattern: "a+" } } } }, "'pattern' is not supported"],
    [{ prompt: "x", response_format: { type: "yaml" } }, "'response_format.type' must be"],
    [{ prompt: "x", grammar: "root ::= (" }, "'grammar'"],
    [{ prompt: "x", grammar: "root ::= \"a\"", json_schema: {} }, "give one of"],
    [{ prompt: "x", session: "s1", n: 2 }, "cannot continue a session"],
  ];
  for (const [body, msg] of cases) {
    const r = await post(body);
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.ok(r.json.error.message.includes(msg), `${JSON.stringify(body)}: ${r.json.error.message}`);
  }
});

test("mmfree-cli eval scores held-out questions through the server with the library's numbers", async () => {
  const data = new URL("../data/kjv-choices.jsonl", import.meta.url).pathname;
  const out = JSON.parse(execFileSync(cli, ["eval", "-f", data, "--server", server.url, "--limit", "40", "--json", "-t", "1"], { encoding: "utf8" }));
  assert.equal(out.questions, 40);
  assert.equal(out.server.choices_compared, 160);
  assert.ok(out.server.max_abs_diff <= 1e-4, `${out.server.max_abs_diff}`);
  assert.equal(out.server.acc, out.acc);
  assert.ok(out.acc > out.chance, `${out.acc} vs chance ${out.chance}`);
});
