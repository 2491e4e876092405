// Where attention plans lose time to their schedule, on the GPU machine: each decode shape of the
// benches and the shared-prefix cascade's prefix level, planned by the scheduler and with fixed
// split sizes (fixedSplitSize) or none (disableSplitKv); and auto's fa2 / fa3 choice for paged
// prefill beside both kernels pinned. Device time of each (CUDA events, L2
// overwritten, median of 10). Prints one line per plan: kernel, work items, piece size, time and
// rate, so a rule for the scheduler can be read off the table. Nothing is recorded.
//   source .device/env.sh && bun scripts/schedule-probe.ts [tree root]
import type { SplitOptions } from "../lib/prefill.ts";

const root = process.argv[2] ?? `${import.meta.dir}/..`;
const fi = await import(`${root}/lib/index.ts`);
const { scatteredPageTable } = await import(`${root}/bench/harness.ts`);
const device = "cuda:0";
if (!fi.cudaAvailable()) throw new Error("schedule-probe: needs a CUDA device");
const time = (fn: () => unknown) => fi.benchDeviceTime(fn, { device, iterations: 10 }).medianMs * 1e3;
using ws = fi.empty([512 << 20], { dtype: "uint8", device });
const splits: [string, SplitOptions][] = [["auto", {}], ["none", { disableSplitKv: true }],
  ...[128, 256, 384, 512, 768, 1024, 2048].map((n): [string, SplitOptions] => [`fixed ${n}`, { fixedSplitSize: n }])];

// ---- decode shapes (bf16 unless given, head dim 128, page 16 unless given, pages scattered)
const decodeShapes: [number, number, number, number, number, "bfloat16" | "float16"][] = [
  // batch, kvLen, qo heads, kv heads, page size, dtype
  [128, 4096, 32, 8, 16, "bfloat16"], [1, 32768, 32, 8, 16, "bfloat16"], [16, 8192, 32, 8, 16, "bfloat16"],
  [64, 2048, 32, 8, 16, "bfloat16"], [256, 1024, 64, 8, 16, "bfloat16"], [64, 512, 32, 8, 16, "bfloat16"],
  [64, 2048, 32, 32, 16, "float16"], [128, 4096, 32, 8, 1, "bfloat16"],
];
// The CUDA-core decode kernel for groups the scheduler gives the tensor-core one (groups >= 4):
// more CTAs per SM, so a split request's pieces have more bytes in flight.
class CudaCoreDecode extends fi.BatchDecodeWithPagedKVCacheWrapper {
  protected planPaged(params: unknown, extra: Record<string, unknown> = {}): void {
    super.planPaged(params, { ...extra, useTensorCores: "never" });
  }
}
console.log("decode (TB/s of K + V)");
// PROBE_ONLY="64x512,1x32768": only those decode shapes, and no prefix level.
const only = process.env.PROBE_ONLY?.split(",");
for (const [batch, kvLen, hq, hkv, ps, dt] of decodeShapes) {
  if (only && !only.includes(`${batch}x${kvLen}`)) continue;
  const t = scatteredPageTable(batch, kvLen, ps);
  using cache = fi.randn([t.pages, 2, ps, hkv, 128], { dtype: dt, device, seed: 1 });
  using q = fi.randn([batch, hq, 128], { dtype: dt, device, seed: 2 });
  using out = fi.empty(q.shape, { dtype: dt, device });
  const bytes = batch * kvLen * hkv * 128 * 2 * 2;
  const kernels = hq / hkv >= 4 && (batch <= 16 || kvLen <= 512) ? [fi.BatchDecodeWithPagedKVCacheWrapper, CudaCoreDecode] : [fi.BatchDecodeWithPagedKVCacheWrapper];
  for (const Wrapper of kernels) for (const [label, split] of splits) {
    using w = new Wrapper(ws.slice(0), "NHD");
    w.plan({ ...t, numQoHeads: hq, numKvHeads: hkv, headDim: 128, pageSize: ps, qDataType: dt, ...split });
    const us = time(() => w.run(q, cache, { out }));
    const { kernel, numWork, chunkTokens } = w.planInfo;
    console.log(`  batch ${batch} x ${kvLen} ${hq}/${hkv} page ${ps} ${dt} [${label}]: ${kernel}, ${numWork} items, piece ${chunkTokens}: ${us.toFixed(1)} us, ${(bytes / us / 1e6).toFixed(3)} TB/s`);
  }
}

