// Prefill attention benchmark: TFLOP/s of one prefill (8192 tokens, the path
// singlePrefillWithKVCache takes: a one-request ragged plan) and of a paged batch (16 x 1024,
// page 16), causal, bf16, head dim 128, 32 qo / 8 kv heads (plan()'s host cost: bench/plan.bench.ts).
// FLOPs: 4 * qoLen * kvLen * numQoHeads * headDim (QK^T and PV), halved for causal masks.
// Each shape runs on every backend that serves it ("auto", "fa2", "fa3"), side by side in one run.
// Device time with events (L2 flushed between runs); figures go to bench/results/prefill.jsonl.
//   bun bench/prefill.bench.ts [--no-record]
import * as fi from "../lib/index.ts";
import { scatteredPageTable } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
const figures: Figure[] = [];
const H100_DENSE_BF16_TFLOPS = 989; // H100 SXM datasheet, dense (no sparsity)

interface Case {
  name: string;
  batch: number;
  len: number; // qoLen = kvLen per request
  paged: boolean;
  pageSize: number;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  causal: boolean;
  dtype: fi.DType;
  target?: number; // TFLOP/s the performance issue asks for (its table, 2026-12-06)
}

const flops = (c: Case) => (c.batch * 4 * c.len * c.len * c.numQoHeads * c.headDim) / (c.causal ? 2 : 1);

function bench(c: Case, dev: fi.Device, iterations: number, backend: fi.PrefillBackend = "auto"): { ms: number; info: string } {
  using ws = fi.empty([256 << 20], { dtype: "uint8", device: dev });
  const indptr = Int32Array.from({ length: c.batch + 1 }, (_, i) => i * c.len);
  const common = { qoIndptr: indptr, numQoHeads: c.numQoHeads, numKvHeads: c.numKvHeads, headDimQk: c.headDim, causal: c.causal, qDataType: c.dtype };
  using q = fi.randn([c.batch * c.len, c.numQoHeads, c.headDim], { dtype: c.dtype, device: dev, seed: 1 });
  using out = fi.empty(q.shape, { dtype: c.dtype, device: dev });
  if (!c.paged) {
    using k = fi.randn([c.batch * c.len, c.numKvHeads, c.headDim], { dtype: c.dtype, device: dev, seed: 2 });
    using v = fi.randn([c.batch * c.len, c.numKvHeads, c.headDim], { dtype: c.dtype, device: dev, seed: 3 });
    using w = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD", { backend });
    w.plan({ ...common, kvIndptr: indptr });
    const r = fi.benchDeviceTime(() => w.run(q, k, v, { out }), { device: dev, iterations, warmup: 3 });
    const p = w.planInfo!;
    return { ms: r.medianMs, info: `${p.backend}, ${p.numWork} work items, tile ${p.ctaTileQ}, ${p.kvChunksMax} kv chunks` };
  }
  const t = scatteredPageTable(c.batch, c.len, c.pageSize);
  using cache = fi.randn([t.pages, 2, c.pageSize, c.numKvHeads, c.headDim], { dtype: c.dtype, device: dev, seed: 4 });
  using w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend });
  w.plan({
    ...common,
    pagedKvIndptr: t.indptr,
    pagedKvIndices: t.indices,
    pagedKvLastPageLen: t.lastPageLen,
    pageSize: c.pageSize,
  });
  const r = fi.benchDeviceTime(() => w.run(q, cache, { out }), { device: dev, iterations, warmup: 3 });
  const p = w.planInfo!;
  return { ms: r.medianMs, info: `${p.backend}, ${p.numWork} work items, tile ${p.ctaTileQ}, ${p.kvChunksMax} kv chunks` };
}

