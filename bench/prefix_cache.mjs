// The prefix cache of `mmfree-cli serve`, measured: time to first token of a request whose
// first 2,000 tokens were seen before (then 20 new tokens) against the same request on a cold
// server, and how many cached prefixes a byte cap holds, with the server's resident memory.
//
//   node bench/prefix_cache.mjs --cli build/cli/mmfree-cli --model 2.7b.gguf [--threads 2]
//        [--shared 2000] [--new 20] [--cache-mb 400] [--prefixes 1000] [--interval N] [--only many]
//        [--json out.json]
//
// Scenarios (each on a fresh server, greedy, the first token streamed back):
//   cold      the 2,020-token request on an empty cache
//   document  the 2,000 tokens were an earlier prompt (a document, a system prompt), then a
//             request adds 20 tokens: it starts from the state after that prompt
//   branch    an earlier request shared the 2,000 tokens but went on differently: it starts at
//             the nearest checkpoint (every --prefix-interval tokens), and leaves one at 2,000
//   third     a third request sharing the same 2,000 tokens: it starts exactly there
import { readFileSync, writeFileSync } from "node:fs";
import os from "node:os";

import { spawnServer } from "./serve_child.mjs";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const cli = args.cli, model = args.model, threads = args.threads ?? "2";
const shared = Number(args.shared ?? 2000), fresh = Number(args.new ?? 20), cacheMb = Number(args["cache-mb"] ?? 400);
const prefixes = Number(args.prefixes ?? 1000);
const only = args.only;  // "many": skip the time-to-first-token scenarios
if (!cli || !model) throw new Error("usage: --cli MMFREE_CLI --model MODEL");

function serve(extra = []) {
  return spawnServer(cli, ["--model", model, "-t", threads, "--max-prompt-tokens", "100000", "--prefix-cache", String(cacheMb),
                           ...(args.interval ? ["--prefix-interval", args.interval] : []), ...extra]);
}
const stop = (s) => new Promise((ok) => { s.proc.removeAllListeners("exit"); s.proc.on("exit", ok); s.proc.kill("SIGTERM"); });
const status = (pid, field) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))[1]) / 1024;
async function metrics(url) {
  const m = {};
  for (const line of (await (await fetch(`${url}/metrics`)).text()).split("\n"))
    if (line && !line.startsWith("#")) { const [k, v] = line.split(" "); m[k] = Number(v); }
  return m;
}

// Time to the first generated token (streamed), and the usage's cached tokens.
async function first(url, prompt) {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, { method: "POST",
    body: JSON.stringify({ prompt, max_tokens: 4, temperature: 0, stream: true, stream_options: { include_usage: true } }) });
  const reader = r.body.getReader();
  let text = "", ttft = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    if (ttft === null && /"text":"[^"]/.test(text)) ttft = performance.now() - t0;
  }
  const usage = text.split("\n\n").filter((e) => e.startsWith("data: {")).map((e) => JSON.parse(e.slice(6))).find((e) => e.usage)?.usage;
  return { ttft_ms: ttft ?? performance.now() - t0, cached: usage?.prompt_tokens_details?.cached_tokens ?? 0 };
}

const ids = (n, seed) => Array.from({ length: n }, (_, i) => 3 + ((i * 7919 + seed * 104729) % 31000));
const doc = [1, ...ids(shared - 1, 1)];
const ask = (k) => [...doc, ...ids(fresh, 100 + k)];

const out = { cpu: (/^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8")) ?? [, "?"])[1], cpus: os.cpus().length, model, threads,
              shared, fresh };
if (only !== "many") {
  const s = await serve();
  try {
    out.cold = await first(s.url, ask(0));
    out.branch = await first(s.url, ask(1));
    out.third = await first(s.url, ask(2));
  } finally {
    await stop(s);
  }
}
if (only !== "many") {
  const s = await serve();
  try {
    await first(s.url, doc);
    out.document = await first(s.url, ask(3));
    out.document_cold_server = (await metrics(s.url)).mmfree_prefix_cache_bytes;
  } finally {
    await stop(s);
  }
}
// Many prefixes under the cap: distinct 24-token prompts, 16 at a time; and the same load on a
// server without the cache, whose resident memory also grows (embedding rows of new tokens,
// buffers of the batch): what the cache adds is the difference.
async function many(mb) {
  const s = await serve(["--parallel", "16", "--prefix-cache", String(mb)]);
  try {
    const before = status(s.proc.pid, "VmRSS");
    let maxBytes = 0;
    for (let k = 0; k < prefixes; k += 16) {
      await Promise.all(Array.from({ length: Math.min(16, prefixes - k) }, (_, j) =>
        fetch(`${s.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: [1, ...ids(23, 1000 + k + j)], max_tokens: 1, temperature: 0 }) })
          .then((r) => r.json())));
      maxBytes = Math.max(maxBytes, (await metrics(s.url)).mmfree_prefix_cache_bytes ?? 0);
    }
    const m = await metrics(s.url);
    return { requests: prefixes, entries: m.mmfree_prefix_cache_entries ?? 0, bytes_mib: (m.mmfree_prefix_cache_bytes ?? 0) / 2 ** 20,
             max_bytes_mib_seen: maxBytes / 2 ** 20, cap_mib: mb, evicted: m.mmfree_prefix_cache_evicted_total ?? 0,
             rss_before_mib: before, rss_after_mib: status(s.proc.pid, "VmRSS"), rss_peak_mib: status(s.proc.pid, "VmHWM") };
  } finally {
    await stop(s);
  }
}
out.many = await many(cacheMb);
out.many_without_cache = await many(0);
console.log(`CPU: ${out.cpu}, ${out.cpus} CPUs; model ${model}; ${threads} threads; prefix cache ${cacheMb} MiB`);
console.log(`| request (${shared} shared + ${fresh} new tokens) | tokens cached | time to first token | x faster than cold |`);
console.log("| --- | --- | --- | --- |");
for (const k of only === "many" ? [] : ["cold", "document", "branch", "third"])
  console.log(`| ${k} | ${out[k].cached} | ${out[k].ttft_ms.toFixed(0)} ms | ${(out.cold.ttft_ms / out[k].ttft_ms).toFixed(1)}x |`);
const m = out.many;
console.log(`${m.requests} distinct prompts: ${m.entries} states held in ${m.bytes_mib.toFixed(1)} MiB (at most ${m.max_bytes_mib_seen.toFixed(1)} MiB seen; cap ${m.cap_mib}), ` +
            `${m.evicted} evicted; server RSS ${m.rss_before_mib.toFixed(0)} -> ${m.rss_after_mib.toFixed(0)} MiB (peak ${m.rss_peak_mib.toFixed(0)})`);
const z = out.many_without_cache;
console.log(`the same load without the cache: RSS ${z.rss_before_mib.toFixed(0)} -> ${z.rss_after_mib.toFixed(0)} MiB (peak ${z.rss_peak_mib.toFixed(0)}); ` +
            `the cache adds ${(m.rss_peak_mib - z.rss_peak_mib).toFixed(0)} MiB at peak for ${m.entries} states`);
if (args.json) writeFileSync(args.json, JSON.stringify(out, null, 2));
