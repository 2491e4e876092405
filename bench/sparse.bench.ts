// Sparse attention benchmark (issue 12), H100 shapes: bf16, head dim 128, 32/8 heads.
// - block-sparse prefill (fi.BlockSparseAttentionWrapper), 8192 x 8192, 64 x 64 blocks at 10%
//   density: TFLOP/s over the computed blocks, next to the dense kernel's (non-causal) of the run;
// - vector-sparse (page size 1, shuffled token indices) batch decode 128 x 4096 against page 16;
// - vector-sparse batch prefill 16 x 1024 causal against page 16.
// Device time with events; figures go to bench/results/sparse.jsonl.   bun bench/sparse.bench.ts [--no-record]
import * as fi from "../lib/index.ts";
import { scatteredPageTable } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
if (device === "cpu") {
  console.log("sparse bench: no GPU here; nothing measured");
  process.exit(0);
}
const figures: Figure[] = [];
const dt = "bfloat16" as const, Hq = 32, Hkv = 8, D = 128;
using ws = fi.empty([512 << 20], { dtype: "uint8", device });
const time = (run: () => unknown) => fi.benchDeviceTime(run, { device, iterations: 10, warmup: 3 }).medianMs * 1e3;
const report = (f: Figure) => {
  figures.push(f);
  console.log(`  ${f.name.padEnd(70)} ${f.value.toFixed(2).padStart(8)} ${f.unit}${f.note ? `  (${f.note})` : ""}${f.met === undefined ? "" : f.met ? "  met" : "  MISSED"}`);
};
console.log(`sparse attention on ${fi.deviceProperties(device).name}`);

// ---- block-sparse prefill vs dense
{
  const M = 8192, N = 8192, R = 64, C = 64, density = 0.1;
  let s = 12345;
  const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const indptr = [0], indices: number[] = [];
  for (let i = 0; i < M / R; ++i) {
    for (let j = 0; j < N / C; ++j) if (rand() < density) indices.push(j);
    indptr.push(indices.length);
  }
  using q = fi.randn([M, Hq, D], { dtype: dt, device, seed: 1 });
  using k = fi.randn([N, Hkv, D], { dtype: dt, device, seed: 2 });
  using v = fi.randn([N, Hkv, D], { dtype: dt, device, seed: 3 });
  using out = fi.empty(q.shape, { dtype: dt, device });
  const blockFlops = indices.length * R * C * 4 * Hq * D;
  const denseFlops = M * N * 4 * Hq * D;
  for (const backend of ["auto", "fa2", "fa3"] as const) {
    using dense = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD", { backend });
    dense.plan({ qoIndptr: [0, M], kvIndptr: [0, N], numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, qDataType: dt });
    const denseUs = time(() => dense.run(q, k, v, { out }));
    const denseTf = denseFlops / (denseUs * 1e-6) / 1e12;
    report({ name: `dense prefill ${M} x ${N} [${dense.planInfo!.backend}]`, value: denseTf, unit: "TFLOP/s", medianUs: denseUs });
    using bsr = new fi.BlockSparseAttentionWrapper(ws.slice(0), { backend });
    bsr.plan({ indptr, indices, M, N, R, C, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, qDataType: dt });
    const us = time(() => bsr.run(q, k, v, { out }));
    const tf = blockFlops / (us * 1e-6) / 1e12;
    report({ name: `block-sparse prefill ${M} x ${N}, ${R} x ${C} blocks, ${(100 * indices.length / ((M / R) * (N / C))).toFixed(1)}% [${bsr.planInfo!.backend}]`,
      value: tf, unit: "TFLOP/s (computed blocks)", medianUs: us, ratio: tf / denseTf, target: "85% of dense", met: tf >= 0.85 * denseTf,
      note: `${((100 * tf) / denseTf).toFixed(0)}% of dense` });
  }
}

// ---- vector-sparse decode: page size 1 with shuffled token indices vs page 16
{
  const batch = 128, kvLen = 4096;
  using q = fi.randn([batch, Hq, D], { dtype: dt, device, seed: 2 });
  using out = fi.empty(q.shape, { dtype: dt, device });
  const bytes = batch * kvLen * Hkv * D * 2 * 2;
  const tbps: Record<number, number> = {};
  for (const P of [16, 1]) {
    const t = scatteredPageTable(batch, kvLen, P);
    using cache = fi.randn([t.pages, 2, P, Hkv, D], { dtype: dt, device, seed: 1 });
    using w = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
    w.plan({ ...t, numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
    const us = time(() => w.run(q, cache, { out }));
    tbps[P] = bytes / (us * 1e-6) / 1e12;
    report({ name: `decode batch ${batch} x ${kvLen}, page ${P}${P === 1 ? " (vector-sparse, shuffled)" : ""}`, value: tbps[P]!, unit: "TB/s", medianUs: us,
      ...(P === 1 ? { ratio: tbps[1]! / tbps[16]!, target: "90% of page 16", met: tbps[1]! >= 0.9 * tbps[16]!, note: `${((100 * tbps[1]!) / tbps[16]!).toFixed(0)}% of page 16` } : {}) });
  }
}

// ---- vector-sparse prefill: 16 x 1024 causal, page 1 vs page 16
{
  const batch = 16, len = 1024;
  using q = fi.randn([batch * len, Hq, D], { dtype: dt, device, seed: 1 });
  using out = fi.empty(q.shape, { dtype: dt, device });
  const qoIndptr = Int32Array.from({ length: batch + 1 }, (_, i) => i * len);
  const flops = (batch * 4 * len * len * Hq * D) / 2;
  const tf: Record<number, number> = {};
  for (const P of [16, 1]) {
    const t = scatteredPageTable(batch, len, P);
    using cache = fi.randn([t.pages, 2, P, Hkv, D], { dtype: dt, device, seed: 4 });
    using w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD");
    w.plan({ qoIndptr, pagedKvIndptr: t.indptr, pagedKvIndices: t.indices, pagedKvLastPageLen: t.lastPageLen, pageSize: P, numQoHeads: Hq,
      numKvHeads: Hkv, headDimQk: D, causal: true, qDataType: dt });
    const us = time(() => w.run(q, cache, { out }));
    tf[P] = flops / (us * 1e-6) / 1e12;
    report({ name: `prefill batch ${batch} x ${len} causal, page ${P}${P === 1 ? " (vector-sparse, shuffled)" : ""} [${w.planInfo!.backend}]`, value: tf[P]!,
      unit: "TFLOP/s", medianUs: us,
      ...(P === 1 ? { ratio: tf[1]! / tf[16]!, target: "85% of page 16", met: tf[1]! >= 0.85 * tf[16]!, note: `${((100 * tf[1]!) / tf[16]!).toFixed(0)}% of page 16` } : {}) });
  }
}

if (!process.argv.includes("--no-record")) {
  recordFigures("sparse", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/sparse.jsonl`);
}
