// Serving benchmark (issue 13): a load generator against the example server (examples/server),
// started in this process on the default device. Poisson arrivals, prompt and output lengths
// drawn uniformly from fixed ranges, streamed completions: throughput (generated tokens/s), TTFT
// and inter-token latency p50 / p99 as the client sees them. Then parallel generation: one long
// prompt, n samples, with the cascade on and off (same load, same run): TTFT and inter-token
// latency of each. Figures go to bench/results/serve.jsonl.
//   bun bench/serve.bench.ts [--model file.safetensors | --preset llama-3.1-8b] [--requests 64] [--rate 8] [--no-record]
// Without --model it writes the tiny synthetic checkpoint (examples/llama/checkpoint.ts) first;
// --preset makes a model of that preset's shapes with seeded random weights on the device (no file).
// On a GPU the Poisson load runs twice, decode steps from CUDA graphs and without.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { PRESETS, writeSyntheticCheckpoint } from "../examples/llama/checkpoint.ts";
import { LlamaModel } from "../examples/llama/model.ts";
import { byteTokenizer, startServer } from "../examples/server/server.ts";
import { type Figure, recordFigures } from "./results.ts";

const args = process.argv.slice(2);
const arg = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : fallback;
};
const device = fi.defaultDevice();
if (device !== "cpu") {
  // The engine needs fi.gemm on the device: cuBLASLt, which may be absent.
  try {
    using a = fi.zeros([1, 1], { device });
    using b = fi.gemm(a, a);
  } catch (e) {
    console.log(`serving bench: skipped on ${device}: ${(e as Error).message}`);
    process.exit(0);
  }
}
let modelPath = arg("model", "");
const preset = arg("preset", "");
if (!modelPath && !preset) {
  modelPath = join(mkdtempSync(join(tmpdir(), "fi-serve-bench-")), "tiny.safetensors");
  writeSyntheticCheckpoint(modelPath, PRESETS[device === "cpu" ? "tiny" : "tiny-d64"]!, 1); // CUDA attention: head dim >= 64
}
const requests = Number(arg("requests", "64")), rate = Number(arg("rate", "8"));
if (preset && !PRESETS[preset]) throw new Error(`--preset: expected one of ${Object.keys(PRESETS).join(", ")}`);
const model = preset ? LlamaModel.random(PRESETS[preset]!, { device, seed: 7 }) : LlamaModel.load(modelPath, { device });
const label = `${preset ? `${preset} shapes (random weights)` : modelPath.endsWith("tiny.safetensors") ? "tiny synthetic" : modelPath} on ${device}`;
const figures: Figure[] = [];

// Deterministic pseudo-random draws (the load is the same on every run).
let state = 12345;
const random = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const uniform = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))]! : NaN;
};

/** One streamed completion: its TTFT and inter-token gaps in ms, and its token count. */
async function streamed(url: string, body: Record<string, unknown>): Promise<{ ttft: number; gaps: number[]; tokens: number }[]> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, { method: "POST", body: JSON.stringify({ ...body, stream: true }) });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  const perChoice = new Map<number, { ttft: number; gaps: number[]; tokens: number; last: number }>();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const now = performance.now();
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const choice = (JSON.parse(event.slice(6)) as { choices: { index: number; text: string; finish_reason: string | null }[] }).choices[0]!;
      if (choice.finish_reason !== null) continue;
      const c = perChoice.get(choice.index);
      if (!c) perChoice.set(choice.index, { ttft: now - t0, gaps: [], tokens: 1, last: now });
      else {
        c.gaps.push(now - c.last);
        c.tokens += 1;
        c.last = now;
      }
    }
  }
  return [...perChoice.values()];
}

async function load(name: string, server: ReturnType<typeof startServer>, bodies: Record<string, unknown>[]): Promise<void> {
  const results: { ttft: number; gaps: number[]; tokens: number }[] = [];
  // Poisson arrivals: exponential gaps (mean 1 / rate s), summed from the start.
  let at = 0;
  const arrivals = bodies.map((_, i) => (i === 0 ? 0 : (at += (-Math.log(1 - random()) / rate) * 1000)));
  const t0 = performance.now();
  await Promise.all(bodies.map(async (body, i) => {
    await Bun.sleep(arrivals[i]!);
    results.push(...(await streamed(server.url, body)));
  }));
  const seconds = (performance.now() - t0) / 1000;
  const tokens = results.reduce((s, r) => s + r.tokens, 0);
  const ttfts = results.map((r) => r.ttft), gaps = results.flatMap((r) => r.gaps);
  const line = `${name}: ${bodies.length} requests, ${tokens} tokens in ${seconds.toFixed(2)} s = ${(tokens / seconds).toFixed(1)} tokens/s; TTFT p50 ${percentile(ttfts, 0.5).toFixed(1)} / p99 ${percentile(ttfts, 0.99).toFixed(1)} ms; inter-token p50 ${percentile(gaps, 0.5).toFixed(1)} / p99 ${percentile(gaps, 0.99).toFixed(1)} ms`;
  console.log(`  ${line}`);
  figures.push({ name: `${name}, ${label}, throughput`, value: tokens / seconds, unit: "tokens/s" });
  figures.push({ name: `${name}, ${label}, TTFT p50`, value: percentile(ttfts, 0.5), unit: "ms", p99: percentile(ttfts, 0.99) });
  figures.push({ name: `${name}, ${label}, inter-token p50`, value: percentile(gaps, 0.5), unit: "ms", p99: percentile(gaps, 0.99) });
}

// A preset's vocabulary is larger than the byte tokenizer's: each id streams as text "<id>" (the
// byte tokenizer's decode would drop ids >= 256, and the client counts tokens by streamed pieces).
const tokenizer = preset ? { ...byteTokenizer, decode: (ids: readonly number[]) => ids.map((t) => `<${t}>`).join("") } : undefined;
const engineOpts = { numPages: device === "cpu" ? 2048 : preset ? 4096 : 16384, pageSize: 16, tokenizer };
console.log(`serving benchmark, ${label}`);
{
  const bodies = Array.from({ length: requests }, () => ({ prompt: Array.from({ length: uniform(8, 64) }, () => uniform(0, 255)), max_tokens: uniform(8, 32),
    temperature: 0 }));
  const saved = state; // both runs draw the same arrivals
  for (const cudaGraphs of device === "cpu" ? [false] : [true, false]) {
    state = saved;
    const server = startServer({ model, ...engineOpts, maxQueue: 1024, cudaGraphs });
    await load(`Poisson load, ${rate} requests/s, prompts 8-64, outputs 8-32${device === "cpu" ? "" : cudaGraphs ? ", CUDA graphs" : ", no CUDA graphs"}`, server, bodies);
    server.stop();
  }
}
// Parallel generation: a long prompt, n samples, cascade on and off.
const promptLen = Number(arg("prompt", device === "cpu" ? "256" : "4096"));
for (const n of [4, 8, 16]) {
  for (const cascade of [true, false]) {
    const server = startServer({ model, ...engineOpts, maxQueue: 1024, cascade });
    const prompt = Array.from({ length: promptLen }, () => uniform(0, 255));
    await load(`parallel generation, prompt ${promptLen}, n ${n}, cascade ${cascade ? "on" : "off"}`, server,
      [{ prompt, max_tokens: 32, temperature: 1, seed: 1, n }]);
    server.stop();
  }
}
model.dispose();
if (!args.includes("--no-record")) {
  recordFigures("serve", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/serve.jsonl`);
}