// ---- the cascade's prefix level: 64 query rows (32/8 heads) over 32768 shared keys, non-causal
if (!only) {
  console.log("prefix level, 64 rows x 32768 keys, 32/8 d 128 bf16 (TFLOP/s)");
  const rows = 64, keys = 32768, hq = 32, hkv = 8, D = 128, P = 16, dt = "bfloat16" as const;
  using q = fi.randn([rows, hq, D], { dtype: dt, device, seed: 3 });
  using out = fi.empty(q.shape, { dtype: dt, device });
  using lse = fi.empty([rows, hq], { device });
  using cache = fi.randn([keys / P, 2, P, hkv, D], { dtype: dt, device, seed: 4 });
  using k = fi.randn([keys, hkv, D], { dtype: dt, device, seed: 5 });
  using v = fi.randn([keys, hkv, D], { dtype: dt, device, seed: 6 });
  const flops = 4 * rows * hq * keys * D;
  const prefixSplits: [string, SplitOptions][] = [["auto", {}], ...[1024, 2048, 4096, 8192].map((n): [string, SplitOptions] => [`fixed ${n}`, { fixedSplitSize: n }])];
  for (const backend of ["fa2", "fa3"] as const) {
    for (const [label, split] of prefixSplits) {
      using paged = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend });
      paged.plan({ qoIndptr: [0, rows], pagedKvIndptr: [0, keys / P], pagedKvIndices: Int32Array.from({ length: keys / P }, (_, i) => i),
        pagedKvLastPageLen: [P], pageSize: P, numQoHeads: hq, numKvHeads: hkv, headDimQk: D, qDataType: dt, ...split });
      const pagedUs = time(() => paged.run(q, cache, { out, lse }));
      const pi = paged.planInfo;
      using ragged = new fi.BatchPrefillWithRaggedKVCacheWrapper(ws.slice(0), "NHD", { backend });
      ragged.plan({ qoIndptr: [0, rows], kvIndptr: [0, keys], numQoHeads: hq, numKvHeads: hkv, headDimQk: D, qDataType: dt, ...split });
      const raggedUs = time(() => ragged.run(q, k, v, { out, lse }));
      const rate = (us: number) => (flops / us / 1e6).toFixed(0);
      console.log(`  [${backend}, ${label}]: ${pi.numWork} items, piece ${pi.chunkTokens}, tile ${pi.ctaTileQ}: paged ${pagedUs.toFixed(1)} us (${rate(pagedUs)}), ragged ${raggedUs.toFixed(1)} us (${rate(raggedUs)})`);
    }
  }
}

// ---- auto's prefill kernel: paged batches between the old rule (fa3 from 1024 query rows per
// request) and the new one (fa3 wherever its 128-row tile is full), on fa2 and fa3 (TFLOP/s)
if (!only) {
  console.log("prefill backends, paged 32/8 d 128 bf16 (TFLOP/s)");
  const P = 16, hq = 32, hkv = 8, D = 128, dt = "bfloat16" as const;
  const cases: [number, number, number, boolean][] = [ // batch, query rows and keys per request, causal
    [64, 512, 512, true], [128, 256, 256, true], [32, 256, 1024, true], [16, 64, 2048, false], [8, 64, 8192, false], [64, 64, 832, false], [4, 128, 4096, false]];
  for (const [batch, rows, keys, causal] of cases) {
    const t = scatteredPageTable(batch, keys, P);
    using cache = fi.randn([t.pages, 2, P, hkv, D], { dtype: dt, device, seed: 1 });
    using q = fi.randn([batch * rows, hq, D], { dtype: dt, device, seed: 2 });
    using out = fi.empty(q.shape, { dtype: dt, device });
    const flops = 4 * batch * hq * D * (causal ? rows * keys - (rows * (rows - 1)) / 2 : rows * keys);
    const line: string[] = [];
    for (const backend of ["auto", "fa2", "fa3"] as const) {
      using w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend });
      w.plan({ qoIndptr: Int32Array.from({ length: batch + 1 }, (_, r) => r * rows), pagedKvIndptr: t.indptr, pagedKvIndices: t.indices,
        pagedKvLastPageLen: t.lastPageLen, pageSize: P, numQoHeads: hq, numKvHeads: hkv, headDimQk: D, causal, qDataType: dt });
      const us = time(() => w.run(q, cache, { out }));
      line.push(`${backend}${backend === "auto" ? `=${w.planInfo.backend}` : ""} ${us.toFixed(1)} us ${(flops / us / 1e6).toFixed(0)}`);
    }
    console.log(`  batch ${batch} x ${rows} rows x ${keys} keys${causal ? " causal" : ""}: ${line.join(" | ")}`);
  }
}
