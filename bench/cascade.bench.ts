// Cascade benchmarks: merging attention states is memory-bound, so each figure is the achieved
// DRAM bandwidth, (bytes read + bytes written) / median device time (CUDA events around each
// run, L2 overwritten before each run), beside the device's peak. Figures go to
// bench/results/cascade.jsonl with device and date. GPU only: on cpu it prints a note and exits.
//   bun bench/cascade.bench.ts [--no-record]
import * as fi from "../lib/index.ts";
import { mergeStateInto, mergeStatesInto } from "../lib/cascade.ts";
import { type Figure, recordFigures } from "./results.ts";

const device = fi.defaultDevice();
if (device === "cpu") {
  console.log("cascade bench: no CUDA device here; the cascade kernels are benchmarked on a GPU only (nothing recorded)");
  process.exit(0);
}

const props = fi.deviceProperties(device);
const peak = props.peakMemoryBandwidth;
const figures: Figure[] = [];
const iterations = 100;

function report(label: string, shape: number[], dtype: fi.DType, bytes: number, r: fi.BenchResult): void {
  const tbps = bytes / (r.medianMs / 1e3) / 1e12;
  const fraction = (tbps * 1e12) / peak;
  const floorUs = (bytes / peak) * 1e6;
  console.log(
    `  ${label.padEnd(58)} ${(bytes / 2 ** 20).toFixed(1).padStart(7)} MiB  ${(r.medianMs * 1e3).toFixed(2).padStart(8)} us` +
      `  ${tbps.toFixed(2)} TB/s (${(100 * fraction).toFixed(0)}% of ${(peak / 1e12).toFixed(2)} TB/s peak; floor ${floorUs.toFixed(2)} us)`,
  );
  figures.push({
    name: label, value: tbps, unit: "TB/s (read + write)", shape, dtype, bytes, medianMs: r.medianMs, minMs: r.minMs,
    peakTBps: peak / 1e12, fractionOfPeak: fraction, iterations, kind: "device",
  });
}

/** Log-sum-exps spread over [-20, 20) (the spread does not change the work). */
function lse(shape: number[]): fi.Tensor {
  const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < values.length; ++i) values[i] = Math.random() * 40 - 20;
  return fi.tensor(values, shape, { device });
}

console.log(`cascade on ${props.name} (${device}), median of ${iterations} runs, L2 flushed:`);

// ---- mergeStates: [seqLen, numStates, numHeads, headDim]
const statesShapes: [number, number, number, number, fi.DType][] = [
  [128, 16, 32, 128, "bfloat16"], // the reference shape
  [128, 16, 32, 128, "float16"],
  [128, 16, 32, 128, "float32"],
  [1024, 16, 32, 128, "bfloat16"], // large: asymptotic bandwidth
  [4096, 2, 32, 128, "bfloat16"],
  [128, 64, 8, 256, "bfloat16"],
];
for (const [L, N, H, D, dtype] of statesShapes) {
  using v = fi.randn([L, N, H, D], { dtype, device, seed: 1 });
  using s = lse([L, N, H]);
  using vOut = fi.empty([L, H, D], { dtype, device });
  using sOut = fi.empty([L, H], { device });
  const r = fi.benchDeviceTime(() => mergeStatesInto(v, s, vOut, sOut), { device, iterations });
  report(`mergeStates ${dtype} [${L}, ${N}, ${H}, ${D}]`, [L, N, H, D], dtype, v.nbytes + s.nbytes + vOut.nbytes + sOut.nbytes, r);
}

// The public, allocating call on the reference shape (outputs from the stream-ordered pool).
{
  const [L, N, H, D] = [128, 16, 32, 128];
  using v = fi.randn([L, N, H, D], { dtype: "bfloat16", device, seed: 1 });
  using s = lse([L, N, H]);
  const r = fi.benchDeviceTime(() => {
    const out = fi.mergeStates(v, s);
    out.v.dispose();
    out.s.dispose();
  }, { device, iterations });
  report(`fi.mergeStates (allocating) bfloat16 [${L}, ${N}, ${H}, ${D}]`, [L, N, H, D], "bfloat16", v.nbytes + s.nbytes + (L * H * D * 2) + L * H * 4, r);
}

