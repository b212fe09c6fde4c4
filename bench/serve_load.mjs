// Load generator for `mmfree-cli serve`: N concurrent streaming clients, each asking for the same
// number of greedy tokens from its own prompt. For every N it starts a fresh server (so its peak
// RSS is that of N streams), and reports aggregate decode tokens/s, per-stream tokens/s, time to
// first token (p50, p99) and the server's peak resident memory. Also, measured in the same run,
// what the library does alone: `Model::step_batch` over the same numbers of sequences
// (`mmfree-cli bench --batch`, just before and just after each server run), which the scheduler's
// steps should reach, and its roofline.
//
//   node bench/serve_load.mjs --cli build/cli/mmfree-cli --model M.gguf [--streams 1,4,16,64]
//        [--tokens 256] [--threads 2] [--idle-sessions N] [--client-nice 19] [--json out.json] [--svg out.svg]
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import os from "node:os";

import { spawnServer } from "./serve_child.mjs";

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const cli = args.cli, model = args.model;
const streams = (args.streams ?? "1,4,16,64").split(",").map(Number);
// 256 tokens per stream by default: at 64, one stream's window was 0.7 s, and the child client's
// start-up and the first steps' page faults weighed in it (1.3B TQ2, AMD Zen 5, same hour: one
// stream at 73% of step_batch with 64 tokens, 93% with 256; a lone client at 64 read 122 tok/s).
const tokens = Number(args.tokens ?? 256), threads = args.threads ?? "2";
if (!args.client && (!cli || !model)) throw new Error("usage: --cli MMFREE_CLI --model MODEL");

function serve(parallel) {
  return spawnServer(cli, ["--model", model, "-t", threads, "--parallel", String(parallel), "--max-tokens", "100000"]);
}

function peakRss(pid) {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

// One streaming client: returns { ttft, first, last, n, times } (times in ms from its start; times:
// [time, tokens] of every event that carried tokens).
async function stream(url, i) {
  const t0 = performance.now();
  const body = { prompt: [1, 100 + (i * 37) % 3000, 200 + (i * 101) % 3000, 300 + (i * 7) % 3000], max_tokens: tokens, temperature: 0, stream: true, return_tokens: true };
  const r = await fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
  if (r.status !== 200) throw new Error(`status ${r.status}: ${await r.text()}`);
  const dec = new TextDecoder();
  let buf = "", n = 0, first = 0, last = 0;
  const times = [];
  for await (const chunk of r.body) {
    buf += dec.decode(chunk, { stream: true });
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, k);
      buf = buf.slice(k + 2);
      if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
      const j = JSON.parse(ev.slice(6));
      if (j.tokens?.length) {
        const t = performance.now() - t0;
        if (!n) first = t;
        last = t;
        n += j.tokens.length;
        times.push([t, j.tokens.length]);
      }
    }
  }
  return { ttft: first, first, last, n, t0, times };
}

// --client URL --n N: this script as the load's client process (see below); prints its streams.
if (args.client) {
  const N = Number(args.n);
  await (await fetch(`${args.client}/health`)).text();  // fetch's first call in a process loads its code: not the server's time
  const w0 = performance.now();
  const res = await Promise.all(Array.from({ length: N }, (_, i) => stream(args.client, i + 1)));
  console.log(JSON.stringify(res.map((r) => ({ ...r, t0: r.t0 - w0 })).concat([{ wall: performance.now() - w0 }])));
  process.exit(0);
}
// The N streams run in a child process at nice `--client-nice` (default 19). Client and server
// share this machine's cores; at the same priority the client's 0.25-0.4 s of CPU in a 16-stream
// run preempted the model's threads mid-step (each step waits for the slower of them), and the
// aggregate read 3-19% lower than with the client niced, in 4 alternated pairs (2 vCPUs, AMD Zen 5).
// A real client runs on another machine. --client-nice 0 measures it the old way.
const clientNice = String(args["client-nice"] ?? "19");
function clients(url, N) {
  const argv = [process.argv[1], "--client", url, "--n", String(N), "--tokens", String(tokens)];
  const out = clientNice === "0" ? execFileSync(process.execPath, argv, { encoding: "utf8", maxBuffer: 1 << 26 })
                                 : execFileSync("nice", ["-n", clientNice, process.execPath, ...argv], { encoding: "utf8", maxBuffer: 1 << 26 });
  const v = JSON.parse(out);
  return { res: v.slice(0, -1), wall: v[v.length - 1].wall };
}

const pct = (v, p) => { const s = [...v].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };

// step_batch alone at each N, same model, same threads, this run.
const sb = JSON.parse(execFileSync(cli, ["bench", "--model", model, "--batch", streams.join(","), "-p", "256", "-r", "3", "-t", threads, "--json"],
                                   { encoding: "utf8" }))[0];
