// Kernel generator benchmark. CPU backend: compile time of one variant (cold: empty cache; warm:
// a new process loading the cached library), and a generated variant that reproduces the built-in
// one (an always-true mask keeps the built-in transform) against the built-in CPU prefill backend
// on the same shape, same run. With a GPU: the CUDA build's compile time (cold, warm), and the
// generated variant without hooks (the built-in math on the same kernels) against the built-in
// kernels on the shapes of bench/prefill (pinned to fa2, then to fa3) and
// bench/decode (the decode kernels, built-in and instantiated with the variant), interleaved,
// same run. Figures go to bench/results/jit.jsonl.
//   bun bench/jit.bench.ts [--no-record]
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as fi from "../lib/index.ts";
import { hostMedianUs, scatteredPageTable } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const figures: Figure[] = [];
process.env.FLASHINFER_CACHE_DIR = mkdtempSync(join(tmpdir(), "fi-jit-bench-"));
const spec = { name: "bench_open_mask", logitsMask: "return true;" };
const variant = fi.jit.attentionVariant(spec);

const t0 = performance.now();
fi.jit.precompile(variant);
const coldMs = performance.now() - t0;
figures.push({ name: "jit compile, cold cache (CPU backend variant)", value: coldMs, unit: "ms" });

// Warm: a fresh process finds the library in the cache; it reports the time of precompile alone.
const probe = spawnSync(process.execPath, ["-e", `
  import * as fi from ${JSON.stringify(join(import.meta.dir, "..", "lib", "index.ts"))};
  fi.empty([1]);
  const v = fi.jit.attentionVariant(${JSON.stringify(spec)});
  const t = performance.now(); fi.jit.precompile(v); console.log(performance.now() - t);`], { encoding: "utf8", env: process.env });
const warmMs = Number(probe.stdout.trim());
figures.push({ name: "jit load, warm cache (new process)", value: warmMs, unit: "ms", target: 50, met: warmMs < 50 });

// Generated vs built-in on one shape (the CPU backend computes in float64: not a fast path).
const qoLen = 256, kvLen = 256, Hq = 4, Hkv = 2, D = 64;
const plan = { qoIndptr: [0, qoLen], kvIndptr: [0, kvLen], numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: "bfloat16" as const };
using q = fi.randn([qoLen, Hq, D], { dtype: "bfloat16", seed: 1 });
using k = fi.randn([kvLen, Hkv, D], { dtype: "bfloat16", seed: 2 });
using out = fi.empty([qoLen, Hq, D], { dtype: "bfloat16" });
using ws = fi.empty([32 << 20], { dtype: "uint8" });
const timeOf = (v?: fi.AttentionVariant) => {
  using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws, "NHD", v ? { variant: v } : {});
  w.plan(plan);
  return hostMedianUs(() => void w.run(q, k, k, { out }), 3, 15);
};
// Interleaved, three times each: the spread between repeats of one version bounds what a difference means.
const builtin: number[] = [], generated: number[] = [];
for (let i = 0; i < 3; ++i) {
  builtin.push(timeOf());
  generated.push(timeOf(variant));
}
const b = Math.min(...builtin), g = Math.min(...generated);
figures.push({ name: `prefill ${qoLen}x${kvLen} causal ${Hq}/${Hkv} d ${D} bf16, built-in CPU backend`, value: b, unit: "us (median)", repeats: builtin });
figures.push({ name: `prefill ${qoLen}x${kvLen} causal ${Hq}/${Hkv} d ${D} bf16, generated variant (same math)`, value: g, unit: "us (median)", repeats: generated,
  ratio: g / b, target: "within 3%", met: g <= 1.03 * b });

