// Decode attention benchmark: effective KV bandwidth (bytes of K and V read / device time) of
// BatchDecodeWithPagedKVCacheWrapper.run (plan()'s host cost: bench/plan.bench.ts). Figures go
// to bench/results/decode.jsonl with device and date.   bun bench/decode.bench.ts [--no-record]
import * as fi from "../lib/index.ts";
import { scatteredPageTable } from "./harness.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
const figures: Figure[] = [];
const props = fi.deviceProperties(device);

interface Case {
  batch: number;
  kvLen: number;
  numQoHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  dtype: fi.DType;
  /** The cache's dtype when it differs from q's (fp8). */
  kvDtype?: fi.DType;
  target?: number; // TB/s the issue asks for
}

const cases: Case[] = [
  { batch: 128, kvLen: 4096, numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, dtype: "bfloat16", target: 3.1 },
  { batch: 1, kvLen: 32768, numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, dtype: "bfloat16", target: 2.3 },
  { batch: 16, kvLen: 8192, numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, dtype: "bfloat16" },
  { batch: 64, kvLen: 2048, numQoHeads: 32, numKvHeads: 32, headDim: 128, pageSize: 16, dtype: "float16" },
  // The rest of the performance issue's table (targets in TB/s of the cache's bytes).
  { batch: 64, kvLen: 2048, numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, dtype: "bfloat16", target: 2.9 },
  { batch: 256, kvLen: 1024, numQoHeads: 64, numKvHeads: 8, headDim: 128, pageSize: 16, dtype: "bfloat16", target: 3.0 },
  { batch: 64, kvLen: 8192, numQoHeads: 32, numKvHeads: 32, headDim: 128, pageSize: 16, dtype: "bfloat16", target: 3.2 },
  { batch: 128, kvLen: 4096, numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, dtype: "bfloat16", kvDtype: "float8_e4m3fn", target: 2.7 },
  // The same with float16 q (no q rescaling; the products are float16 either way).
  { batch: 128, kvLen: 4096, numQoHeads: 32, numKvHeads: 8, headDim: 128, pageSize: 16, dtype: "float16", kvDtype: "float8_e4m3fn" },
];

if (device === "cpu") {
  console.log("decode bench: no GPU here (plan()'s host cost: bench/plan.bench.ts)");
} else {
  const workspace = fi.empty([256 << 20], { dtype: "uint8", device });
  console.log(`decode on ${props.name} (datasheet DRAM ${(props.peakMemoryBandwidth / 1e12).toFixed(2)} TB/s)`);
  for (const c of cases) {
    const t = scatteredPageTable(c.batch, c.kvLen, c.pageSize);
    using cache16 = fi.randn([t.pages, 2, c.pageSize, c.numKvHeads, c.headDim], { dtype: c.dtype, device, seed: 1 });
    using cache = c.kvDtype ? cache16.to({ dtype: c.kvDtype }) : cache16.slice(0);
    using q = fi.randn([c.batch, c.numQoHeads, c.headDim], { dtype: c.dtype, device, seed: 2 });
    using out = fi.empty(q.shape, { dtype: c.dtype, device });
    const wrapper = new fi.BatchDecodeWithPagedKVCacheWrapper(workspace.slice(0), "NHD");
    wrapper.plan({ ...t, numQoHeads: c.numQoHeads, numKvHeads: c.numKvHeads, headDim: c.headDim, pageSize: c.pageSize, qDataType: c.dtype, kvDataType: c.kvDtype });
    const r = fi.benchDeviceTime(() => wrapper.run(q, cache, { out }), { device, iterations: 30 });
    const kvBytes = c.batch * c.kvLen * c.numKvHeads * c.headDim * 2 * (c.kvDtype ? 1 : 2);
    const tbps = kvBytes / (r.medianMs / 1e3) / 1e12;
    const name = `decode batch ${c.batch} kv ${c.kvLen} heads ${c.numQoHeads}/${c.numKvHeads} d ${c.headDim} page ${c.pageSize} ${c.dtype}${c.kvDtype ? ` kv ${c.kvDtype}` : ""}`;
    const verdict = c.target === undefined ? "" : tbps >= c.target ? `  target ${c.target} TB/s: met` : `  target ${c.target} TB/s: MISSED`;
    console.log(`  ${name.padEnd(64)} ${(r.medianMs * 1e3).toFixed(1).padStart(8)} us  ${tbps.toFixed(2)} TB/s  ` +
      `(${((100 * tbps * 1e12) / props.peakMemoryBandwidth).toFixed(0)}% of peak; ${wrapper.planInfo!.kernel}, ${wrapper.planInfo!.numWork} work items, chunk ${wrapper.planInfo!.chunkTokens})${verdict}`);
    figures.push({ name, value: tbps, unit: "TB/s (K+V bytes / time)", medianUs: r.medianMs * 1e3, peakTBps: props.peakMemoryBandwidth / 1e12,
      fractionOfPeak: (tbps * 1e12) / props.peakMemoryBandwidth, target: c.target, met: c.target === undefined ? undefined : tbps >= c.target,
      kernel: wrapper.planInfo!.kernel, ...c });
    wrapper.dispose();
  }
  workspace.dispose();
}

if (!process.argv.includes("--no-record")) {
  recordFigures("decode", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/decode.jsonl`);
}