const b = { desc: sb.desc, decode_kernel: sb.kernels, prefill_kernel: "", prefill_tps: sb.prefill.tok_s,
            decode_tps: sb.batches.find((x) => x.batch === 1)?.tok_s ?? NaN };
// step_batch at N once more just before and just after the server's run at N, their mean the
// figure the server is compared with: this machine's speed drifts 10-15% within minutes, and a
// ceiling measured minutes away from the run it judges says more of the drift than of the server.
const stepBatchNow = (N) => JSON.parse(execFileSync(cli, ["bench", "--model", model, "--batch", String(N), "-p", "16", "-r", "3", "-t", threads,
                                                          "--json"], { encoding: "utf8" }))[0].batches[0];
const rows = [];
for (const N of streams) {
  const before = stepBatchNow(N);
  const s = await serve(Math.max(N, 1));
  let row;
  try {
    await stream(s.url, 0);  // warm-up (page cache, first touch of the scratch)
    const { res, wall: wallMs } = clients(s.url, N);  // t0: each stream's start after the client's
    const wall = wallMs / 1000;
    const total = res.reduce((a, r) => a + r.n, 0);
    // Decode rate: tokens after each stream's first, over the span from the first first-token to the last token.
    const startAbs = Math.min(...res.map((r) => r.t0 + r.first)), endAbs = Math.max(...res.map((r) => r.t0 + r.last));
    const aggregate = (total - N) / ((endAbs - startAbs) / 1000);
    const perStream = res.map((r) => (r.n - 1) / ((r.last - r.first) / 1000));
    // The scheduler's steps at N streams: tokens while all N decode, from the last stream's first
    // token to the first stream's last (the span above also holds steps that read prompts beside
    // fewer decoding streams, a larger share of it the fewer tokens each stream asks for).
    const allStart = Math.max(...res.map((r) => r.t0 + r.first)), allEnd = Math.min(...res.map((r) => r.t0 + r.last));
    let inside = 0;
    for (const r of res) for (const [t, k] of r.times) if (r.t0 + t > allStart && r.t0 + t <= allEnd) inside += k;
    const allDecoding = allEnd - allStart >= 100 ? inside / ((allEnd - allStart) / 1000) : NaN;
    row = { streams: N, tokens_per_stream: tokens, aggregate_tps: aggregate, all_decoding_tps: allDecoding,
            all_decoding_ms: allEnd - allStart, per_stream_tps_p50: pct(perStream, 0.5),
            ttft_ms_p50: pct(res.map((r) => r.ttft), 0.5), ttft_ms_p99: pct(res.map((r) => r.ttft), 0.99),
            wall_s: wall, peak_rss_mib: peakRss(s.proc.pid) };
  } finally {
    s.proc.kill("SIGTERM");
  }
  await new Promise((r) => s.proc.once("exit", r));
  const after = stepBatchNow(N);
  rows.push({ ...row, step_batch_tps: (before.tok_s + after.tok_s) / 2, step_batch_before_after_tps: [before.tok_s, after.tok_s],
              roofline_tps: (before.roofline_tok_s + after.roofline_tok_s) / 2 });
}
// Sessions: continuing a 2,000-token conversation (16 new tokens) against re-sending all of it.
let session;
{
  const s = await serve(4);
  try {
    const ttft = async (body) => {
      const t0 = performance.now();
      const r = await fetch(`${s.url}/v1/completions`, { method: "POST", body: JSON.stringify({ max_tokens: 1, temperature: 0, ...body }) });
      await r.json();
      return performance.now() - t0;
    };
    const history = Array.from({ length: 2000 }, (_, i) => 1 + ((i * 7919) % 3000));
    const fresh = Array.from({ length: 16 }, (_, i) => 5 + i);
    await ttft({ prompt: history, session: "bench" });  // the conversation so far (2,000 tokens + 1)
    const resend = await ttft({ prompt: [...history, 6, ...fresh] });
    const cont = await ttft({ prompt: fresh, session: "bench" });
    session = { resend_ms: resend, continue_ms: cont };
  } finally {
    s.proc.kill("SIGTERM");
  }
}
// Idle sessions: resident memory added by N sessions that have each read a few tokens.
let idle;
if (args["idle-sessions"]) {
  const N = Number(args["idle-sessions"]);
  const s = await serve(16);
  try {
    const rssNow = () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${s.proc.pid}/status`, "utf8"))[1]) / 1024;
    const warm = async (id) => (await fetch(`${s.url}/v1/completions`, { method: "POST",
      body: JSON.stringify({ prompt: [1, 2 + (id % 1000)], max_tokens: 1, temperature: 0, session: `idle-${id}` }) })).json();
    await warm(-1);
    const before = rssNow();
    for (let k = 0; k < N; k += 16) await Promise.all(Array.from({ length: Math.min(16, N - k) }, (_, j) => warm(k + j)));
    idle = { sessions: N, rss_before_mib: before, rss_after_mib: rssNow() };
  } finally {
    s.proc.kill("SIGTERM");
  }
}
const one = rows.find((r) => r.streams === 1)?.aggregate_tps;
const cpu = (/^model name\s*:\s*(.*)$/m.exec(readFileSync("/proc/cpuinfo", "utf8")) ?? [, "?"])[1];
console.log(`CPU: ${cpu}, ${os.cpus().length} CPUs; model ${model} (${b.desc}); ${threads} threads; ${tokens} greedy tokens per stream; ` +
            `kernels ${b.decode_kernel}. Same run: prefill of 256 tokens ${b.prefill_tps.toFixed(1)} tok/s; step_batch at B = 1: ${b.decode_tps.toFixed(1)} tok/s.`);
console.log("| streams | aggregate decode tok/s | x one stream | step_batch alone at B | server / step_batch | all N decoding: tok/s, / step_batch | of the roofline | per-stream tok/s (p50) | TTFT p50 | TTFT p99 | server peak RSS |");
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows)
  console.log(`| ${r.streams} | ${r.aggregate_tps.toFixed(1)} | ${one ? (r.aggregate_tps / one).toFixed(2) : "-"} | ${r.step_batch_tps.toFixed(1)} | ` +
              `${(100 * r.aggregate_tps / r.step_batch_tps).toFixed(0)}% | ` +
              `${Number.isFinite(r.all_decoding_tps) ? `${r.all_decoding_tps.toFixed(1)}, ${(100 * r.all_decoding_tps / r.step_batch_tps).toFixed(0)}% (${(r.all_decoding_ms / 1000).toFixed(1)} s)` : "-"} | ` +
              `${(100 * r.aggregate_tps / r.roofline_tps).toFixed(0)}% | ` +
              `${r.per_stream_tps_p50.toFixed(1)} | ${r.ttft_ms_p50.toFixed(0)} ms | ${r.ttft_ms_p99.toFixed(0)} ms | ${r.peak_rss_mib.toFixed(0)} MiB |`);
console.log(`Continuing a 2,000-token session with 16 new tokens: time to first token ${session.continue_ms.toFixed(0)} ms, ` +
            `against ${session.resend_ms.toFixed(0)} ms re-sending the whole conversation (${(session.continue_ms / session.resend_ms).toFixed(3)}x).`);
if (idle) console.log(`${idle.sessions} idle sessions: server RSS ${idle.rss_before_mib.toFixed(0)} MiB -> ${idle.rss_after_mib.toFixed(0)} MiB ` +
                      `(+${(idle.rss_after_mib - idle.rss_before_mib).toFixed(0)} MiB).`);
if (args.json) writeFileSync(args.json, JSON.stringify({ cpu, model, threads, tokens, step_batch: sb, rows, session, idle }, null, 1));
if (args.svg) {  // aggregate tokens/s per stream count, with the batched ceiling as a line
  const W = 520, H = 260, L = 60, B = 40, max = Math.max(b.prefill_tps, ...rows.map((r) => r.aggregate_tps)) * 1.1;
  const bw = (W - L - 20) / rows.length;
  const y = (v) => H - B - (v / max) * (H - B - 20);
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`;
  svg += `<text x="${L}" y="14">aggregate decode tokens/s (${cpu}, ${threads} threads)</text>`;
  rows.forEach((r, i) => {
    const x = L + i * bw + 8;
    svg += `<rect x="${x}" y="${y(r.aggregate_tps)}" width="${bw - 16}" height="${H - B - y(r.aggregate_tps)}" fill="#4a7"/>`;
    svg += `<text x="${x + (bw - 16) / 2}" y="${y(r.aggregate_tps) - 4}" text-anchor="middle">${r.aggregate_tps.toFixed(0)}</text>`;
    svg += `<text x="${x + (bw - 16) / 2}" y="${H - B + 16}" text-anchor="middle">${r.streams} stream${r.streams > 1 ? "s" : ""}</text>`;
  });
  svg += `<line x1="${L}" x2="${W - 10}" y1="${y(b.prefill_tps)}" y2="${y(b.prefill_tps)}" stroke="#c33" stroke-dasharray="4"/>`;
  svg += `<text x="${W - 12}" y="${y(b.prefill_tps) - 4}" text-anchor="end" fill="#c33">batched ceiling ${b.prefill_tps.toFixed(0)}</text>`;
  svg += `<line x1="${L}" x2="${L}" y1="20" y2="${H - B}" stroke="#000"/><line x1="${L}" x2="${W - 10}" y1="${H - B}" y2="${H - B}" stroke="#000"/></svg>\n`;
  writeFileSync(args.svg, svg);
}
