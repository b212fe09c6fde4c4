// Speculative decoding in the server (--lookup, --draft) through the official `openai` client:
// greedy completions, streamed or not, with log-probabilities, equal those of a server without a
// drafter, one request at a time and many at once; the server says how it decides to draft.
// Run by CTest: node --test serve_speculative.test.mjs (MMFREE_CLI set).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { serve } from "./serve_helper.mjs";
const { default: OpenAI } = await import("openai").catch(() => {
  console.error("the openai package is not installed: run scripts/setup.sh (or npm ci in tests/node)");
  process.exit(1);
});

const tiny = join(dirname(fileURLToPath(import.meta.url)), "..", "data", "kjv-tiny");
const servers = {};
before(async () => {
  servers.plain = await serve([]);
  servers.lookup = await serve(["--lookup", "3", "--draft-tokens", "4", "--speculative-tokens", "16"]);
  servers.draft = await serve(["--draft", tiny, "--speculative-tokens", "16"]);
  for (const s of Object.values(servers)) s.client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
after(() => { for (const s of Object.values(servers)) s.proc.kill("SIGTERM"); });

const prompts = [
  "In the beginning God created the heaven and the earth. And the earth was without form, and void. In the beginning God",
  "And God said, Let there be light: and there was light. And God said, Let",
  "The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures:",
  "And it came to pass",
];

async function complete(client, prompt, extra = {}) {
  const r = await client.completions.create({ model: "kjv-demo", prompt, max_tokens: 48, temperature: 0, logprobs: 1, ...extra });
  return { text: r.choices[0].text, ids: r.choices[0].logprobs.token_ids, lp: r.choices[0].logprobs.token_logprobs };
}
async function stream(client, prompt) {
  const s = await client.completions.create({ model: "kjv-demo", prompt, max_tokens: 48, temperature: 0, stream: true });
  let text = "";
  for await (const chunk of s) text += chunk.choices[0]?.text ?? "";
  return text;
}

test("greedy completions with a drafter equal those without, one at a time", async () => {
  for (const p of prompts) {
    const want = await complete(servers.plain.client, p);
    for (const name of ["lookup", "draft"]) {
      const got = await complete(servers[name].client, p);
      assert.deepEqual(got.ids, want.ids, `${name}: ${p}`);
      assert.equal(got.text, want.text);
      assert.deepEqual(got.lp, want.lp);  // log-probabilities of the raw logits, the same bits
      assert.equal(await stream(servers[name].client, p), want.text, `${name} streamed: ${p}`);
    }
  }
});

async function metric(server, name) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  assert.ok(m, `${name} in /metrics`);
  return Number(m[1]);
}

test("the drafters drafted, and some of their tokens were kept", async () => {
  for (const name of ["lookup", "draft"]) {
    const drafted = await metric(servers[name], "mmfree_speculative_drafted_tokens_total");
    const kept = await metric(servers[name], "mmfree_speculative_accepted_tokens_total");
    assert.ok(drafted > 0 && kept > 0 && kept <= drafted, `${name}: ${kept} of ${drafted}`);
  }
  assert.equal(await metric(servers.plain, "mmfree_speculative_drafted_tokens_total"), 0);
});

test("and many at once, with stop strings", async () => {
  const jobs = [];
  for (let i = 0; i < 12; i++) jobs.push({ p: prompts[i % prompts.length], extra: i % 3 === 0 ? { stop: ["earth"] } : {} });
  const want = await Promise.all(jobs.map((j) => complete(servers.plain.client, j.p, j.extra)));
  for (const name of ["lookup", "draft"]) {
    const got = await Promise.all(jobs.map((j) => complete(servers[name].client, j.p, j.extra)));
    got.forEach((g, i) => assert.equal(g.text, want[i].text, `${name}, request ${i}`));
  }
});