// ---- CUDA: the generated hook-free variant against the built-in kernels, same run.
const device = fi.defaultDevice();
if (device !== "cpu") {
  const cudaSpec = { name: "bench_default" };
  const plain = fi.jit.attentionVariant(cudaSpec);
  const target = { device, headDimQk: 128, qDataType: "bfloat16" as const };
  const c0 = performance.now();
  fi.jit.precompile(plain, target);
  const cudaColdMs = performance.now() - c0;
  figures.push({ name: `jit compile, cold cache (CUDA variant, ${fi.deviceProperties(device).name}, d 128 bf16)`, value: cudaColdMs, unit: "ms", target: 30000, met: cudaColdMs < 30000 });
  const cudaProbe = spawnSync(process.execPath, ["-e", `
    import * as fi from ${JSON.stringify(join(import.meta.dir, "..", "lib", "index.ts"))};
    fi.empty([1], { device: "${device}" });
    const v = fi.jit.attentionVariant(${JSON.stringify(cudaSpec)});
    const t = performance.now(); fi.jit.precompile(v, ${JSON.stringify(target)}); console.log(performance.now() - t);`], { encoding: "utf8", env: process.env });
  const cudaWarmMs = Number(cudaProbe.stdout.trim());
  figures.push({ name: "jit load, warm cache (CUDA variant, new process)", value: cudaWarmMs, unit: "ms", target: 50, met: cudaWarmMs < 50 });

  using ws = fi.empty([256 << 20], { dtype: "uint8", device });
  const dt = "bfloat16" as const, Hq = 32, Hkv = 8, D = 128;
  const time = (run: () => unknown) => fi.benchDeviceTime(run, { device, iterations: 10, warmup: 2 }).medianMs * 1e3;
  // Interleaved, three times each; the best of each side is compared (the repeats show the spread).
  const compare = (label: string, builtinRun: () => () => unknown, variantRun: () => () => unknown, work: (us: number) => string) => {
    const bs: number[] = [], gs: number[] = [];
    for (let i = 0; i < 3; ++i) {
      bs.push(time(builtinRun()));
      gs.push(time(variantRun()));
    }
    const bu = Math.min(...bs), gu = Math.min(...gs);
    figures.push({ name: `${label}, built-in`, value: bu, unit: "us (median)", repeats: bs, rate: work(bu) });
    figures.push({ name: `${label}, generated variant (no hooks)`, value: gu, unit: "us (median)", repeats: gs, rate: work(gu), ratio: gu / bu,
      target: "within 3%", met: gu <= 1.03 * bu });
  };
  const tflops = (flops: number) => (us: number) => `${(flops / (us * 1e-6) / 1e12).toFixed(1)} TFLOP/s`;
  // Prefill: one 8192-row causal request (ragged), and 16 x 1024 paged causal (page 16).
  {
    const len = 8192;
    using q = fi.randn([len, Hq, D], { dtype: dt, device, seed: 1 });
    using k = fi.randn([len, Hkv, D], { dtype: dt, device, seed: 2 });
    using out = fi.empty(q.shape, { dtype: dt, device });
    const run = (backend: fi.PrefillBackend, variant?: fi.AttentionVariant) => () => {
      const w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD", { variant, backend });
      w.plan({ qoIndptr: [0, len], kvIndptr: [0, len], numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: dt });
      return () => w.run(q, k, k, { out });
    };
    for (const backend of ["fa2", "fa3"] as const)
      compare(`prefill single 8192 causal 32/8 d 128 bf16 [${backend}]`, run(backend), run(backend, plain), tflops((4 * len * len * Hq * D) / 2));
  }
  {
    const batch = 16, len = 1024, P = 16, t = scatteredPageTable(batch, len, P);
    using q = fi.randn([batch * len, Hq, D], { dtype: dt, device, seed: 1 });
    using cache = fi.randn([t.pages, 2, P, Hkv, D], { dtype: dt, device, seed: 4 });
    using out = fi.empty(q.shape, { dtype: dt, device });
    const qoIndptr = Int32Array.from({ length: batch + 1 }, (_, i) => i * len);
    const run = (backend: fi.PrefillBackend, variant?: fi.AttentionVariant) => () => {
      const w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { variant, backend });
      w.plan({ qoIndptr, pagedKvIndptr: t.indptr, pagedKvIndices: t.indices, pagedKvLastPageLen: t.lastPageLen, pageSize: P, numQoHeads: Hq,
        numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: dt });
      return () => w.run(q, cache, { out });
    };
    for (const backend of ["fa2", "fa3"] as const)
      compare(`prefill batch 16 x 1024 paged causal 32/8 d 128 bf16 [${backend}]`, run(backend), run(backend, plain), tflops((batch * 4 * len * len * Hq * D) / 2));
  }
  // Decode: the built-in decode kernels against the same kernels built with the variant.
  for (const [batch, kvLen] of [[128, 4096], [16, 8192]] as const) {
    const P = 16, t = scatteredPageTable(batch, kvLen, P);
    using cache = fi.randn([t.pages, 2, P, Hkv, D], { dtype: dt, device, seed: 1 });
    using q = fi.randn([batch, Hq, D], { dtype: dt, device, seed: 2 });
    using out = fi.empty(q.shape, { dtype: dt, device });
    const run = (variant?: fi.AttentionVariant) => () => {
      const w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD", variant ? { variant } : {});
      w.plan({ ...t, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
      return () => w.run(q, cache, { out });
    };
    const bytes = batch * kvLen * Hkv * D * 2 * 2;
    compare(`decode batch ${batch} kv ${kvLen} 32/8 d 128 page 16 bf16`, run(), run(plain), (us) => `${(bytes / (us * 1e-6) / 1e12).toFixed(2)} TB/s`);
  }
}

for (const f of figures)
  console.log(`  ${f.name.padEnd(76)} ${f.value.toFixed(1).padStart(9)} ${f.unit}${f.rate ? ` (${f.rate})` : ""}${f.ratio ? ` ratio ${(f.ratio as number).toFixed(3)}` : ""}${f.met === undefined ? "" : f.met ? "  met" : "  MISSED"}`);
console.log(`  generated / built-in: ${(g / b).toFixed(3)} (repeats: built-in ${builtin.map((x) => x.toFixed(0)).join(", ")} us; generated ${generated.map((x) => x.toFixed(0)).join(", ")} us)`);
if (!process.argv.includes("--no-record")) {
  recordFigures("jit", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/jit.jsonl`);
}
