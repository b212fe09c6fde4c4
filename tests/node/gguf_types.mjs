// A generic GGUF reader (@huggingface/gguf, the parser behind the Hugging Face Hub's GGUF view)
// reads a model mmfree wrote: every tensor type is one it knows, and the tensors, their byte
// sizes and the parameter count agree with `mmfree-cli info --json`.
//
//   node gguf_types.mjs MODEL.gguf MMFREE_CLI
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";

const { gguf, GGMLQuantizationType, GGUF_QUANT_DESCRIPTIONS } = await import("@huggingface/gguf").catch(() => {
  console.error("@huggingface/gguf is not installed: run scripts/setup.sh (or npm ci in tests/node)");
  process.exit(1);
});
const [model, cli] = process.argv.slice(2);
const hub = await gguf(model, { allowLocalFile: true, computeParametersCount: true });
const ours = JSON.parse(execFileSync(cli, ["info", "--json", "--model", model], { encoding: "utf8" }));

// ggml's block sizes (ggml.c, type_traits): [weights per block, bytes per block].
const BLOCK = { F32: [1, 4], F16: [1, 2], BF16: [1, 2], I8: [1, 1], I32: [1, 4], TQ1_0: [256, 54], TQ2_0: [256, 66] };

assert.equal(hub.tensorInfos.length, ours.tensors.length, "tensor count");
const types = new Set();
for (let i = 0; i < hub.tensorInfos.length; i++) {
  const t = hub.tensorInfos[i], o = ours.tensors[i];
  const name = GGMLQuantizationType[t.dtype];
  assert.ok(name !== undefined && GGUF_QUANT_DESCRIPTIONS[t.dtype], `${t.name}: type ${t.dtype} unknown to @huggingface/gguf`);
  assert.equal(t.name, o.name);
  assert.equal(name, o.type, `${t.name}: type`);
  assert.deepEqual(t.shape.map(Number), o.shape, `${t.name}: shape`);
  const n = t.shape.reduce((a, b) => a * Number(b), 1);
  const [per, bytes] = BLOCK[name];
  assert.equal(n % per, 0, `${t.name}: ${n} weights are not whole ${name} blocks`);
  assert.equal((n / per) * bytes, o.bytes, `${t.name}: bytes`);
  // The tensor fits before the next one starts (the file's own layout agrees).
  if (i + 1 < hub.tensorInfos.length)
    assert.ok(Number(t.offset) + o.bytes <= Number(hub.tensorInfos[i + 1].offset), `${t.name}: overlaps the next tensor`);
  types.add(name);
}
assert.equal(hub.parameterCount, ours.parameters, "parameter count");
console.log(`@huggingface/gguf: ${hub.tensorInfos.length} tensors of known types (${[...types].sort().join(", ")}), ` +
            `${hub.parameterCount} parameters, as mmfree-cli info says`);