const cases: Case[] = [
  { name: "single prefill 8192 causal", batch: 1, len: 8192, paged: false, pageSize: 0, numQoHeads: 32, numKvHeads: 8, headDim: 128, causal: true, dtype: "bfloat16", target: 650 },
  { name: "batch 16 x 1024 paged (page 16) causal", batch: 16, len: 1024, paged: true, pageSize: 16, numQoHeads: 32, numKvHeads: 8, headDim: 128, causal: true, dtype: "bfloat16", target: 450 },
  { name: "single prefill 8192", batch: 1, len: 8192, paged: false, pageSize: 0, numQoHeads: 32, numKvHeads: 8, headDim: 128, causal: false, dtype: "bfloat16", target: 700 },
  { name: "batch 16 x 1024 ragged causal", batch: 16, len: 1024, paged: false, pageSize: 0, numQoHeads: 32, numKvHeads: 8, headDim: 128, causal: true, dtype: "bfloat16" },
  // The rest of the performance issue's table.
  { name: "single prefill 8192 causal", batch: 1, len: 8192, paged: false, pageSize: 0, numQoHeads: 32, numKvHeads: 8, headDim: 64, causal: true, dtype: "bfloat16", target: 460 },
  { name: "single prefill 8192 causal", batch: 1, len: 8192, paged: false, pageSize: 0, numQoHeads: 16, numKvHeads: 16, headDim: 256, causal: true, dtype: "bfloat16", target: 650 },
  { name: "batch 64 x 512 paged (page 16) causal", batch: 64, len: 512, paged: true, pageSize: 16, numQoHeads: 32, numKvHeads: 8, headDim: 128, causal: true, dtype: "bfloat16", target: 380 },
];

if (device === "cpu") {
  // No GPU: one tiny figure of the CPU backend (float64 reference-grade code, not a fast path).
  const c: Case = { name: "cpu prefill 256 causal", batch: 1, len: 256, paged: false, pageSize: 0, numQoHeads: 4, numKvHeads: 2, headDim: 64, causal: true, dtype: "bfloat16" };
  const { ms } = bench(c, "cpu", 3);
  console.log(`prefill bench: no GPU here; CPU backend, ${c.name} (4/2 heads, d 64): ${ms.toFixed(1)} ms, ${(flops(c) / (ms / 1e3) / 1e9).toFixed(2)} GFLOP/s`);
} else {
  const props = fi.deviceProperties(device);
  console.log(`prefill on ${props.name} (H100 dense bf16 peak ${H100_DENSE_BF16_TFLOPS} TFLOP/s)`);
  for (const c of cases) for (const backend of ["auto", "fa2", "fa3"] as const) {
    let r: { ms: number; info: string };
    try {
      r = bench(c, device, 20, backend);
    } catch (e) {
      console.log(`  ${c.name} [${backend}]: FAILED (${(e as Error).message})`);
      continue;
    }
    const tflops = flops(c) / (r.ms / 1e3) / 1e12;
    const verdict = c.target === undefined || backend !== "auto" ? "" : tflops >= c.target ? `  target ${c.target}: met` : `  target ${c.target}: MISSED`;
    const label = `${c.name}, ${c.numQoHeads}/${c.numKvHeads} heads d ${c.headDim} ${c.dtype}${backend === "auto" ? "" : ` [${backend}]`}`;
    console.log(`  ${label.padEnd(72)} ${(r.ms * 1e3).toFixed(0).padStart(7)} us  ${tflops.toFixed(1).padStart(6)} TFLOP/s ` +
      `(${((100 * tflops) / H100_DENSE_BF16_TFLOPS).toFixed(0)}% of peak; ${r.info})${verdict}`);
    figures.push({ ...c, name: label, value: tflops, unit: "TFLOP/s (causal counts half)", medianUs: r.ms * 1e3, peakTFLOPS: H100_DENSE_BF16_TFLOPS,
      fractionOfPeak: tflops / H100_DENSE_BF16_TFLOPS, backend, target: backend === "auto" ? c.target : undefined,
      met: c.target === undefined || backend !== "auto" ? undefined : tflops >= c.target });
  }

  if (!process.argv.includes("--no-record")) {
    recordFigures("prefill", device, figures);
    console.log(`recorded ${figures.length} figures in bench/results/prefill.jsonl`);
  }
}