// ---- mergeState / mergeStateInPlace: [seqLen, numHeads, headDim]
for (const [L, H, D, dtype] of [[4096, 32, 128, "bfloat16"], [16384, 32, 128, "bfloat16"], [4096, 32, 128, "float32"]] as [number, number, number, fi.DType][]) {
  using vA = fi.randn([L, H, D], { dtype, device, seed: 3 });
  using vB = fi.randn([L, H, D], { dtype, device, seed: 4 });
  using sA = lse([L, H]);
  using sB = lse([L, H]);
  using vOut = fi.empty([L, H, D], { dtype, device });
  using sOut = fi.empty([L, H], { device });
  const bytes = 3 * vA.nbytes + 3 * sA.nbytes;
  const r = fi.benchDeviceTime(() => mergeStateInto(vA, sA, vB, sB, vOut, sOut), { device, iterations });
  report(`mergeState ${dtype} [${L}, ${H}, ${D}]`, [L, H, D], dtype, bytes, r);
  const rIn = fi.benchDeviceTime(() => fi.mergeStateInPlace(vA, sA, vB, sB), { device, iterations });
  report(`mergeStateInPlace ${dtype} [${L}, ${H}, ${D}]`, [L, H, D], dtype, bytes, rIn);
}

// ---- shared-prefix batch decode (issue 12): batch 64, a shared prefix of 32768 tokens + 512 own
// tokens each, bf16, 32/8 heads, d 128, page 16. Plain paged batch decode reads the prefix once
// per request; the 2-level cascade reads it once for all 64 rows (one prefill request) and merges.
{
  const batch = 64, prefix = 32768, ownLen = 512, P = 16, Hq = 32, Hkv = 8, D = 128, dt = "bfloat16" as const;
  const prefixPages = prefix / P, ownPages = ownLen / P, pages = prefixPages + batch * ownPages;
  using cache = fi.randn([pages, 2, P, Hkv, D], { dtype: dt, device, seed: 5 });
  using q = fi.randn([batch, Hq, D], { dtype: dt, device, seed: 6 });
  using out = fi.empty(q.shape, { dtype: dt, device });
  using ws = fi.empty([512 << 20], { dtype: "uint8", device });
  const shared = Array.from({ length: prefixPages }, (_, i) => i);
  const own = (r: number) => Array.from({ length: ownPages }, (_, i) => prefixPages + r * ownPages + i);
  const seq = (n: number, step: number) => Int32Array.from({ length: n + 1 }, (_, i) => i * step);
  using flat = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
  flat.plan({ indptr: seq(batch, prefixPages + ownPages), indices: Int32Array.from(Array.from({ length: batch }, (_, r) => [...shared, ...own(r)]).flat()),
    lastPageLen: new Int32Array(batch).fill(P), numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
  const flatUs = fi.benchDeviceTime(() => flat.run(q, cache, { out }), { device, iterations: 10 }).medianMs * 1e3;
  const name = `shared-prefix decode batch ${batch}, prefix ${prefix} + ${ownLen} own, ${Hq}/${Hkv} d ${D} ${dt}`;
  figures.push({ name: `${name}, plain paged decode`, value: flatUs, unit: "us (median)" });
  for (const backend of ["auto", "fa3"] as const) {
    using cascade = new fi.MultiLevelCascadeAttentionWrapper(2, ws.slice(0), "NHD", { backend });
    try {
      cascade.plan({ qoIndptrArr: [Int32Array.from([0, batch]), seq(batch, 1)], pagedKvIndptrArr: [Int32Array.from([0, prefixPages]), seq(batch, ownPages)],
        pagedKvIndicesArr: [Int32Array.from(shared), Int32Array.from(Array.from({ length: batch }, (_, r) => own(r)).flat())],
        pagedKvLastPageLenArr: [[P], new Int32Array(batch).fill(P)], numQoHeads: Hq, numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
    } catch (e) {
      console.log(`  ${name} [${backend}]: not planned (${(e as Error).message})`);
      continue;
    }
    const cascadeUs = fi.benchDeviceTime(() => cascade.run(q, cache, { out }), { device, iterations: 10 }).medianMs * 1e3;
    const speedup = flatUs / cascadeUs;
    console.log(`  ${name} [${backend}]: plain paged decode ${flatUs.toFixed(0)} us, 2-level cascade ${cascadeUs.toFixed(0)} us, ${speedup.toFixed(1)}x (target 20x: ${speedup >= 20 ? "met" : "MISSED"})`);
    figures.push({ name: `${name}, 2-level cascade [${backend}]`, value: cascadeUs, unit: "us (median)", speedup, target: "20x", met: speedup >= 20 });
  }
  // Where the cascade's time goes: each level alone on each kernel, and the merge.
  const parts: [string, () => unknown][] = [];
  using lse = fi.empty([batch, Hq], { device });
  for (const backend of ["fa2", "fa3"] as const) {
    const w = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend });
    w.plan({ qoIndptr: [0, batch], pagedKvIndptr: [0, prefixPages], pagedKvIndices: shared, pagedKvLastPageLen: [P], pageSize: P, numQoHeads: Hq,
      numKvHeads: Hkv, headDimQk: D, qDataType: dt });
    parts.push([`prefix level (${batch} rows x ${prefix} keys) on prefill [${backend}]`, () => w.run(q, cache, { out, lse })]);
  }
  {
    const ownTable = { pagedKvIndptr: seq(batch, ownPages), pagedKvIndices: Int32Array.from(Array.from({ length: batch }, (_, r) => own(r)).flat()),
      pagedKvLastPageLen: new Int32Array(batch).fill(P) };
    const prefillOwn = new fi.BatchPrefillWithPagedKVCacheWrapper(ws.slice(0), "NHD", { backend: "fa2" });
    prefillOwn.plan({ ...ownTable, qoIndptr: seq(batch, 1), pageSize: P, numQoHeads: Hq, numKvHeads: Hkv, headDimQk: D, qDataType: dt });
    parts.push([`own level (${batch} x ${ownLen} keys) on prefill [fa2]`, () => prefillOwn.run(q, cache, { out, lse })]);
    const decodeOwn = new fi.BatchDecodeWithPagedKVCacheWrapper(ws.slice(0), "NHD");
    decodeOwn.plan({ indptr: ownTable.pagedKvIndptr, indices: ownTable.pagedKvIndices, lastPageLen: ownTable.pagedKvLastPageLen, numQoHeads: Hq,
      numKvHeads: Hkv, headDim: D, pageSize: P, qDataType: dt });
    parts.push([`own level (${batch} x ${ownLen} keys) on decode`, () => decodeOwn.run(q, cache, { out, lse })]);
  }
  using out2 = fi.zeros(q.shape, { dtype: dt, device });
  using lse2 = fi.zeros([batch, Hq], { device });
  parts.push([`mergeStateInPlace [${batch}, ${Hq}, ${D}]`, () => fi.mergeStateInPlace(out, lse, out2, lse2)]);
  for (const [what, fn] of parts) {
    const us = fi.benchDeviceTime(fn, { device, iterations: 10 }).medianMs * 1e3;
    console.log(`  ${name}: ${what} ${us.toFixed(1)} us`);
    figures.push({ name: `${name}, ${what}`, value: us, unit: "us (median)" });
  }
}

if (!process.argv.includes("--no-record")) {
  recordFigures("cascade", device, figures);
  console.log(`recorded ${figures.length} figures in bench/results/cascade.jsonl`);
}
